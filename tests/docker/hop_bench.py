"""Run inside a container on the swarm's frontend network (python - URL_A URL_B N < this file): N
sequential GETs to each URL, in alternating blocks of 50, and the requests per second of each."""

import sys
import time
import urllib.request


def rate(url: str, n: int) -> float:
    started = time.monotonic()
    for _ in range(n):
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 (overlay addresses only)
            resp.read()
    return n / (time.monotonic() - started)


direct, proxied, total = sys.argv[1], sys.argv[2], int(sys.argv[3])
rates: dict[str, list[float]] = {"direct": [], "proxy": []}
for _ in range(total // 50):
    rates["direct"].append(rate(direct, 50))
    rates["proxy"].append(rate(proxied, 50))
print(" ".join(f"{k}={sum(v) / len(v):.1f}" for k, v in rates.items()))
