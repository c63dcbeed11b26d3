"""The replicated database (`postgresMembers: 3`) on the three-node lab: a Patroni cluster with etcd, deployed
through the Pulumi path (the program's inputs under mocks, applied with the provider's semantics), then the
failures of issue 21 under a bounded write loop through the API whose acknowledged rows are logged.

Each scenario leaves the cluster healthy (one leader, two streaming replicas, no lag) for the next. Figures
are printed (pytest -s, or the captured output of a failure) and quoted in docs/swarm.md."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from exporters import compose
from model.settings import StackSettings
from model.swarm import MEMBERS, DeployedApp
from ops.cluster import SYNC_ROLES
from ops.swarm_state import deployed_app as read_deployed_app
from tests.docker.cluster_support import Cluster, Writes, edge_errors, task_addresses
from tests.docker.pulumi_swarm_apply import SwarmApplied, apply, update
from tests.docker.standins import ensure_image
from tests.docker.support import run_ops, sh
from tests.docker.swarm_support import (
    SpreadLoop,
    build_app_image,
    dk,
    lab,
    lab_http,
    lab_images,
    node_sock,
    remove_stack_objects,
    swarm_settled,
    wait_until,
)
from tests.pulumi_mocks import ROOT, Recording, committed_config, run_program, settings_of

pytestmark = pytest.mark.docker

STACK = "swarm"
FIGURES: dict[str, Any] = {}
PREFIX = "stock-analyzer:"
API_PORT = 5000


def _config(**overrides: str) -> dict[str, str]:
    cfg = committed_config(STACK)
    cfg.update({f"{PREFIX}{k}": v for k, v in overrides.items()})
    return cfg


@pytest.fixture(scope="module")
def settings() -> StackSettings:
    return settings_of(STACK, _config())


def _build_patroni(s: StackSettings, tag: str, revision: str) -> None:
    """patroni/Dockerfile on the stack's Postgres image (a stand-in here), as a user builds it."""
    sh("docker", "build", "-q", "--build-arg", f"POSTGRES_IMAGE={s.postgres_image}", "--label",
       f"stock-analyzer.test-revision={revision}", "-t", tag, str(ROOT / "patroni"), timeout=900)


def _live(host: str | None, service: str, target: str) -> DeployedApp | None:
    """The program's read of the running stack, from the lab's manager (bound at import: the mocks patch
    ops.swarm_state.deployed_app with this very function)."""
    return read_deployed_app(f"unix://{node_sock(1)}", service, target)


@pytest.fixture(scope="module")
def cluster_lab(settings: StackSettings, base_images: dict[str, str]) -> Iterator[None]:
    """Three nodes, each labelled with its member number, the images loaded; torn down whatever happens."""
    sw = settings.swarm
    assert sw is not None and sw.members == 3
    try:
        lab("up", str(len(MEMBERS)))
        for image in (sw.proxy_image, sw.etcd_image):
            ensure_image(image)
        build_app_image(settings.app_image, settings.python_base_image, "1")
        _build_patroni(settings, sw.patroni_image, "1")
        # The next release of the member image, for the rolling update: a distinct image ID, nothing else.
        sh("docker", "build", "-q", "-t", f"{sw.patroni_image}-r2", "-", timeout=300,
           input=f"FROM {sw.patroni_image}\nLABEL stock-analyzer.test-revision=2\n")
        lab_images([settings.postgres_image, sw.patroni_image, f"{sw.patroni_image}-r2", sw.etcd_image, sw.proxy_image,
                    settings.app_image])
        for k in MEMBERS:
            node = dk(1, "node", "ls", "--filter", f"name=node{k}", "-q").strip()
            dk(1, "node", "update", "--label-add", f"{sw.db_node_label}={k}", node)
        yield
    finally:
        lab("down")
        print("\ncluster figures:", FIGURES)


