"""A Patroni cluster on the three-node lab: who leads (Patroni's own view, from inside a member), what each
server says it is, and a bounded write loop through the API whose acknowledged rows are logged, so that a
test can count what a user would see: acknowledged writes lost, failed requests, the longest gap.

Member k runs on node k (node label `<swarmDbNodeLabel>=k`); nothing here talks to a member's port from the
host: every look is a `docker exec` on the member's own node, so a cut node answers nothing, as it would.
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

from model.swarm import MEMBERS
from tests.docker.support import BoundedLoop
from tests.docker.swarm_support import NODES, dk, lab_http, node_sock

API_PORT = 5000
CTL = ("patronictl", "-c", "/tmp/patroni/patroni.yml")  # written by patroni/start.py in the member


@dataclass
class Cluster:
    prefix: str
    superuser: str
    db_name: str

    def member(self, k: int) -> str:
        return f"{self.prefix}_postgres-{k}"

    def container(self, k: int) -> str | None:
        """The running container of member k on node k (none while it restarts or its node is cut)."""
        ids = dk(k, "ps", "-q", "--filter", f"name={self.member(k)}.", "--filter", "status=running",
                 check=False, timeout=15).split()
        return ids[0] if ids else None

    def exec(self, k: int, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess[str] | None:
        cid = self.container(k)
        if cid is None:
            return None
        try:
            return subprocess.run(["docker", "-H", f"unix://{node_sock(k)}", "exec", cid, *cmd],
                                  capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return None

    def ctl(self, *args: str, via: tuple[int, ...] = MEMBERS, timeout: float = 60) -> str:
        """patronictl in the first member of `via` that answers; raises naming what each said."""
        said = []
        for k in via:
            done = self.exec(k, *CTL, *args, timeout=timeout)
            if done is not None and done.returncode == 0:
                return done.stdout
            said.append(f"member {k}: " + ("no container" if done is None else (done.stderr or done.stdout)[-300:]))
        raise AssertionError(f"patronictl {' '.join(args)} failed: {'; '.join(said)}")

    def members(self, via: tuple[int, ...] = MEMBERS) -> list[dict[str, Any]]:
        """`patronictl list` as JSON: Member, Role (Leader, Sync Standby, Replica), State, TL, Lag in MB."""
        try:
            return list(json.loads(self.ctl("list", "-f", "json", via=via, timeout=20)))
        except AssertionError:
            return []

    def leader(self, via: tuple[int, ...] = MEMBERS) -> int | None:
        leaders = [m for m in self.members(via) if m["Role"] == "Leader" and m["State"] == "running"]
        return int(leaders[0]["Member"].rsplit("-", 1)[1]) if len(leaders) == 1 else None

    def role_of(self, k: int, via: tuple[int, ...] = MEMBERS) -> str | None:
        found = [m["Role"] for m in self.members(via) if m["Member"] == f"postgres-{k}"]
        return found[0] if found else None

    def healthy(self, via: tuple[int, ...] = MEMBERS) -> bool:
        """One leader, every other member streaming from it on its timeline with no lag."""
        ms = self.members(via)
        if len(ms) != len(MEMBERS) or sum(m["Role"] == "Leader" for m in ms) != 1:
            return False
        tl = {m.get("TL") for m in ms}
        return len(tl) == 1 and all(m["State"] in ("running", "streaming") for m in ms) and all(
            m["Role"] == "Leader" or (m["State"] == "streaming" and not m.get("Lag in MB")) for m in ms)

    def timeline(self, via: tuple[int, ...] = MEMBERS) -> int:
        return max(int(m.get("TL") or 0) for m in self.members(via))

    def sql(self, k: int, query: str) -> str | None:
        """A query on member k's own server, by its socket (local trust inside the container)."""
        done = self.exec(k, "psql", "-X", "-qAt", "-U", self.superuser, "-d", self.db_name, "-c", query,
                         timeout=15)
        return done.stdout.strip() if done is not None and done.returncode == 0 else None

    def writable(self, k: int) -> bool:
        return self.sql(k, "SELECT NOT pg_is_in_recovery()") == "t"

    def days(self, symbol: str, k: int) -> set[str]:
        out = self.sql(k, f"SELECT day FROM stock_prices WHERE symbol = '{symbol}'")  # noqa: S608 (test symbol)
        assert out is not None, f"member {k} did not answer"
        return set(out.split())

    def wait(self, what: str, check: Any, timeout_s: float, every_s: float = 1.0) -> float:
        """Seconds until `check()` is true, polled every `every_s`; fails naming `what` and the cluster."""
        started = time.monotonic()
        for _ in range(int(timeout_s / every_s) + 2):
            if check():
                return time.monotonic() - started
            if time.monotonic() - started > timeout_s:
                break
            time.sleep(every_s)
        logs = "".join(f"\n--- postgres-{k}:\n{self.log_tail(k)}" for k in MEMBERS)
        raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}; cluster: {self.members()}{logs}")

    def log_tail(self, k: int, lines: int = 25) -> str:
        """Member k's last log lines (Patroni's and its server's), for a failure message."""
        cid = self.container(k)
        if cid is None:
            return "(no running container)"
        out = subprocess.run(["docker", "-H", f"unix://{node_sock(k)}", "logs", "--tail", str(lines), cid],
                             capture_output=True, text=True, timeout=30, check=False)
        return out.stdout + out.stderr


