"""Container healthcheck without curl: exit 0 only on HTTP 200 from the given http:// URL.

A plain socket, not urllib: the probe runs every 200 ms in each app container while the stack starts,
and urllib.request (with http.client, ssl and email) costs more CPU per probe than the check itself,
CPU the starting servers need on a small machine (docs/performance.md).
"""

from __future__ import annotations

import socket
import sys
from urllib.parse import urlsplit


def check(url: str, timeout_s: float = 2.0) -> bool:
    try:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            return False
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        with socket.create_connection((parts.hostname, parts.port or 80), timeout=timeout_s) as sock:
            sock.sendall(f"GET {path} HTTP/1.0\r\nHost: {parts.netloc}\r\nConnection: close\r\n\r\n".encode())
            status_line = sock.makefile("rb").readline(256)
    except (OSError, ValueError):
        return False
    fields = status_line.split()
    return len(fields) >= 2 and fields[0].startswith(b"HTTP/1.") and fields[1] == b"200"


if __name__ == "__main__":
    sys.exit(0 if len(sys.argv) == 2 and check(sys.argv[1]) else 1)
