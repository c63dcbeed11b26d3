"""Raw HTTP/1.1 over a socket: for what an HTTP client library would not send (bodies it cannot finish,
half-sent requests), bounded in time."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterable, Iterator


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