@pytest.fixture(scope="module")
def deployed(cluster_lab: None, settings: StackSettings) -> Iterator[tuple[SwarmApplied, Cluster]]:
    remove_stack_objects(settings.prefix)
    rec = run_program(STACK, _config(), deployed=_live)
    started = time.monotonic()
    applied = apply(rec, node_sock(1))
    FIGURES["pulumi up (create, s)"] = round(time.monotonic() - started, 1)
    cluster = Cluster(settings.prefix, settings.db_superuser, settings.db_name)
    yield applied, cluster
    applied.destroy()
    remove_stack_objects(settings.prefix)


OpsRun = Callable[..., tuple[int, str, str]]


@pytest.fixture
def ops(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> OpsRun:
    """`python -m ops CMD --stack swarm` against the lab's manager, as an operator with DOCKER_HOST would."""
    monkeypatch.setenv("DOCKER_HOST", f"unix://{node_sock(1)}")
    return lambda cmd, *args: run_ops(capsys, cmd, "--stack", STACK, *args)


def _others(*nodes: int) -> list[int]:
    return [k for k in MEMBERS if k not in nodes]


def _failures_by_task(c: Cluster, w: Writes, lost_tasks: set[str]) -> tuple[list[int], list[tuple[str, int]]]:
    """The loop's failed requests as the edge logged them: statuses on the cut node's API tasks, and the rest."""
    errors = edge_errors(c.prefix, "api", w.since)
    return [st for addr, st in errors if addr in lost_tasks], [(a, st) for a, st in errors if a not in lost_tasks]


def _all_acked_present(c: Cluster, w: Writes, via: int) -> set[str]:
    """Acknowledged days missing from member `via` (the leader, once healthy)."""
    present = c.days(w.symbol, via)
    return {day for day, _ in w.acked} - present


def test_the_cluster_forms_with_one_leader_and_a_synchronous_standby(
        deployed: tuple[SwarmApplied, Cluster]) -> None:
    _, c = deployed
    c.wait("a healthy cluster", c.healthy, 120, 2)
    roles = sorted(m["Role"] for m in c.members())
    # Quorum commit: both replicas vote, ANY 1 of them confirms each commit.
    assert roles == ["Leader", "Quorum Standby", "Quorum Standby"], roles
    leader = c.leader()
    assert leader is not None and c.writable(leader)
    assert [k for k in MEMBERS if k != leader and c.writable(k)] == []
    # The app's writes go through the router to the leader, and the replicas hold them at once.
    with Writes(_others(), "FORM", max_requests=50) as w:
        w.wait_acked(50)
    assert not w.failed, w.summary()
    c.wait("the replicas to replay every write", lambda: all(
        _all_acked_present(c, w, k) == set() for k in _others(leader)), 10, 0.5)


def test_ops_doctor_reports_the_clusters_view(deployed: tuple[SwarmApplied, Cluster], ops: OpsRun) -> None:
    _, c = deployed
    leader = c.leader()
    code, out, err = ops("doctor")
    lines = {line.split()[1]: line for line in out.splitlines() if line.split()[:1] in (["ok"], ["warn"], ["fail"])}
    assert code == 0, out + err
    assert "3 of 3 members healthy" in lines["etcd"], out
    assert f"postgres-{leader} on timeline" in lines["leader"], out
    assert all(lines[f"postgres-{k}"].startswith("ok") for k in MEMBERS), out
    # One store member gone: still a quorum, and the doctor warns that the next loss stops every write.
    dk(1, "service", "scale", "--detach", f"{c.prefix}_etcd-3=0", timeout=60)
    try:
        time.sleep(3)
        code, out, _ = ops("doctor")
        assert code == 0 and "warn" in out and "2 of 3 members healthy; down: etcd-3" in out, out
    finally:
        dk(1, "service", "scale", "--detach", f"{c.prefix}_etcd-3=1", timeout=60)
    c.wait("etcd-3 back and the cluster healthy", lambda: c.healthy() and "3 of 3" in ops("doctor")[1], 90, 3)


def test_ops_backs_up_from_a_replica_and_restores_into_the_leader_for_every_member(
        deployed: tuple[SwarmApplied, Cluster], ops: OpsRun) -> None:
    _, c = deployed
    with Writes(_others(), "BACK", max_requests=30) as kept:
        kept.wait_acked(30)
    code, out, err = ops("backup")
    assert code == 0, err
    backup_id = out.strip().splitlines()[-1]
    code, out, err = ops("backups")
    assert code == 0 and backup_id in out and "sha256" in out, out + err
    with Writes(_others(), "LATE", max_requests=20) as late:
        late.wait_acked(20)
    started = time.monotonic()
    code, out, err = ops("restore", backup_id, "--yes")
    seconds = time.monotonic() - started
    assert code == 0, err
    FIGURES["ops backup + restore on the cluster: restore s"] = round(seconds, 1)
    safety = out.split("are backup ")[1].split(";")[0]
    leader = c.leader()
    assert leader is not None
    for k in MEMBERS:  # the restore is one transaction on the leader; the replicas replay it
        c.wait(f"postgres-{k} to hold the backup's rows", lambda k=k: c.days("BACK", k) == {d for d, _ in kept.acked}
               and c.days("LATE", k) == set(), 30, 1)
    # The safety copy holds what the restore replaced: the late rows come back with it.
    code, out, err = ops("restore", safety, "--yes")
    assert code == 0, err
    c.wait("the late rows back", lambda: c.days("LATE", leader) == {d for d, _ in late.acked}, 30, 1)


def test_a_planned_switchover_under_load_loses_nothing(deployed: tuple[SwarmApplied, Cluster], ops: OpsRun) -> None:
    """`ops switchover --to 2` (not the swarm's raft leader, node 1), where the next scenarios want the leader."""
    _, c = deployed
    if c.leader() == 2:  # as it may be after the bootstrap: away first, so that the measured move is to node 2
        code, out, err = ops("switchover", "--to", "3")
        assert code == 0, err
    code, out, err = ops("switchover", "--to", str(c.leader()))
    assert code == 0 and "already leads" in out and "nothing done" in out, out + err
    tl = c.timeline()
    target = 2
    with Writes(_others(), "SWCH") as w:
        w.wait_acked(40)
        started = time.monotonic()
        code, out, err = ops("switchover", "--to", str(target))
        seconds = time.monotonic() - started
        assert code == 0, err
        w.wait_acked(len(w.acked) + 40)
    FIGURES["switchover (ops, until all stream): seconds, writes/failed, longest gap s"] = (
        round(seconds, 1), (w.count, len(w.failed)), round(w.longest_gap_s(), 1))
    print(f"ops switchover to postgres-{target}: {seconds:.1f} s; it said: {out.strip()};", w.summary())
    assert c.leader() == target and f"-> postgres-{target}" in out
    # The old leader's sessions are cut and the new one opens within a few seconds: the API's retries cover it.
    assert not w.failed, w.summary()
    assert c.timeline() == tl + 1
    assert _all_acked_present(c, w, target) == set()
    assert seconds <= 60


def test_losing_a_replicas_node_fails_no_write(deployed: tuple[SwarmApplied, Cluster]) -> None:
    """A replica's node cut under writes: the other replica confirms every commit on its own (quorum commit),
    so no commit waits for the lost one; after the heal it catches up by itself."""
    _, c = deployed
    leader = c.leader()
    assert leader is not None and leader != 1, "cutting node 1 would also cost the swarm's raft leader"
    lost = max(_others(leader))
    api_there = task_addresses(c.prefix, "api", lost)
    with Writes(_others(lost), "RCUT") as w:
        w.wait_acked(40)
        lab("cut", str(lost))
        try:
            n = len(w.acked)
            w.wait_acked(n + 200, timeout_s=60)  # about 20 s of writes without it
            during = w.longest_gap_s()
        finally:
            lab("heal", str(lost))
        caught_up = c.wait(f"postgres-{lost} streaming again", c.healthy, 120, 2)
        w.wait_acked(len(w.acked) + 20)
    FIGURES["replica's node cut: writes/failed, longest gap s, caught up after heal s"] = (
        (w.count, len(w.failed)), round(during, 1), round(caught_up, 1))
    print(f"node{lost} (a replica) cut: longest gap between acknowledged writes {during:.1f} s; postgres-{lost} "
          f"streaming {caught_up:.1f} s after the heal;", w.summary())
    on_lost, elsewhere = _failures_by_task(c, w, api_there)
    print(f"failed requests: {on_lost} on the API task(s) of the cut node, {elsewhere} elsewhere")
    assert c.leader() == leader, "losing a replica moved the leader"
    # The database costs nothing; a request in flight on the cut node's own API task is lost with it (the edge
    # cannot resend a POST), at most one per proxy in use.
    assert elsewhere == [] and len(on_lost) <= 2, w.summary()
    assert len(w.failed) == len(on_lost), "a failure the edge did not log"
    assert during < 2 or on_lost, f"commits waited {during:.1f} s for the lost replica"
    c.wait(f"postgres-{lost} to replay every write", lambda: _all_acked_present(c, w, lost) == set(), 30, 1)
    wait_until("every node Ready and every manager reachable again", swarm_settled, 120, 2)


def test_losing_the_leaders_node_loses_no_acknowledged_write(deployed: tuple[SwarmApplied, Cluster]) -> None:
    """The leader's node cut under writes: a replica takes over once the leader's lock expires; after the heal
    the old leader rewinds onto the new timeline and streams, with no step by hand."""
    _, c = deployed
    old = c.leader()
    assert old == 2, f"the leader is postgres-{old}; the switchover scenario puts it on node 2"
    tl = c.timeline()
    survivors = _others(old)
    api_there = task_addresses(c.prefix, "api", old)
    with Writes(survivors, "LCUT") as w:
        w.wait_acked(40)
        lab("cut", str(old))
        cut_at = time.monotonic()
        try:
            c.wait("a new leader", lambda: c.leader(via=tuple(survivors)) not in (None, old), 90, 1)
            failover = time.monotonic() - cut_at
            n = len(w.acked)
            w.wait_acked(n + 40, timeout_s=90)
        finally:
            lab("heal", str(old))
        # What a writer sees: the first write the new leader acknowledged. (`failover` above also counts the
        # polling: patronictl waits on the cut member's REST API.)
        writes_back = min(t for _, t in w.acked if t + w.started > cut_at) + w.started - cut_at
        rejoin = c.wait(f"postgres-{old} back as a replica", c.healthy, 180, 2)
        w.wait_acked(len(w.acked) + 20)
    new = c.leader()
    assert new is not None and new != old
    lost = _all_acked_present(c, w, new)
    on_lost, elsewhere = _failures_by_task(c, w, api_there)
    print(f"failed requests: {len(on_lost)} on the API task(s) of the cut node, {len(elsewhere)} elsewhere "
          f"(statuses {sorted({st for _, st in elsewhere})})")
    FIGURES["leader's node cut: new leader s, writes back s, writes/failed, lost, rejoin after heal s"] = (
        round(failover, 1), round(writes_back, 1), (w.count, len(w.failed)), len(lost), round(rejoin, 1))
    print(f"node{old} (the leader) cut: postgres-{new} leads after {failover:.1f} s, writes acknowledged again "
          f"after {writes_back:.1f} s; postgres-{old} streaming {rejoin:.1f} s after the heal;", w.summary())
    assert lost == set(), f"{len(lost)} acknowledged writes lost"
    assert c.timeline() == tl + 1
    assert c.role_of(old) in ("Replica", *SYNC_ROLES)
    assert _all_acked_present(c, w, old) == set(), "the old leader did not catch up"
    # The goal is 30 s, met in every lab run (24.5-29.5 s); the guard leaves 5 s for a loaded CI machine.
    assert writes_back <= 35, f"writes came back after {writes_back:.1f} s"
    wait_until("every node Ready and every manager reachable again", swarm_settled, 120, 2)


def test_etcd_losing_one_member_changes_nothing_and_losing_two_stops_writes(
        deployed: tuple[SwarmApplied, Cluster], settings: StackSettings) -> None:
    _, c = deployed
    leader = c.leader()
    assert leader is not None
    away = _others(leader)

    def scale(k: int, n: int) -> None:
        dk(1, "service", "scale", "--detach", f"{settings.prefix}_etcd-{k}={n}", timeout=60)

    with Writes(_others(), "ETCD") as w:
        w.wait_acked(40)
        before = len(w.failed)  # a node healed by the scenario before may refuse a connection at first
        scale(away[0], 0)
        time.sleep(20)  # more than the ttl: a leader that could not renew its lock would have demoted
        one_lost = len(w.failed) - before
        assert c.leader() == leader and c.writable(leader)
        scale(away[1], 0)
        lost_at = time.monotonic()
        try:
            demoted = c.wait("the leader to demote itself", lambda: not c.writable(leader), 60, 1)
            read_only_at = time.monotonic() - w.started
            assert not any(c.writable(k) for k in MEMBERS), "a server still takes writes without a quorum"
            time.sleep(5)
            healing_at = time.monotonic() - w.started
        finally:
            scale(away[0], 1)
            scale(away[1], 1)
        back = c.wait("a leader again", lambda: c.leader() is not None and c.healthy(), 120, 2)
        n = len(w.acked)
        w.wait_acked(n + 40, timeout_s=60)
    FIGURES["etcd: failed with one lost, leader demoted after s, back after heal s, writes/failed"] = (
        one_lost, round(demoted, 1), round(back, 1), (w.count, len(w.failed)))
    print(f"etcd lost one member: {one_lost} failed writes; lost two: leader read-only after {demoted:.1f} s "
          f"({time.monotonic() - lost_at:.0f} s without quorum in all); back {back:.1f} s after the heal;",
          w.summary())
    assert one_lost == 0, w.failed
    accepted = [day for day, t in w.acked if read_only_at + 1 < t < healing_at]
    assert accepted == [], f"{len(accepted)} writes acknowledged without a quorum"
    assert _all_acked_present(c, w, c.leader() or leader) == set()


def test_a_rolling_image_update_changes_the_leader_at_most_once(
        deployed: tuple[SwarmApplied, Cluster], settings: StackSettings, ops: OpsRun) -> None:
    """Members update in order 1, 2, 3. With the leader on the last one first (one planned switchover when it
    is not), the replicas restart first and the leader once, last."""
    applied, c = deployed
    sw = settings.swarm
    assert sw is not None
    if c.leader() != MEMBERS[-1]:  # the runbook's first step: `ops switchover --to 3`
        for attempt in range(3):  # Patroni refuses a candidate the quorum has not confirmed yet; ops says so
            code, _, err = ops("switchover", "--to", str(MEMBERS[-1]))
            if code == 0:
                break
            print(f"switchover attempt {attempt + 1}: {err.strip()}")
            time.sleep(5)
        assert code == 0, err
        assert c.leader() == MEMBERS[-1]
    tl = c.timeline()
    after: Recording = run_program(STACK, _config(patroniImage=f"{sw.patroni_image}-r2"), deployed=_live)
    with Writes(_others(), "ROLL") as w:
        w.wait_acked(40)
        started = time.monotonic()
        changed = update(applied, after)
        seconds = time.monotonic() - started
        c.wait("the cluster healthy on the new image", c.healthy, 120, 2)
        w.wait_acked(len(w.acked) + 40)
    images = {dk(k, "inspect", "-f", "{{.Config.Image}}", c.container(k) or "none", check=False).strip()
              for k in MEMBERS}
    FIGURES["rolling update: s, leader changes, writes/failed, longest gap s"] = (
        round(seconds, 1), c.timeline() - tl, (w.count, len(w.failed)), round(w.longest_gap_s(), 1))
    print(f"rolling update of {len(changed)} resources in {seconds:.1f} s, timeline {tl} -> {c.timeline()};",
          w.summary())
    assert images == {f"{sw.patroni_image}-r2"}, images
    assert c.timeline() - tl <= 1
    leader = c.leader()
    assert leader is not None and _all_acked_present(c, w, leader) == set()


def _deploy_script() -> str:
    """`./deploy.sh swarm` as a user without the Pulumi CLI runs it, against the lab's manager."""
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p and not (Path(p) / "pulumi").exists())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PULUMI_", "VIRTUAL_ENV"))}
    env.update(PATH=path, DOCKER_HOST=f"unix://{node_sock(1)}", SWARM_RESOLVE_IMAGE="never")
    return sh("./deploy.sh", STACK, cwd=ROOT, env=env, timeout=900).stdout