@dataclass
class Writes(BoundedLoop):
    """One new day of `symbol` per POST /prices, round robin over `nodes`' published API port. Every answer
    is logged: acknowledged (201) with when, or failed with when and what."""

    nodes: list[int]
    symbol: str
    max_requests: int = 6000
    max_seconds: float = 240
    pause_s: float = 0.05
    timeout_s: float = 15  # longer than the edge's server timeout (10 s): the edge answers, and logs where
    acked: list[tuple[str, float]] = field(default_factory=list)  # (day, seconds in when acknowledged)
    failed: list[tuple[float, int]] = field(default_factory=list)  # (seconds in when it answered, status)
    slowest_s: float = 0.0

    def __post_init__(self) -> None:
        BoundedLoop.__init__(self, self.max_requests, self.max_seconds, self.pause_s)
        self.since = int(time.time()) - 1

    def _one(self, i: int) -> None:
        day = f"{2000 + i // 336:04d}-{1 + i // 28 % 12:02d}-{1 + i % 28:02d}"
        sent = time.monotonic()
        status, _, _ = lab_http("POST", self.nodes[i % len(self.nodes)], API_PORT, "/prices",
                                {"symbol": self.symbol, "day": day, "close": "1.5"}, timeout_s=self.timeout_s)
        now = time.monotonic()
        self.slowest_s = max(self.slowest_s, now - sent)
        if status == 201:
            self.acked.append((day, now - self.started))
        else:
            self.failed.append((now - self.started, status))

    def __enter__(self) -> Writes:
        super().__enter__()
        return self

    def wait_acked(self, n: int, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.acked) < n:
            assert time.monotonic() < deadline, f"only {len(self.acked)} of {n} writes acknowledged: {self.summary()}"
            time.sleep(0.1)

    def longest_gap_s(self) -> float:
        """The longest time between two acknowledged writes: what a writer saw as the outage."""
        times = [t for _, t in self.acked]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)

    def summary(self) -> str:
        statuses = sorted({s for _, s in self.failed})
        return (f"{self.count} writes, {len(self.acked)} acknowledged, {len(self.failed)} failed {statuses}, "
                f"longest gap {self.longest_gap_s():.1f} s, slowest answer {self.slowest_s:.1f} s")


def task_addresses(prefix: str, service: str, node: int) -> set[str]:
    """The overlay addresses of `service`'s running tasks on node `node` (asked of the manager, node 1)."""
    ids = dk(1, "service", "ps", "-q", "--no-trunc", "--filter", f"node=node{node}", "--filter",
             "desired-state=running", f"{prefix}_{service}").split()
    if not ids:
        return set()
    tasks = json.loads(dk(1, "inspect", *ids))
    return {a.split("/")[0] for t in tasks for net in t.get("NetworksAttachments") or []
            for a in net.get("Addresses") or []}


_ANSWER = re.compile(r" (?P<backend>[a-z]+)/\S+ (?P<addr>[0-9.]+|-):\S+ (?P<status>\d{3}) ")


def edge_errors(prefix: str, backend: str, since: int) -> list[tuple[str, int]]:
    """(task address, status) of every 5xx the edge proxies answered for `backend` since `since` (epoch s),
    from their request logs (proxy/haproxy.cfg): which task a failed request was on."""
    found = []
    for k in range(1, NODES + 1):
        for cid in dk(k, "ps", "-q", "--filter", f"name={prefix}_proxy.", check=False).split():
            out = dk(k, "logs", "--since", str(since), cid, check=False)
            found += [(m["addr"], int(m["status"])) for m in _ANSWER.finditer(out)
                      if m["backend"] == backend and m["status"].startswith("5")]
    return found
