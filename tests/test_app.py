"""The reference app's handlers, with an in-memory store standing in for Postgres."""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import re
import threading
from collections.abc import Iterator
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest
from stock_app import healthcheck
from stock_app.config import DbConfig, MissingSetting, read_secret
from stock_app.store import PostgresStore, Price, StoreUnavailable
from stock_app.web import WsgiApp, admin_app, api_app, frontend_app


class ColumnError(Exception):
    """What Postgres refuses (psycopg raises DataError or CheckViolation): a 500 if it reaches the app."""


class FakeStore:
    def __init__(self) -> None:
        self.rows: dict[tuple[str, dt.date], Decimal] = {}
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailable("connection refused")

    def ping(self) -> None:
        self._check()

    def add(self, prices: list[Price]) -> int:
        self._check()
        for p in prices:
            # As the table does (provision/provision.sql): a CHECK on the symbol, and numeric(14, 4),
            # which rounds half away from zero to 4 places, then overflows at 1e10.
            if not re.fullmatch(r"[A-Z0-9.]{1,12}", p.symbol):
                raise ColumnError(f"new row violates check constraint on symbol: {p.symbol!r}")
            if abs(p.close.quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP)) >= Decimal("1e10"):
                raise ColumnError("numeric field overflow")
        for p in prices:
            self.rows[(p.symbol, p.day)] = p.close
        return len(prices)

    def list(self, symbol: str | None, limit: int) -> list[Price]:
        self._check()
        out = [Price(s, d, c) for (s, d), c in self.rows.items() if symbol in (None, s)]
        return sorted(out, key=lambda p: (p.day, p.symbol), reverse=True)[:limit]

    def counts(self) -> dict[str, int]:
        self._check()
        counts: dict[str, int] = {}
        for s, _ in self.rows:
            counts[s] = counts.get(s, 0) + 1
        return counts


def call(app: WsgiApp, method: str, path: str, body: object = None, query: str = "",
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    raw = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    environ: dict[str, Any] = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query,
                               "CONTENT_LENGTH": str(len(raw)), "wsgi.input": io.BytesIO(raw), **(headers or {})}
    seen: dict[str, Any] = {}

    def start(status: str, hdrs: list[tuple[str, str]]) -> None:
        seen["status"], seen["headers"] = int(status.split()[0]), dict(hdrs)

    out = b"".join(app(environ, start))
    return seen["status"], seen["headers"], out


@pytest.fixture
def store() -> FakeStore:
    return FakeStore()


def test_health_reflects_database(store: FakeStore) -> None:
    app = api_app(store)
    assert call(app, "GET", "/health")[0] == 200
    store.down = True
    status, _, body = call(app, "GET", "/health")
    assert status == 503 and json.loads(body)["status"] == "unavailable"


def test_live_answers_while_the_database_is_away(store: FakeStore) -> None:
    """What the edge proxy checks: one shared database that is away must not empty the proxy's backend."""
    store.down = True
    status, _, body = call(api_app(store), "GET", "/live")
    assert status == 200 and json.loads(body) == {"status": "ok"}
    assert call(api_app(store), "POST", "/live", {})[0] == 405


def test_store_and_read_prices(store: FakeStore) -> None:
    app = api_app(store)
    rows = [{"symbol": "ACME", "day": "2024-01-02", "close": "10.5"},
            {"symbol": "ACME", "day": "2024-01-03", "close": 11},
            {"symbol": "INIT", "day": "2024-01-03", "close": "3.25"}]
    status, _, body = call(app, "POST", "/prices", rows)
    assert status == 201 and json.loads(body) == {"stored": 3}
    status, _, body = call(app, "GET", "/prices", query="symbol=ACME")
    assert status == 200
    assert json.loads(body) == [{"symbol": "ACME", "day": "2024-01-03", "close": "11.0000"},
                                {"symbol": "ACME", "day": "2024-01-02", "close": "10.5000"}]
    assert len(json.loads(call(app, "GET", "/prices", query="limit=1")[2])) == 1


@pytest.mark.parametrize("bad", [
    {"symbol": "acme", "day": "2024-01-02", "close": 1},
    {"symbol": "ACME", "day": "02/01/2024", "close": 1},
    {"symbol": "ACME", "day": "2024-01-02", "close": "ten"},
    {"symbol": "ACME", "day": "2024-01-02", "close": -1},
    {"symbol": "ACME", "day": "2024-01-02", "close": "NaN"},
    "ACME",
    [],
])
def test_bad_prices_are_rejected(store: FakeStore, bad: object) -> None:
    status, _, body = call(api_app(store), "POST", "/prices", bad)
    assert status == 400 and "error" in json.loads(body)
    assert store.rows == {}


