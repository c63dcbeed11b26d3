"""What the public-facing app does with hostile or malformed input: 4xx, never 500; no database detail
to unauthenticated clients; limits enforced by the server itself; an admin UI that fails closed."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from stock_app.__main__ import SERVER_LIMITS
from stock_app.config import MissingSetting, read_secret
from stock_app.store import Price, StoreUnavailable
from stock_app.web import MAX_BODY, WsgiApp, admin_app, api_app, frontend_app

from tests.raw_http import chunks, exchange, served
from tests.test_app import FakeStore, _basic, call

DB_DETAIL = ('connection to server at "10.20.30.40", port 5432 failed: FATAL:  password authentication '
             'failed for user "stock_app_b"')


@pytest.fixture
def store() -> FakeStore:
    return FakeStore()


# -- malformed input: 4xx, never 500 -----------------------------------------------------------------

@pytest.mark.parametrize("body", [
    b"[" * 100_000 + b"]" * 100_000,                        # recursion in the JSON parser
    b'{"a":' * 50 + b"1" + b"}" * 50,                        # deeper than any valid body
    b'[{"symbol": "ACME", "day": "2024-01-02", "close": NaN}]',  # not JSON, though Python parses it
    b'{"symbol": "ACME", "day": "2024-01-02", "close": 1}' + b"\xff",  # not UTF-8
])
def test_malformed_json_is_400(store: FakeStore, body: bytes) -> None:
    status, _, out = call(api_app(store), "POST", "/prices", body)
    assert status == 400 and "error" in json.loads(out)


@pytest.mark.parametrize("close", ["9999999999.99999", 9999999999.99999, "9999999999.9999"])
def test_close_just_below_the_limit_fits_the_column(store: FakeStore, close: object) -> None:
    """Rounding up would overflow numeric(14, 4) (a 500 from the database); extra digits are cut off."""
    status, _, _ = call(api_app(store), "POST", "/prices", {"symbol": "ACME", "day": "2024-01-02", "close": close})
    assert status == 201
    assert str(next(iter(store.rows.values()))) == "9999999999.9999"


@pytest.mark.parametrize("item", [
    {"symbol": "ACME", "day": "2024-01-02", "close": "1e30"},       # quantize() would raise
    {"symbol": "ACME", "day": "2024-01-02", "close": 1e300},
    {"symbol": "ACME", "day": "2024-01-02", "close": "10000000000"},
    {"symbol": "ACME", "day": "2024-01-02", "close": True},
    {"symbol": "ACME", "day": "2024-01-02", "close": [1]},
    {"symbol": "ACME\n", "day": "2024-01-02", "close": 1},          # `$` matches before a final newline
    {"symbol": "AC\x00ME", "day": "2024-01-02", "close": 1},
    {"symbol": "ACME", "day": "2024-01-02\n", "close": 1},
    {"symbol": "ACME", "day": 20240102, "close": 1},
    {"symbol": "ACME", "day": "2024-W01-2", "close": 1},
    {"symbol": "ACME", "day": "0000-01-01", "close": 1},
])
def test_values_the_table_would_refuse_are_400(store: FakeStore, item: dict[str, object]) -> None:
    status, _, out = call(api_app(store), "POST", "/prices", item)
    assert status == 400 and "error" in json.loads(out)
    assert store.rows == {}


@pytest.mark.parametrize("query", ["symbol=ACME%0A", "symbol=AC%00ME", "symbol=", "symbol=%FF", "limit=",
                                   "limit=1_000", "limit=%EF%BC%91", "limit=99999999999999999999"])
def test_bad_queries_are_400(store: FakeStore, query: str) -> None:
    assert call(api_app(store), "GET", "/prices", query=query)[0] == 400


def test_wrong_method_is_405_with_allow(store: FakeStore) -> None:
    status, headers, _ = call(api_app(store), "DELETE", "/prices")
    assert status == 405 and headers["Allow"] == "GET, POST"
    status, headers, _ = call(api_app(store), "POST", "/health")
    assert status == 405 and headers["Allow"] == "GET"


def test_an_unexpected_error_is_a_bare_500_and_logged(store: FakeStore, caplog: pytest.LogCaptureFixture) -> None:
    def broken(prices: list[Price]) -> int:
        raise KeyError("internal detail")

    store.add = broken  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, "stock_app"):
        status, _, out = call(api_app(store), "POST", "/prices", {"symbol": "A", "day": "2024-01-02", "close": 1})
    assert status == 500 and json.loads(out) == {"error": "internal error"}
    assert "internal detail" in caplog.text


@pytest.mark.parametrize("header", ["Basic \u00ff\u00fe", "Basic w7/Dvg==\u00e9", "Basic " + "\u00e9" * 10])
def test_non_ascii_basic_auth_is_401(store: FakeStore, header: str) -> None:
    app = admin_app(store, "admin", lambda: "a-long-enough-admin-password")
    assert call(app, "GET", "/", headers={"HTTP_AUTHORIZATION": header})[0] == 401


# -- no database detail to clients -------------------------------------------------------------------

def test_database_errors_stay_in_the_log(store: FakeStore, caplog: pytest.LogCaptureFixture) -> None:
    def down() -> None:
        raise StoreUnavailable(DB_DETAIL)

    store.ping = down  # type: ignore[method-assign]
    store.down = True
    store._check = down  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, "stock_app"):
        answers = [call(api_app(store), "GET", "/health"), call(api_app(store), "GET", "/prices"),
                   call(admin_app(store, "admin", lambda: "a-long-enough-admin-password"), "GET", "/",
                        headers=_basic("admin", "a-long-enough-admin-password"))]
    for status, _, body in answers:
        assert status == 503
        for leak in ("10.20.30.40", "stock_app_b", "password authentication", "5432"):
            assert leak.encode() not in body
    assert caplog.text.count("10.20.30.40") == 3


def test_frontend_does_not_echo_the_api_error(caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> list[dict[str, str]]:
        raise ConnectionRefusedError("[Errno 111] connect to 172.18.0.4:5000 refused")

    with caplog.at_level(logging.WARNING, "stock_app"):
        status, _, body = call(frontend_app(broken), "GET", "/")
    assert status == 502 and b"172.18.0.4" not in body and "172.18.0.4" in caplog.text


# -- the admin UI fails closed -----------------------------------------------------------------------

def _missing() -> str:
    raise MissingSetting("/run/secrets/admin_password is empty")


def _unreadable() -> str:
    raise PermissionError(13, "Permission denied")


@pytest.mark.parametrize("password", [lambda: "", lambda: "   ", _missing, _unreadable])
def test_admin_without_a_password_lets_nobody_in(store: FakeStore, password: Callable[[], str]) -> None:
    app = admin_app(store, "admin", password)
    for headers in ({}, _basic("admin", ""), _basic("admin", "   "), _basic("admin", "x")):
        status, _, _ = call(app, "GET", "/", headers=headers)
        assert status == 503
    assert call(app, "GET", "/health")[0] == 200  # the container stays up; the log says why


@pytest.mark.parametrize("content", ["", "\n", "   ", " \t", "pass\nword", "password\n", "pass\x00word"])
def test_secret_files_must_hold_a_usable_value(tmp_path: Path, content: str) -> None:
    f = tmp_path / "admin_password"
    f.write_text(content)
    with pytest.raises(MissingSetting):
        read_secret("ADMIN_PASSWORD", {"ADMIN_PASSWORD_FILE": str(f)})


# -- limits and timeouts in the server itself --------------------------------------------------------

def recording_api(seen: list[str]) -> WsgiApp:
    """The API, noting every path that reached the app (the server's limits act before it)."""
    inner = api_app(FakeStore())

    def app(environ: dict[str, Any], start: Any) -> Any:
        seen.append(environ.get("PATH_INFO", ""))
        return inner(environ, start)

    return app


@pytest.fixture
def server() -> Iterator[tuple[int, list[str]]]:
    """The real server (waitress) with the deployment's limits, in a thread; records what the app saw."""
    seen: list[str] = []
    with served(recording_api(seen)) as port:
        yield port, seen


def test_server_refuses_a_large_body_before_the_app(server: tuple[int, list[str]]) -> None:
    port, seen = server
    total = 8 * MAX_BODY
    started = time.monotonic()
    answer = exchange(port, f"POST /prices HTTP/1.1\r\nHost: x\r\nContent-Length: {total}\r\n"
                             "Content-Type: application/json\r\n\r\n".encode(), chunks(total))
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert time.monotonic() - started < 5 and seen == []


def test_server_refuses_a_large_chunked_body(server: tuple[int, list[str]]) -> None:
    port, seen = server
    chunk = b"x" * 65536
    body = (b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(8 * MAX_BODY // len(chunk)))
    answer = exchange(port, b"POST /prices HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", body)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert seen == []


def test_server_refuses_huge_headers(server: tuple[int, list[str]]) -> None:
    port, seen = server
    answer = exchange(port, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 40_000 + b"\r\n\r\n",
                       iter(()))
    assert answer.split(b" ")[1:2] == [b"431"], answer[:200]
    assert seen == []


def test_server_closes_idle_and_half_sent_requests() -> None:
    """The deployment's timeout is SERVER_LIMITS["channel_timeout"]; here shortened to keep the suite fast."""
    assert SERVER_LIMITS["channel_timeout"] <= 30
    seen: list[str] = []
    with served(recording_api(seen), channel_timeout=1, cleanup_interval=1) as port:
        started = time.monotonic()
        answer = exchange(port, b"POST /prices HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{",
                           iter(()), timeout_s=10)
        assert time.monotonic() - started < 5, "a half-sent request held its connection open"
        assert seen == [] and not answer.startswith(b"HTTP/1.1 2")
