"""Read a detect-secrets JSON report on stdin; print each finding; exit 1 if there is any."""

from __future__ import annotations

import json
import sys


def main() -> int:
    results = json.load(sys.stdin)["results"]
    for name, hits in sorted(results.items()):
        for hit in hits:
            print(f"{name}:{hit['line_number']}: {hit['type']}")
    return 1 if results else 0


if __name__ == "__main__":
    sys.exit(main())