def test_bad_requests(store: FakeStore) -> None:
    app = api_app(store)
    assert call(app, "POST", "/prices", b"{not json")[0] == 400
    assert call(app, "GET", "/prices", query="limit=0")[0] == 400
    assert call(app, "GET", "/prices", query="symbol=x;drop")[0] == 400
    assert call(app, "DELETE", "/prices")[0] == 405
    assert call(app, "GET", "/nope")[0] == 404


def test_data_endpoints_report_503_when_database_is_down(store: FakeStore) -> None:
    store.down = True
    assert call(api_app(store), "GET", "/prices")[0] == 503


def test_frontend_renders_and_escapes() -> None:
    app = frontend_app(lambda: [{"symbol": "<b>X</b>", "day": "2024-01-02", "close": "1.0000"}])
    status, headers, body = call(app, "GET", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b"&lt;b&gt;X&lt;/b&gt;" in body and b"<b>X</b>" not in body
    assert call(app, "GET", "/health")[0] == 200


def test_frontend_reports_api_outage() -> None:
    def broken() -> list[dict[str, str]]:
        raise ConnectionRefusedError("refused")

    assert call(frontend_app(broken), "GET", "/")[0] == 502


def _basic(user: str, password: str) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_admin_requires_the_generated_credential(store: FakeStore) -> None:
    store.add([Price("ACME", dt.date(2024, 1, 2), Decimal(1))])
    app = admin_app(store, "admin", lambda: "s3cret-value")
    status, headers, _ = call(app, "GET", "/")
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic")
    assert call(app, "GET", "/", headers=_basic("admin", "wrong"))[0] == 401
    assert call(app, "GET", "/", headers=_basic("root", "s3cret-value"))[0] == 401
    assert call(app, "GET", "/", headers={"HTTP_AUTHORIZATION": "Basic !!!"})[0] == 401
    status, _, body = call(app, "GET", "/", headers=_basic("admin", "s3cret-value"))
    assert status == 200 and b"1 price rows" in body
    assert call(app, "GET", "/health")[0] == 200


def test_read_secret_prefers_file_and_rereads_it(tmp_path: Path) -> None:
    f = tmp_path / "pw"
    f.write_text("first")
    env = {"DB_PASSWORD_FILE": str(f), "DB_PASSWORD": "ignored"}
    assert read_secret("DB_PASSWORD", env) == "first"
    f.write_text("second")
    assert read_secret("DB_PASSWORD", env) == "second"
    assert read_secret("DB_PASSWORD", {"DB_PASSWORD": "plain"}) == "plain"  # pragma: allowlist secret
    with pytest.raises(MissingSetting):
        read_secret("DB_PASSWORD", {})


def test_db_config_from_env() -> None:
    cfg = DbConfig.from_env({"DB_HOST": "postgres", "DB_NAME": "d", "DB_USER": "u", "DB_PASSWORD": "p"})
    assert (cfg.host, cfg.port, cfg.name, cfg.credentials()) == ("postgres", 5432, "d", ("u", "p"))
    with pytest.raises(MissingSetting, match="DB_HOST"):
        DbConfig.from_env({})
    with pytest.raises(MissingSetting, match="DB_CREDENTIALS_FILE"):
        DbConfig.from_env({"DB_HOST": "h", "DB_NAME": "d"})


def test_credentials_file_is_read_for_every_connection(tmp_path: Path) -> None:
    creds = tmp_path / "db"
    creds.write_text("stock_app\nfirst-password\n")
    cfg = DbConfig.from_env({"DB_HOST": "h", "DB_NAME": "d", "DB_CREDENTIALS_FILE": str(creds),
                             "DB_USER": "ignored", "DB_PASSWORD": "ignored"})  # pragma: allowlist secret
    assert cfg.credentials() == ("stock_app", "first-password")
    # The deployment swaps the file atomically on rotation; the next connection uses the new pair.
    (tmp_path / "db.tmp").write_text("stock_app_b\nsecond-password\n")
    (tmp_path / "db.tmp").replace(creds)
    assert cfg.credentials() == ("stock_app_b", "second-password")
    creds.write_text("only-a-user\n")
    with pytest.raises(MissingSetting, match="two lines"):
        cfg.credentials()


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def served(store: FakeStore) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, api_app(store), handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=5)


