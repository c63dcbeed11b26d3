"""The app under its real server (waitress, the deployment's limits) in a thread, and raw HTTP/1.1 over a
socket: for what an HTTP client library would not send (bodies it cannot finish, half-sent requests),
bounded in time."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import waitress.server
from stock_app.__main__ import SERVER_LIMITS
from stock_app.web import WsgiApp


@contextmanager
def served(app: WsgiApp, **overrides: Any) -> Iterator[int]:
    """Serve `app` on a free loopback port with SERVER_LIMITS (and `overrides`); yields the port."""
    srv = waitress.server.create_server(app, host="127.0.0.1", port=0, **{**SERVER_LIMITS, **overrides})
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    try:
        port: int = srv.effective_port  # type: ignore[union-attr]
        yield port
    finally:
        srv.close()
        thread.join(timeout=5)


def exchange(port: int, head: bytes, body: Iterable[bytes], timeout_s: float = 5.0) -> bytes:
    """Send a request (stopping early if the server closes), return whatever the server answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        try:
            sock.sendall(head)
            for chunk in body:
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = b""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                data = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not data:
                break
            answer += data
        return answer


def chunks(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    for _ in range(total // size):
        yield b"x" * size
