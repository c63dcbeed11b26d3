"""The three WSGI apps. Plain WSGI keeps the image small and the handlers easy to test."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hmac
import html
import json
import logging
import re
from collections.abc import Callable, Iterable
from decimal import ROUND_DOWN, Decimal, InvalidOperation
from typing import Any
from urllib.parse import parse_qs

from stock_app.store import Price, PriceStore, StoreUnavailable

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

# Whole-value patterns (fullmatch): `$` alone would let "AAPL\n" through to the table's CHECK (a 500).
SYMBOL = re.compile(r"[A-Z0-9.]{1,12}")
DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
DECIMAL = re.compile(r"[0-9]{1,10}(?:\.[0-9]+)?")
LIMIT = re.compile(r"[0-9]{1,4}")
# The server (waitress, see __main__) enforces the same body limit before the app runs.
MAX_BODY = 1 << 20
MAX_ROWS = 1000
# close is numeric(14, 4): below 1e10, four decimal places (more are cut off, never rounded up past the limit).
CLOSE_LIMIT = Decimal("1e10")
CLOSE_QUANTUM = Decimal("0.0001")
# Deeper JSON than a list of flat objects is never valid here; refuse it before the parser recurses.
MAX_JSON_DEPTH = 8
_REASONS = {200: "OK", 201: "Created", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
            405: "Method Not Allowed", 413: "Payload Too Large", 500: "Internal Server Error",
            502: "Bad Gateway", 503: "Service Unavailable"}
# Details of failures (database addresses, role names, reasons) go to the log, never to clients.
log = logging.getLogger("stock_app")


class HttpError(Exception):
    def __init__(self, status: int, message: str, headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or []


def _method_not_allowed(allowed: str) -> HttpError:
    return HttpError(405, f"use {allowed}", [("Allow", allowed)])


def _respond(start: StartResponse, status: int, body: bytes, content_type: str,
             extra: list[tuple[str, str]] | None = None) -> list[bytes]:
    headers = [("Content-Type", content_type), ("Content-Length", str(len(body))),
               ("X-Content-Type-Options", "nosniff"), *(extra or [])]
    start(f"{status} {_REASONS.get(status, 'Error')}", headers)
    return [body]


def _json(start: StartResponse, status: int, payload: object,
          extra: list[tuple[str, str]] | None = None) -> list[bytes]:
    return _respond(start, status, json.dumps(payload, sort_keys=True).encode(), "application/json", extra)


def _html(start: StartResponse, status: int, title: str, body: str,
          extra: list[tuple[str, str]] | None = None) -> list[bytes]:
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
            f"<body><h1>{html.escape(title)}</h1>{body}</body></html>")
    return _respond(start, status, page.encode(), "text/html; charset=utf-8", extra)


def parse_price(item: object) -> Price:
    if not isinstance(item, dict):
        raise HttpError(400, "each price must be an object with symbol, day and close")
    symbol = item.get("symbol")
    if not isinstance(symbol, str) or not SYMBOL.fullmatch(symbol):
        raise HttpError(400, "symbol must be 1-12 characters from A-Z, 0-9 and '.'")
    day_text = item.get("day")
    try:
        if not isinstance(day_text, str) or not DAY.fullmatch(day_text):
            raise ValueError
        day = dt.date.fromisoformat(day_text)
    except ValueError:
        raise HttpError(400, "day must be a date as YYYY-MM-DD, e.g. 2024-01-31") from None
    return Price(symbol, day, _parse_close(item.get("close")))


def _parse_close(value: object) -> Decimal:
    """A JSON number, or a decimal string; checked against the column before any arithmetic."""
    allowed = "close must be a number from 0 to below 1e10 (a JSON number or a decimal string)"
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise HttpError(400, allowed)
    if isinstance(value, str) and not DECIMAL.fullmatch(value):
        raise HttpError(400, allowed)
    try:
        close = Decimal(str(value))
    except InvalidOperation:
        raise HttpError(400, allowed) from None
    # Range first: quantize() itself fails (InvalidOperation) on numbers with more digits than its context.
    if not close.is_finite() or close < 0 or close >= CLOSE_LIMIT:
        raise HttpError(400, allowed)
    # copy_abs: -0 is a valid zero; stored and shown as 0.0000.
    return close.quantize(CLOSE_QUANTUM, rounding=ROUND_DOWN).copy_abs()


def _depth(text: str) -> int:
    """Deepest bracket nesting outside strings: a cheap pre-check, so json.loads never recurses deeply."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def _read_json(environ: dict[str, Any]) -> object:
    raw_length = environ.get("CONTENT_LENGTH") or "0"
    if not re.fullmatch(r"[0-9]{1,18}", raw_length):
        raise HttpError(400, "bad Content-Length")
    length = int(raw_length)
    if length > MAX_BODY:
        raise HttpError(413, f"body larger than {MAX_BODY} bytes")
    try:
        text = environ["wsgi.input"].read(length).decode("utf-8")
    except UnicodeDecodeError:
        raise HttpError(400, "body must be JSON in UTF-8") from None
    if _depth(text) > MAX_JSON_DEPTH:
        raise HttpError(400, f"body nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(text or "null", parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise HttpError(400, "body must be JSON") from None


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _query(environ: dict[str, Any]) -> dict[str, list[str]]:
    try:
        # Blank values kept: "symbol=" is a malformed symbol, not an absent one.
        return parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True, errors="strict",
                        max_num_fields=20)
    except (ValueError, UnicodeDecodeError):
        raise HttpError(400, "malformed query string") from None


