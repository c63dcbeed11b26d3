"""The three-node Swarm lab (tests/docker/swarm-lab.sh) for the swarm tests: nodes, images, traffic.

Traffic goes only to the lab's own node addresses (192.168.231.11..), each bounded in time and count.
"""

from __future__ import annotations

import functools
import http.client
import json
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.docker.support import BoundedLoop, sh
from tests.pulumi_mocks import ROOT

LAB = Path(__file__).resolve().parent / "swarm-lab.sh"
NODES = 3
DB_NODE = 2  # not node1, the leader: cutting the database node must not also cost the raft leader
CUT_NODE = 3  # neither the leader nor the database node
LAB_NET = "192.168.231."


def node_ip(k: int) -> str:
    return f"{LAB_NET}{10 + k}"


def node_sock(k: int) -> str:
    return f"/run/swarm-lab/node{k}.sock"


def lab(*args: str, timeout: float = 300) -> str:
    return sh("bash", str(LAB), *args, timeout=timeout).stdout


def dk(k: int, *args: str, check: bool = True, timeout: float = 120) -> str:
    """docker against node k's engine. With check=False a call that times out (a manager call while raft
    elects a leader blocks) answers "" like a failed one."""
    try:
        return sh("docker", "-H", f"unix://{node_sock(k)}", *args, check=check, timeout=timeout).stdout
    except subprocess.TimeoutExpired:
        if check:
            raise
        return ""


def wait_until(what: str, check: Callable[[], bool], timeout_s: float, every_s: float = 1.0) -> float:
    """Poll `check` until true; returns the seconds it took. Fails naming `what` after `timeout_s`."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout_s, f"timed out after {timeout_s:.0f} s waiting for {what}"
        time.sleep(every_s)
    return time.monotonic() - started


def swarm_settled() -> bool:
    """Every node Ready, every manager Leader or Reachable (after a heal, raft elects again)."""
    out = dk(1, "node", "ls", "--format", "{{.Status}} {{.ManagerStatus}}", check=False, timeout=20)
    lines = out.splitlines()
    return len(lines) == NODES and all(line.split() in (["Ready", "Leader"], ["Ready", "Reachable"])
                                       for line in lines)


def lab_http(method: str, k: int, port: int, path: str, body: object = None,
             timeout_s: float = 15) -> tuple[int, dict[str, str], bytes]:
    """One request to node k's published port: (status or 0 on a connection failure, headers, body)."""
    conn = http.client.HTTPConnection(node_ip(k), port, timeout=timeout_s)
    try:
        data = None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    except OSError:
        return 0, {}, b""
    finally:
        conn.close()


def running_tasks(service: str) -> list[dict[str, Any]]:
    """Tasks of `service` that run now (node 1 is the manager we ask)."""
    out = dk(1, "service", "ps", service, "--filter", "desired-state=running", "--format", "{{json .}}",
             "--no-trunc", check=False)
    tasks = [json.loads(line) for line in out.splitlines() if line.strip()]
    return [t for t in tasks if t["CurrentState"].startswith("Running")]


def task_images(service: str) -> set[str]:
    return {t["Image"] for t in running_tasks(service)}


class SpreadLoop(BoundedLoop):
    """GETs `path` on the given nodes' published `port` in turn. Records failed requests (status not 200);
    which task answered is read from the proxies' logs afterwards (`answered_by`), never from the response."""

    def __init__(self, nodes: list[int], port: int, path: str, max_requests: int = 20000,
                 max_seconds: float = 300, pause_s: float = 0.02) -> None:
        super().__init__(max_requests, max_seconds, pause_s)
        self.nodes, self.port, self.path = nodes, port, path
        self.failures: list[tuple[float, int, int]] = []  # (seconds in, node, status)
        self.since = 0

    def _one(self, i: int) -> None:
        node = self.nodes[i % len(self.nodes)]
        status, _, _ = lab_http("GET", node, self.port, self.path)
        if status != 200:
            self.failures.append((time.monotonic() - self.started, node, status))

    def __enter__(self) -> SpreadLoop:
        self.since = int(time.time()) - 1
        super().__enter__()
        return self

    def answered_by(self, prefix: str, backend: str) -> set[str]:
        """The task addresses the proxies logged for `backend` since the loop began (proxy/haproxy.cfg)."""
        return served_by(prefix, backend, self.since)

    def summary(self) -> str:
        return f"{self.count} requests, {len(self.failures)} failed"


_SERVED = re.compile(r" (?P<backend>[a-z]+)/[A-Za-z0-9_-]+ (?P<addr>[0-9.]+):[0-9]+ ")


def served_by(prefix: str, backend: str, since: int) -> set[str]:
    """Distinct task addresses in every node's proxy log lines for `backend` since `since` (epoch s)."""
    found: set[str] = set()
    for k in range(1, NODES + 1):
        for cid in dk(k, "ps", "-q", "--filter", f"name={prefix}_proxy.", check=False).split():
            out = dk(k, "logs", "--since", str(since), cid, check=False)
            found |= {m["addr"] for m in _SERVED.finditer(out) if m["backend"] == backend}
    return found


def build_app_image(tag: str, base_image: str, revision: str) -> str:
    """The app image under `tag`; `revision` (a label) makes a distinct image ID for an update."""
    sh("docker", "build", "-q", "--build-arg", f"BASE_IMAGE={base_image}", "--label",
       f"stock-analyzer.test-revision={revision}", "-t", tag, str(ROOT / "app"), timeout=900)
    return sh("docker", "image", "inspect", "-f", "{{.Id}}", tag).stdout.strip()


def remove_stack_objects(prefix: str) -> None:
    """Services, secrets, configs, networks and the DB node's volumes of a stack, whatever made them."""
    for kind in ("service", "secret", "config"):
        ids = dk(1, kind, "ls", "-q", "--filter", f"name={prefix}_", check=False).split()
        if ids:
            dk(1, kind, "rm", *ids, check=False)
    def gone() -> bool:
        return not any(dk(k, "ps", "-aq", "--filter", f"name={prefix}_", check=False).split()
                       for k in range(1, NODES + 1))

    wait_until("the stack's containers to stop", gone, 90)

    def removed(kind: str) -> bool:  # secrets, configs and networks are in use until the tasks are gone
        ids = dk(1, kind, "ls", "-q", "--filter", f"name={prefix}_", check=False).split()
        if ids:
            dk(1, kind, "rm", *ids, check=False)
        return not dk(1, kind, "ls", "-q", "--filter", f"name={prefix}_", check=False).split()

    for kind in ("secret", "config", "network"):
        wait_until(f"the stack's {kind}s removed", functools.partial(removed, kind), 60, 1)
    for k in range(1, NODES + 1):
        vols = dk(k, "volume", "ls", "-q", "--filter", f"name={prefix}_", check=False).split()
        if vols:
            dk(k, "volume", "rm", "-f", *vols, check=False)


def lab_images(images: list[str]) -> None:
    lab("load", *images, timeout=900)
