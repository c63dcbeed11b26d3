"""Container healthcheck without curl: exit 0 only on HTTP 200 from the given URL."""

from __future__ import annotations

import sys
import urllib.error
import urllib.request


def check(url: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 (loopback URL from the image)
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


if __name__ == "__main__":
    sys.exit(0 if len(sys.argv) == 2 and check(sys.argv[1]) else 1)
