"""Helpers for the Docker tests: bounded waits, HTTP on loopback, container state."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from model.settings import StackSettings
from ops.doctor import CONNECT_PROBE
from tests.raw_http import chunks, exchange

T = TypeVar("T")


def sh(*args: str, timeout: float = 600, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=False, **kw)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def run_ops(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """`python -m ops ARGV` in this process: exit code, stdout, stderr."""
    from ops.__main__ import main as ops

    capsys.readouterr()
    code = ops(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def one_error_line(err: str) -> str:
    """Progress lines may come first; then exactly one `error:` line, the last."""
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    return errors[0]


def postgres_dsn(s: StackSettings) -> str:
    """libpq connection string for the stack's published Postgres port (dev publishes it on loopback)."""
    port = s.postgres.ports[0]
    return f"host={port.host_ip} port={port.host_port} dbname={s.db_name} connect_timeout=5"


def wait_for(what: str, probe: Callable[[], T | None], timeout_s: float, interval_s: float = 0.25) -> T:
    """Poll `probe` until it returns a truthy value; bounded in time and in count."""
    deadline = time.monotonic() + timeout_s
    for _ in range(int(timeout_s / interval_s) + 1):
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            break
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def http(method: str, url: str, body: object = None, headers: dict[str, str] | None = None,
         timeout_s: float = 5) -> tuple[int, bytes]:
    assert url.startswith("http://127.0.0.1:"), "tests talk to loopback only"
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,  # noqa: S310 (loopback URL, asserted above)
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # noqa: S310
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def inspect(container: str) -> dict[str, Any]:
    out = sh("docker", "inspect", container, check=False)
    if out.returncode != 0:
        return {}
    data: list[dict[str, Any]] = json.loads(out.stdout)
    return data[0]


def health(container: str) -> str:
    state = inspect(container).get("State", {})
    return str(state.get("Health", {}).get("Status") or state.get("Status") or "missing")


def wait_healthy(containers: list[str], timeout_s: float = 180) -> float:
    """Seconds until every container reports healthy."""
    start = time.monotonic()

    def all_healthy() -> bool:
        states = {c: health(c) for c in containers}
        bad = [c for c, s in states.items() if s in ("exited", "dead", "missing")]
        if bad:
            logs = "\n".join(sh("docker", "logs", "--tail", "30", c, check=False).stderr for c in bad)
            raise AssertionError(f"containers not running: {bad}\n{logs}")
        return all(s == "healthy" for s in states.values())

    wait_for(f"{containers} healthy", all_healthy, timeout_s)
    return time.monotonic() - start


def remove_containers(prefix: str) -> None:
    names = sh("docker", "ps", "-aq", "--filter", f"name=^{prefix}", check=False).stdout.split()
    if names:
        sh("docker", "rm", "-f", *names, check=False, timeout=120)


class BoundedLoop:
    """Load in a thread until stopped, at most `max_requests` requests or `max_seconds` seconds, whichever
    comes first; subclasses send one request per `_one(i)` call."""

    def __init__(self, max_requests: int, max_seconds: float, pause_s: float) -> None:
        self.max_requests, self.max_seconds, self.pause_s = max_requests, max_seconds, pause_s
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.started = 0.0

    def _one(self, i: int) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        self.started = time.monotonic()
        while not self._stop.is_set() and self.count < self.max_requests:
            if time.monotonic() - self.started > self.max_seconds:
                break
            self._one(self.count)
            self.count += 1
            time.sleep(self.pause_s)

    def __enter__(self) -> BoundedLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


class RequestLoop(BoundedLoop):
    """Bounded load on loopback: GETs the URLs in turn. Records every non-200 answer."""

    def __init__(self, urls: list[str], max_requests: int = 20000, max_seconds: float = 180,
                 pause_s: float = 0.01) -> None:
        super().__init__(max_requests, max_seconds, pause_s)
        self.urls = urls
        self.failures: list[tuple[float, str, int]] = []

    def _one(self, i: int) -> None:
        url = self.urls[i % len(self.urls)]
        status, _ = http("GET", url, timeout_s=5)
        if status != 200:
            self.failures.append((time.monotonic() - self.started, url, status))

    def __enter__(self) -> RequestLoop:
        super().__enter__()
        return self

    def outage_s(self) -> float:
        """Seconds from the first to the last failed request (0 when none failed)."""
        return self.failures[-1][0] - self.failures[0][0] if self.failures else 0.0


def probe_tcp(container: str, host: str, port: int) -> str:
    """From inside `container`, with doctor's probe: 'ok', 'no-name' or 'refused ...'."""
    return sh("docker", "exec", container, "python", "-c", CONNECT_PROBE, host, str(port), timeout=30).stdout.strip()


def assert_database_isolated(frontend: str, api: str, postgres: str) -> None:
    """What the frontend (the public face) can reach: the API, and not the database by name or by address."""
    assert probe_tcp(frontend, "api", 5000) == "ok"
    assert probe_tcp(frontend, "postgres", 5432) == "no-name"
    addresses = [n["IPAddress"] for n in inspect(postgres)["NetworkSettings"]["Networks"].values()]
    assert addresses and all(addresses)
    for address in addresses:
        assert probe_tcp(frontend, address, 5432).startswith("refused"), address
    # The control: the API, on the backend, does reach it (so the probe itself can succeed).
    assert probe_tcp(api, "postgres", 5432) == "ok"


def post_oversized_body(port: int, size: int = 8 << 20) -> bytes:
    """An 8 MiB body to the API on loopback; returns the status line the server sent (bounded by time)."""
    head = (f"POST /prices HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {size}\r\n\r\n").encode()
    return exchange(port, head, chunks(size), timeout_s=10).split(b"\r\n", 1)[0]
