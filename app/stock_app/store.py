"""Price storage. The web handlers depend on the `PriceStore` protocol only, so they are tested
without a database."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol, TypeVar

from stock_app.config import DbConfig


@dataclass(frozen=True)
class Price:
    symbol: str
    day: dt.date
    close: Decimal

    def to_json(self) -> dict[str, str]:
        return {"symbol": self.symbol, "day": self.day.isoformat(), "close": str(self.close)}


T = TypeVar("T")


class StoreUnavailable(RuntimeError):  # noqa: N818 (reads better at call sites)
    pass


class PriceStore(Protocol):
    def ping(self) -> None: ...
    def add(self, prices: list[Price]) -> int: ...
    def list(self, symbol: str | None, limit: int) -> list[Price]: ...
    def counts(self) -> dict[str, int]: ...


# A planned switchover, a restart or a failover's last seconds: connections refused or cut for a moment. Every
# statement here is idempotent (reads, and an upsert), so it is run again on a new connection for this long
# before the request fails; within the edge proxy's 10 s server timeout, with a 3 s connect timeout.
RETRY_S = 6.0


class PostgresStore:
    """One short connection per request: simple, and it survives a database restart unaided."""

    def __init__(self, config: DbConfig, connect_timeout_s: int = 3, retry_s: float = RETRY_S,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        self.config = config
        self.connect_timeout_s = connect_timeout_s
        self.retry_s, self.clock, self.sleep = retry_s, clock, sleep

    def _retrying(self, work: Callable[[Any], T]) -> T:
        deadline = self.clock() + self.retry_s
        pause = 0.1
        while True:
            try:
                with self._session() as conn:
                    return work(conn)
            except StoreUnavailable:
                if self.clock() + pause > deadline:
                    raise
                self.sleep(pause)
                pause = min(pause * 2, 1.0)

    @contextmanager
    def _session(self) -> Iterator[Any]:
        import psycopg
        import psycopg.errors

        try:
            user, password = self.config.credentials()
        except OSError as err:
            raise StoreUnavailable(f"credentials unreadable: {err.strerror}") from err
        try:
            with psycopg.connect(
                host=self.config.host, port=self.config.port, dbname=self.config.name, user=user,
                password=password, connect_timeout=self.connect_timeout_s,
                application_name="stock-app",
                # A peer that vanished (its node cut) sends no reset: unacknowledged data fails the connection
                # after 3 s, a silent wait after about 4 s of unanswered probes; then the request is retried.
                keepalives=1, keepalives_idle=2, keepalives_interval=1, keepalives_count=2, tcp_user_timeout=3000,
            ) as conn:
                yield conn
        # A read-only server: a leader that just demoted itself, still behind the router for a second.
        except (psycopg.OperationalError, psycopg.InterfaceError, psycopg.errors.ReadOnlySqlTransaction) as err:
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else "database unavailable"
            raise StoreUnavailable(first_line) from err

    def ping(self) -> None:
        """Not retried: a healthcheck says at once what the database says now."""
        with self._session() as conn:
            conn.execute("SELECT 1")

    def add(self, prices: list[Price]) -> int:
        def upsert(conn: Any) -> int:
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO stock_prices (symbol, day, close) VALUES (%s, %s, %s) "
                    "ON CONFLICT (symbol, day) DO UPDATE SET close = EXCLUDED.close",
                    [(p.symbol, p.day, p.close) for p in prices],
                )
            return len(prices)
        return self._retrying(upsert)

    def list(self, symbol: str | None, limit: int) -> list[Price]:
        rows = self._retrying(lambda conn: conn.execute(
            "SELECT symbol, day, close FROM stock_prices WHERE %(s)s::text IS NULL OR symbol = %(s)s "
            "ORDER BY day DESC, symbol LIMIT %(n)s",
            {"s": symbol, "n": limit},
        ).fetchall())
        return [Price(r[0], r[1], r[2]) for r in rows]

    def counts(self) -> dict[str, int]:
        rows = self._retrying(lambda conn: conn.execute(
            "SELECT symbol, count(*) FROM stock_prices GROUP BY symbol ORDER BY symbol").fetchall())
        return {r[0]: int(r[1]) for r in rows}