def test_container_healthcheck_probe(served: str, store: FakeStore) -> None:
    assert healthcheck.check(f"{served}/health") is True
    store.down = True
    assert healthcheck.check(f"{served}/health") is False
    assert healthcheck.check("http://127.0.0.1:9/health", timeout_s=0.5) is False
    assert healthcheck.check(f"{served.replace('http:', 'https:')}/health") is False


@pytest.mark.parametrize("answer", [b"", b"garbage\r\n", b"HTTP/1.1 2000 OK\r\n", b"SSH-2.0 200\r\n",
                                    b"HTTP/1.1 503 Service Unavailable\r\n\r\n200"])
def test_the_healthcheck_wants_an_http_200_status_line(answer: bytes) -> None:
    import socket

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def reply() -> None:
        conn, _ = srv.accept()
        with conn:
            conn.recv(4096)
            conn.sendall(answer)

    thread = threading.Thread(target=reply, daemon=True)
    thread.start()
    try:
        assert healthcheck.check(f"http://127.0.0.1:{srv.getsockname()[1]}/health", timeout_s=2) is False
    finally:
        thread.join(timeout=5)
        srv.close()


def test_admin_shows_when_the_last_good_backup_was_taken(store: FakeStore, tmp_path: Path) -> None:
    from stock_app.__main__ import last_good_backup

    status = tmp_path / "status"
    assert last_good_backup(str(status)) == "none yet"
    status.write_text("last_attempt=2026-11-30T05:00:00Z\nlast_result=ok\nlast_detail=d\n"
                      "last_good=2026-11-30T05:00:00Z\nlast_good_id=stock_analysis-20261130T050000Z\n")
    assert last_good_backup(str(status)) == "2026-11-30T05:00:00Z (stock_analysis-20261130T050000Z)"
    status.write_text(status.read_text().replace("last_result=ok", "last_result=failed"))
    assert "FAILED" in last_good_backup(str(status))
    app = admin_app(store, "admin", lambda: "s3cret-value-long", lambda: last_good_backup(str(status)))
    body = call(app, "GET", "/", headers=_basic("admin", "s3cret-value-long"))[2]
    assert b"Last good backup: 2026-11-30T05:00:00Z" in body and b"FAILED" in body


class FakeConnection:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    def __enter__(self) -> FakeConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def execute(self, sql: str, params: object = None) -> FakeConnection:
        self.log.append(sql.split()[0])
        return self

    def fetchall(self) -> list[tuple[str, int]]:
        return [("ACME", 3)]


def _flaky_store(monkeypatch: pytest.MonkeyPatch, failures: list[Exception]) -> tuple[PostgresStore, list[str]]:
    """A store whose first connections fail as given (a switchover: refused, then cut, then read-only)."""
    import psycopg

    log: list[str] = []

    def connect(**kw: object) -> FakeConnection:
        log.append("connect")
        if failures:
            raise failures.pop(0)
        return FakeConnection(log)

    monkeypatch.setattr(psycopg, "connect", connect)
    now = [0.0]
    config = DbConfig("db", 5432, "stock", {"DB_USER": "app", "DB_PASSWORD": "x" * 12})
    store = PostgresStore(config, clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s))
    return store, log


def test_a_moment_without_the_database_costs_latency_not_a_failed_request(monkeypatch: pytest.MonkeyPatch) -> None:
    import psycopg
    import psycopg.errors

    store, log = _flaky_store(monkeypatch, [psycopg.OperationalError("connection refused"),
                                            psycopg.OperationalError("terminating connection (admin shutdown)"),
                                            psycopg.errors.ReadOnlySqlTransaction("read-only transaction")])
    assert store.counts() == {"ACME": 3}
    assert log == ["connect", "connect", "connect", "connect", "SELECT"]


def test_a_database_that_stays_away_fails_the_request_after_the_retry_window(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import psycopg

    store, log = _flaky_store(monkeypatch, [psycopg.OperationalError("connection refused")] * 100)
    with pytest.raises(StoreUnavailable, match="connection refused"):
        store.counts()
    # 0.1 s doubling to 1 s pauses inside the 6 s window: a handful of attempts, not a hundred.
    assert 5 <= log.count("connect") <= 10


def test_the_healthcheck_ping_is_never_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    import psycopg

    store, log = _flaky_store(monkeypatch, [psycopg.OperationalError("connection refused")])
    with pytest.raises(StoreUnavailable):
        store.ping()
    assert log == ["connect"]