def _logs_in(c: Cluster, k: int, user: str, password: str, db: str) -> bool:
    """A login over TCP on member k's own server (scram, as every client but the local socket)."""
    done = c.exec(k, "env", f"PGPASSWORD={password}", "psql", "-X", "-qAt", "-h", "127.0.0.1", "-U", user,
                  "-d", db, "-c", "SELECT 1", timeout=15)
    return done is not None and done.returncode == 0


def test_deploy_script_brings_the_cluster_up_from_the_stack_file_and_rotates_without_a_failed_request(
        deployed: tuple[SwarmApplied, Cluster], settings: StackSettings) -> None:
    """The committed swarm stack through the other output: the stack file, `docker stack deploy`, the job."""
    applied, c = deployed
    applied.destroy()
    remove_stack_objects(settings.prefix)
    out = ROOT / ".stack" / STACK
    shutil.rmtree(out, ignore_errors=True)
    try:
        started = time.monotonic()
        _deploy_script()
        c.wait("the stack-file cluster healthy", c.healthy, 180, 2)
        wait_until("the API through the edge", lambda: lab_http("GET", 3, API_PORT, "/health")[0] == 200, 120)
        FIGURES["./deploy.sh swarm, 3 members: to healthy (s)"] = round(time.monotonic() - started, 1)
        assert lab_http("POST", 1, API_PORT, "/prices", [{"symbol": "STCK", "day": "2024-02-01", "close": 1}])[0] == 201
        old_pw = (out / "secrets" / "app_db_password").read_text()
        assert compose.main(["--stack", STACK, "--out", str(out), "--target", "swarm", "--rotate",
                             "app_db_password"]) == 0
        with SpreadLoop([1, 2, 3], API_PORT, "/prices?symbol=STCK", max_requests=3000, max_seconds=600) as loop:
            _deploy_script()
        FIGURES["stack path rotation, 3 members: requests/failed"] = (loop.count, len(loop.failures))
        assert not loop.failures, loop.failures[:10]
        role, new_pw = (out / "secrets" / "app_credentials").read_text().splitlines()
        leader = c.leader()
        assert leader is not None and role == f"{settings.db_app_user}_b" and new_pw != old_pw
        assert _logs_in(c, leader, role, new_pw, settings.db_name)
        assert not _logs_in(c, leader, settings.db_app_user, old_pw, settings.db_name), "the old password is refused"
        assert all(c.days("STCK", k) == {"2024-02-01"} for k in MEMBERS)
        names = dk(1, "secret", "ls", "--format", "{{.Name}}", "--filter",
                   f"name={settings.prefix}_app_credentials").split()
        assert len(names) == 1, f"the replaced app secret is removed: {names}"
    finally:
        dk(1, "stack", "rm", settings.prefix, check=False)
        remove_stack_objects(settings.prefix)
        shutil.rmtree(out, ignore_errors=True)