def _unavailable(err: Exception, what: str) -> None:
    log.warning("%s unavailable: %s", what, err)


def api_app(store: PriceStore) -> WsgiApp:
    """GET /health (checks the database), GET /live (the process only), GET /prices[?symbol=&limit=],
    POST /prices (app/openapi.yaml)."""

    def handle(environ: dict[str, Any], start: StartResponse) -> list[bytes]:
        path, method = environ.get("PATH_INFO", "/"), environ.get("REQUEST_METHOD", "GET")
        if path == "/live":
            # For a proxy choosing between tasks: every task shares the one database, so a database that is
            # away for a moment must not take every task out of rotation (the store retries meanwhile).
            if method != "GET":
                raise _method_not_allowed("GET")
            return _json(start, 200, {"status": "ok"})
        if path == "/health":
            if method != "GET":
                raise _method_not_allowed("GET")
            try:
                store.ping()
            except StoreUnavailable as err:
                _unavailable(err, "database")
                return _json(start, 503, {"status": "unavailable", "database": "unavailable"})
            return _json(start, 200, {"status": "ok", "database": "ok"})
        if path != "/prices":
            raise HttpError(404, "not found")
        if method == "GET":
            query = _query(environ)
            symbol = query.get("symbol", [None])[0]
            if symbol is not None and not SYMBOL.fullmatch(symbol):
                raise HttpError(400, "symbol must be 1-12 characters from A-Z, 0-9 and '.'")
            limit_text = query.get("limit", ["100"])[0]
            if not LIMIT.fullmatch(limit_text) or not 1 <= int(limit_text) <= MAX_ROWS:
                raise HttpError(400, f"limit must be an integer from 1 to {MAX_ROWS}")
            return _json(start, 200, [p.to_json() for p in store.list(symbol, int(limit_text))])
        if method == "POST":
            body = _read_json(environ)
            items = body if isinstance(body, list) else [body]
            if not 1 <= len(items) <= MAX_ROWS:
                raise HttpError(400, f"send 1 to {MAX_ROWS} prices")
            stored = store.add([parse_price(i) for i in items])
            return _json(start, 201, {"stored": stored})
        raise _method_not_allowed("GET, POST")

    def app(environ: dict[str, Any], start: StartResponse) -> Iterable[bytes]:
        try:
            return handle(environ, start)
        except HttpError as err:
            return _json(start, err.status, {"error": err.message}, err.headers)
        except StoreUnavailable as err:
            _unavailable(err, "database")
            return _json(start, 503, {"error": "database unavailable"})
        except Exception:
            # A bug, not bad input: the client learns nothing of it, the log gets the traceback.
            log.exception("unhandled error on %s %s", environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"))
            return _json(start, 500, {"error": "internal error"})

    return app


def frontend_app(fetch_prices: Callable[[], list[dict[str, str]]]) -> WsgiApp:
    """A page of the latest prices, fetched server-side from the API over the stack network."""

    def app(environ: dict[str, Any], start: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/health":
            return _json(start, 200, {"status": "ok"})
        if path != "/":
            return _html(start, 404, "Not found", "")
        try:
            prices = fetch_prices()
        except (OSError, ValueError) as err:
            _unavailable(err, "API")
            return _html(start, 502, "Stock prices", "<p>The price service is unavailable; try again shortly.</p>")
        rows = "".join(
            f"<tr><td>{html.escape(p['symbol'])}</td><td>{html.escape(p['day'])}</td>"
            f"<td>{html.escape(p['close'])}</td></tr>" for p in prices
        )
        return _html(start, 200, "Stock prices",
                     f"<table><tr><th>Symbol</th><th>Day</th><th>Close</th></tr>{rows}</table>")

    return app


def check_basic_auth(header: str | None, user: str, password: str) -> bool:
    if not header or not header.startswith("Basic ") or not user or not password:
        return False
    try:
        # WSGI hands headers over as latin-1 text: anything outside ASCII is not base64 (ValueError).
        given_user, _, given_password = base64.b64decode(header[6:], validate=True).decode().partition(":")
    except (binascii.Error, ValueError):
        return False
    # Both compared in constant time, always both, so timing does not tell which one was wrong.
    ok_user = hmac.compare_digest(given_user.encode(), user.encode())
    ok_password = hmac.compare_digest(given_password.encode(), password.encode())
    return ok_user and ok_password


def admin_app(store: PriceStore, user: str, password: Callable[[], str],
              backup_status: Callable[[], str] = lambda: "not configured",
              metrics: Callable[[], str] = lambda: "\n") -> WsgiApp:
    """Row counts per symbol and when the last good backup was taken, behind HTTP basic auth with the
    generated admin credential.

    Fails closed: with the password file missing, unreadable or empty, nobody gets in (503).
    """

    def app(environ: dict[str, Any], start: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/health":
            return _json(start, 200, {"status": "ok"})
        try:
            expected = password()
        except (OSError, ValueError, RuntimeError) as err:
            log.error("admin password unusable, refusing every request: %s", err)
            expected = ""
        if not expected.strip():
            return _html(start, 503, "Admin unavailable", "<p>The admin password is not configured.</p>")
        if not check_basic_auth(environ.get("HTTP_AUTHORIZATION"), user, expected):
            return _html(start, 401, "Authentication required", "",
                         [("WWW-Authenticate", 'Basic realm="stock-analyzer admin", charset="UTF-8"')])
        if path == "/metrics":
            # Behind the same basic auth: Prometheus scrapes with basic_auth (docs/recovery.md, Monitoring).
            return _respond(start, 200, metrics().encode(), "text/plain; version=0.0.4; charset=utf-8")
        if path != "/":
            return _html(start, 404, "Not found", "")
        try:
            counts = store.counts()
        except StoreUnavailable as err:
            _unavailable(err, "database")
            return _html(start, 503, "Admin", "<p>The database is unavailable; see the admin container's log.</p>")
        rows = "".join(f"<tr><td>{html.escape(s)}</td><td>{n}</td></tr>" for s, n in counts.items())
        return _html(start, 200, "Admin",
                     f"<p>{sum(counts.values())} price rows</p>"
                     f"<p>Last good backup: {html.escape(backup_status())}</p>"
                     f"<table><tr><th>Symbol</th><th>Rows</th></tr>{rows}</table>")

    return app
