"""The three WSGI apps. Plain WSGI keeps the image small and the handlers easy to test."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hmac
import html
import json
import re
from collections.abc import Callable, Iterable
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import parse_qs

from stock_app.store import Price, PriceStore, StoreUnavailable

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

SYMBOL = re.compile(r"^[A-Z0-9.]{1,12}$")
MAX_BODY = 1 << 20
MAX_ROWS = 1000
_REASONS = {200: "OK", 201: "Created", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
            405: "Method Not Allowed", 413: "Payload Too Large", 502: "Bad Gateway", 503: "Service Unavailable"}


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _respond(start: StartResponse, status: int, body: bytes, content_type: str,
             extra: list[tuple[str, str]] | None = None) -> list[bytes]:
    headers = [("Content-Type", content_type), ("Content-Length", str(len(body))),
               ("X-Content-Type-Options", "nosniff"), *(extra or [])]
    start(f"{status} {_REASONS.get(status, 'Error')}", headers)
    return [body]


def _json(start: StartResponse, status: int, payload: object) -> list[bytes]:
    return _respond(start, status, json.dumps(payload, sort_keys=True).encode(), "application/json")


def _html(start: StartResponse, status: int, title: str, body: str,
          extra: list[tuple[str, str]] | None = None) -> list[bytes]:
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
            f"<body><h1>{html.escape(title)}</h1>{body}</body></html>")
    return _respond(start, status, page.encode(), "text/html; charset=utf-8", extra)


def parse_price(item: object) -> Price:
    if not isinstance(item, dict):
        raise HttpError(400, "each price must be an object with symbol, day and close")
    symbol = item.get("symbol")
    if not isinstance(symbol, str) or not SYMBOL.match(symbol):
        raise HttpError(400, "symbol must be 1-12 characters from A-Z, 0-9 and '.'")
    try:
        day = dt.date.fromisoformat(str(item.get("day")))
    except ValueError:
        raise HttpError(400, "day must be an ISO date, e.g. 2024-01-31") from None
    try:
        close = Decimal(str(item.get("close")))
    except InvalidOperation:
        raise HttpError(400, "close must be a number") from None
    if not close.is_finite() or close < 0 or close >= Decimal("1e10"):
        raise HttpError(400, "close must be a non-negative number below 1e10")
    return Price(symbol, day, close.quantize(Decimal("0.0001")))


def _read_json(environ: dict[str, Any]) -> object:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise HttpError(400, "bad Content-Length") from None
    if length > MAX_BODY:
        raise HttpError(413, f"body larger than {MAX_BODY} bytes")
    try:
        return json.loads(environ["wsgi.input"].read(length) or b"null")
    except (ValueError, UnicodeDecodeError):
        raise HttpError(400, "body must be JSON") from None


def api_app(store: PriceStore) -> WsgiApp:
    """GET /health (checks the database), GET /prices[?symbol=&limit=], POST /prices."""

    def app(environ: dict[str, Any], start: StartResponse) -> Iterable[bytes]:
        path, method = environ.get("PATH_INFO", "/"), environ.get("REQUEST_METHOD", "GET")
        try:
            if path == "/health":
                try:
                    store.ping()
                except StoreUnavailable as err:
                    return _json(start, 503, {"status": "unavailable", "database": str(err)})
                return _json(start, 200, {"status": "ok", "database": "ok"})
            if path == "/prices":
                if method == "GET":
                    query = parse_qs(environ.get("QUERY_STRING", ""))
                    symbol = query.get("symbol", [None])[0]
                    if symbol is not None and not SYMBOL.match(symbol):
                        raise HttpError(400, "symbol must be 1-12 characters from A-Z, 0-9 and '.'")
                    try:
                        limit = int(query.get("limit", ["100"])[0])
                    except ValueError:
                        raise HttpError(400, "limit must be an integer") from None
                    if not 1 <= limit <= MAX_ROWS:
                        raise HttpError(400, f"limit must be from 1 to {MAX_ROWS}")
                    return _json(start, 200, [p.to_json() for p in store.list(symbol, limit)])
                if method == "POST":
                    body = _read_json(environ)
                    items = body if isinstance(body, list) else [body]
                    if not 1 <= len(items) <= MAX_ROWS:
                        raise HttpError(400, f"send 1 to {MAX_ROWS} prices")
                    stored = store.add([parse_price(i) for i in items])
                    return _json(start, 201, {"stored": stored})
                raise HttpError(405, "use GET or POST")
            raise HttpError(404, "not found")
        except HttpError as err:
            return _json(start, err.status, {"error": err.message})
        except StoreUnavailable as err:
            return _json(start, 503, {"error": "database unavailable", "detail": str(err)})

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
        except OSError as err:
            return _html(start, 502, "Stock prices", f"<p>API unavailable: {html.escape(str(err))}</p>")
        rows = "".join(
            f"<tr><td>{html.escape(p['symbol'])}</td><td>{html.escape(p['day'])}</td>"
            f"<td>{html.escape(p['close'])}</td></tr>" for p in prices
        )
        return _html(start, 200, "Stock prices",
                     f"<table><tr><th>Symbol</th><th>Day</th><th>Close</th></tr>{rows}</table>")

    return app


def check_basic_auth(header: str | None, user: str, password: str) -> bool:
    if not header or not header.startswith("Basic "):
        return False
    try:
        given_user, _, given_password = base64.b64decode(header[6:], validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    # Both compared in constant time, always both, so timing does not tell which one was wrong.
    ok_user = hmac.compare_digest(given_user.encode(), user.encode())
    ok_password = hmac.compare_digest(given_password.encode(), password.encode())
    return ok_user and ok_password


def admin_app(store: PriceStore, user: str, password: Callable[[], str]) -> WsgiApp:
    """Row counts per symbol, behind HTTP basic auth with the generated admin credential."""

    def app(environ: dict[str, Any], start: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/health":
            return _json(start, 200, {"status": "ok"})
        if not check_basic_auth(environ.get("HTTP_AUTHORIZATION"), user, password()):
            return _html(start, 401, "Authentication required", "",
                         [("WWW-Authenticate", 'Basic realm="stock-analyzer admin", charset="UTF-8"')])
        if path != "/":
            return _html(start, 404, "Not found", "")
        try:
            counts = store.counts()
        except StoreUnavailable as err:
            return _html(start, 503, "Admin", f"<p>database unavailable: {html.escape(str(err))}</p>")
        rows = "".join(f"<tr><td>{html.escape(s)}</td><td>{n}</td></tr>" for s, n in counts.items())
        return _html(start, 200, "Admin",
                     f"<p>{sum(counts.values())} price rows</p><table><tr><th>Symbol</th><th>Rows</th></tr>"
                     f"{rows}</table>")

    return app
