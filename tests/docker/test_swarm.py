"""The swarm target on a real three-node Swarm (tests/docker/swarm-lab.sh, endpoint mode dnsrr): the Pulumi
path (the program's inputs under mocks, applied with the provider's semantics) through the whole
scenario of issue 12, then `docker stack deploy` of the export. Figures are printed (pytest -s, or the
captured output of a failure) and quoted in docs/swarm.md."""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from exporters import compose
from model.settings import StackSettings
from model.swarm import DeployedApp
from ops.swarm_state import deployed_app as read_deployed_app
from tests.docker.pulumi_swarm_apply import SwarmApplied, apply, update
from tests.docker.standins import ensure_image
from tests.docker.support import sh
from tests.docker.swarm_support import (
    CUT_NODE,
    DB_NODE,
    NODES,
    SpreadLoop,
    build_app_image,
    dk,
    lab,
    lab_http,
    lab_images,
    node_sock,
    remove_stack_objects,
    running_tasks,
    swarm_settled,
    task_images,
    wait_until,
)
from tests.pulumi_mocks import Recording, committed_config, plain, run_program, settings_of

pytestmark = pytest.mark.docker

STACK = "swarm"
API_PORT, FRONTEND_PORT = 5000, 8000
FIGURES: dict[str, Any] = {}
PREFIX = "stock-analyzer:"


@pytest.fixture(scope="module")
def settings() -> StackSettings:
    return settings_of(STACK, _config())


@pytest.fixture(scope="module")
def swarm_lab(settings: StackSettings, base_images: dict[str, str]) -> Iterator[None]:
    """Three nodes, images loaded on each, the database node labelled; torn down whatever happens."""
    try:
        lab("up", str(NODES))
        ensure_image(settings.swarm.proxy_image)  # type: ignore[union-attr]
        base = settings.python_base_image
        build_app_image(settings.app_image, base, "1")
        build_app_image(f"{settings.app_image}-v2", base, "2")
        # A release that cannot start, as a packaging mistake would: its package is not on the path (the
        # working directory neither, with PYTHONSAFEPATH), so every server exits at once.
        sh("docker", "build", "-q", "-t", f"{settings.app_image}-broken", "-", timeout=300,
           input=f"FROM {settings.app_image}-v2\nENV PYTHONPATH=/nonexistent PYTHONSAFEPATH=1\n")
        lab_images([settings.postgres_image, settings.swarm.proxy_image,  # type: ignore[union-attr]
                    settings.app_image, f"{settings.app_image}-v2", f"{settings.app_image}-broken"])
        node = dk(1, "node", "ls", "--filter", f"name=node{DB_NODE}", "-q").strip()
        dk(1, "node", "update", "--label-add", f"{settings.swarm.db_node_label}=true", node)  # type: ignore[union-attr]
        yield
    finally:
        lab("down")
        print("\nswarm figures:", FIGURES)


def _live(host: str | None, service: str, target: str) -> DeployedApp | None:
    """The program's read of the running stack, from the lab's manager (as `pulumi up` would with DOCKER_HOST);
    bound at import, since the mocks patch ops.swarm_state.deployed_app with this very function."""
    return read_deployed_app(f"unix://{node_sock(1)}", service, target)


def _config(**overrides: str) -> dict[str, str]:
    """The committed swarm stack with one database server (its three-member cluster: test_swarm_cluster.py)."""
    cfg = committed_config(STACK)
    cfg.update({f"{PREFIX}postgresMembers": "1", **{f"{PREFIX}{k}": v for k, v in overrides.items()}})
    return cfg


@pytest.fixture(scope="module")
def deployed(swarm_lab: None, settings: StackSettings) -> Iterator[tuple[SwarmApplied, Recording]]:
    remove_stack_objects(settings.prefix)
    rec = run_program(STACK, _config(), deployed=_live)
    started = time.monotonic()
    applied = apply(rec, node_sock(1))
    FIGURES["pulumi up (create, s)"] = round(time.monotonic() - started, 1)
    yield applied, rec
    applied.destroy()
    remove_stack_objects(settings.prefix)


def _service(settings: StackSettings, name: str) -> str:
    return f"{settings.prefix}_{name}"


def _psql(settings: StackSettings, user: str, password: str) -> int:
    """Log in over TCP from inside the Postgres task (on the database node) as user/password."""
    cid = dk(DB_NODE, "ps", "-q", "--filter", f"name={_service(settings, 'postgres')}.").split()[0]
    result = sh("docker", "-H", f"unix://{node_sock(DB_NODE)}", "exec", "-e", f"PGPASSWORD={password}", cid,
                "psql", "-X", "-h", "127.0.0.1", "-U", user, "-d", settings.db_name, "-c", "SELECT 1", check=False)
    return result.returncode


def _runs(service: str, replicas: int) -> bool:
    return len(running_tasks(service)) == replicas


def _rows(symbol: str) -> int:
    status, _, body = lab_http("GET", 1, API_PORT, f"/prices?symbol={symbol}&limit=1000")
    assert status == 200, status
    import json

    return len(json.loads(body))


def test_docker_stack_config_keeps_every_key_the_stack_file_relies_on(tmp_path: Path) -> None:
    """The CLI's own reading of the export (`docker stack config`, no swarm needed): the keys that carry
    ordering, placement, secrets and hardening survive it, and it warns about nothing it ignores."""
    import yaml

    out = tmp_path / "out"
    compose.export(STACK, out, target="swarm")
    result = sh("docker", "stack", "config", "-c", str(out / "compose.yaml"), timeout=60)
    assert "ignor" not in result.stderr.lower() and "unsupported" not in result.stderr.lower(), result.stderr
    ours = yaml.safe_load((out / "compose.yaml").read_text())
    read = yaml.safe_load(result.stdout)
    assert set(read["services"]) == set(ours["services"])
    for name, svc in ours["services"].items():
        got = read["services"][name]
        for key in ("image", "user", "read_only", "cap_drop", "healthcheck", "stop_grace_period", "secrets"):
            assert (key in got) == (key in svc), (name, key)
        assert got["deploy"]["update_config"]["order"] == svc["deploy"]["update_config"]["order"], name
        assert got["deploy"]["endpoint_mode"] == svc["deploy"]["endpoint_mode"], name
        assert got["deploy"].get("placement") == svc["deploy"].get("placement"), name
        assert [s["target"] for s in got.get("secrets", [])] == [s["target"] for s in svc.get("secrets", [])], name
    assert {k: v["name"] for k, v in read["secrets"].items()} == {k: v["name"] for k, v in ours["secrets"].items()}


def test_every_service_converges_and_the_api_answers_from_several_tasks(
        deployed: tuple[SwarmApplied, Recording], settings: StackSettings) -> None:
    sw = settings.swarm
    assert sw is not None
    for name, replicas in (("postgres", 1), ("db-provision", 1), ("db-retire", 1), ("db-backup", 1),
                           *sw.replicas.items(), ("proxy", NODES)):
        # The proxy is global: the provider cannot converge it, so `pulumi up` may return before it runs.
        service, count = _service(settings, name), replicas
        wait_until(f"{name}: {replicas} running", functools.partial(_runs, service, count),
                   60 if name == "proxy" else 1)
    (pg,) = running_tasks(_service(settings, "postgres"))
    assert pg["Node"] == f"node{DB_NODE}", "the database runs on the labelled node"
    with SpreadLoop(list(range(1, NODES + 1)), API_PORT, "/health", max_requests=60, max_seconds=30) as loop:
        wait_until("60 requests", lambda: loop.count >= 60, 40, 0.2)
    print(loop.summary())
    assert not loop.failures
    answered = loop.answered_by(settings.prefix, "api")
    assert len(answered) >= 2, answered
    status, headers, _ = lab_http("GET", 2, FRONTEND_PORT, "/")
    # Which task answered is in the proxy's log, never in the response (it would hand out task addresses).
    assert status == 200 and not any(h.startswith("x-served") for h in headers), headers


def test_the_proxy_hop_costs_little(deployed: tuple[SwarmApplied, Recording], settings: StackSettings) -> None:
    """Requests per second from one client on the frontend network: straight to one API task, and through
    the proxy (one more hop). Printed for docs/swarm.md; asserted only loosely (one run, shared cores)."""
    front = running_tasks(_service(settings, "frontend"))[0]
    node = int(front["Node"].removeprefix("node"))
    cid = dk(node, "ps", "-q", "--filter", f"name={front['Name']}.").split()[0]
    task_ip = dk(node, "exec", cid, "python", "-c",
                 "import socket; print(socket.gethostbyname('tasks.api'))").strip()
    bench = (Path(__file__).parent / "hop_bench.py").read_text()
    out = sh("docker", "-H", f"unix://{node_sock(node)}", "exec", "-i", cid, "python", "-", f"http://{task_ip}:5000/health",
             "http://proxy:5000/health", "300", input=bench, timeout=180).stdout.strip()
    rates = dict(kv.split("=") for kv in out.split())
    FIGURES["req/s direct to a task vs through the proxy"] = (rates["direct"], rates["proxy"])
    print("proxy hop:", out)
    assert float(rates["proxy"]) > 0.2 * float(rates["direct"])


def test_rows_go_in_through_the_proxy(deployed: tuple[SwarmApplied, Recording]) -> None:
    rows = [{"symbol": "SWRM", "day": f"2024-01-{d:02d}", "close": 100 + d} for d in range(1, 29)]
    status, _, body = lab_http("POST", 2, API_PORT, "/prices", rows)
    assert status == 201, body
    assert _rows("SWRM") == 28


def test_rolling_update_to_a_new_build_fails_no_request(
        deployed: tuple[SwarmApplied, Recording], settings: StackSettings) -> None:
    applied, _ = deployed
    after = run_program(STACK, _config(appImageTag=f"{STACK}-v2"), deployed=_live)
    with SpreadLoop([1, 2, 3], API_PORT, "/prices?symbol=SWRM") as loop:
        started = time.monotonic()
        changed = update(applied, after)
        FIGURES["rolling update (s)"] = round(time.monotonic() - started, 1)
    print("rolling update:", changed, loop.summary())
    FIGURES["rolling update requests/failed"] = (loop.count, len(loop.failures))
    assert loop.count > 100
    assert not loop.failures, loop.failures[:10]
    for app in ("api", "frontend", "admin"):
        assert task_images(_service(settings, app)) == {f"{settings.app_image}-v2"}, app
    deployed_rec = after
    deployed[1].resources[:] = deployed_rec.resources


def test_app_role_rotation_fails_no_request_and_retires_the_old_password(
        deployed: tuple[SwarmApplied, Recording], settings: StackSettings) -> None:
    applied, rec = deployed
    old_pw = plain(rec.named("credentials-app-db-password").state["result"])
    after = run_program(STACK, _config(appImageTag=f"{STACK}-v2", appDbPasswordVersion="2"), deployed=_live)
    new_pw = plain(after.named("credentials-app-db-password").state["result"])
    assert new_pw != old_pw
    slot_a, slot_b = settings.db_app_user, f"{settings.db_app_user}_b"
    assert _psql(settings, slot_a, old_pw) == 0, "control: the current role logs in before the rotation"
    with SpreadLoop([1, 2, 3], API_PORT, "/prices?symbol=SWRM") as loop:
        started = time.monotonic()
        changed = update(applied, after)
        FIGURES["app role rotation (s)"] = round(time.monotonic() - started, 1)
    print("rotation:", changed, loop.summary())
    FIGURES["rotation requests/failed"] = (loop.count, len(loop.failures))
    assert not loop.failures, loop.failures[:10]
    assert _psql(settings, slot_b, new_pw) == 0, "the app's new role logs in"
    assert _psql(settings, slot_a, old_pw) != 0, "the old password is refused"
    assert _rows("SWRM") == 28
    # Only the new secret is left: the old one was deleted once nothing used it.
    names = dk(1, "secret", "ls", "--format", "{{.Name}}", "--filter",
               f"name={settings.prefix}_app_credentials").split()
    assert len(names) == 1, names
    live = read_deployed_app(f"unix://{node_sock(1)}", _service(settings, "api"), "app_credentials")
    assert live is not None and live.role == slot_b, live
    again = run_program(STACK, _config(appImageTag=f"{STACK}-v2", appDbPasswordVersion="2"), deployed=_live)
    assert plain(again.named("files-app-credentials").inputs) == plain(after.named("files-app-credentials").inputs)
    rec.resources[:] = after.resources


def test_a_release_that_cannot_start_is_rolled_back_and_fails_no_request(
        deployed: tuple[SwarmApplied, Recording], settings: StackSettings) -> None:
    """Fault injection: `pulumi up` to a build whose servers exit. The first new API task never turns
    healthy, Swarm rolls the service back, the update fails with the provider's message, and the old
    tasks (started first, kept until a new one is healthy) answer throughout."""
    applied, _ = deployed
    api = _service(settings, "api")
    bad = run_program(STACK, _config(appImageTag=f"{STACK}-broken", appDbPasswordVersion="2"),
                      deployed=_live)
    with SpreadLoop([1, 2, 3], API_PORT, "/prices?symbol=SWRM") as loop:
        started = time.monotonic()
        with pytest.raises(AssertionError, match=r"service rollback completed|service update paused") as err:
            update(applied, bad)
        FIGURES["failed release: update failed after (s)"] = round(time.monotonic() - started, 1)
    print("failed release:", str(err.value).splitlines()[0], loop.summary())
    FIGURES["failed release requests/failed"] = (loop.count, len(loop.failures))
    assert not loop.failures, loop.failures[:10]
    wait_until("api back on the previous build", lambda: task_images(api) == {f"{settings.app_image}-v2"}, 120)
    assert len(running_tasks(api)) == 3
    frontend = _service(settings, "frontend")
    assert task_images(frontend) == {f"{settings.app_image}-v2"}, "the update stopped at the first failure"


def test_a_failed_node_loses_its_api_tasks_to_the_others(
        deployed: tuple[SwarmApplied, Recording], settings: StackSettings) -> None:
    api = _service(settings, "api")

    def on_cut_node() -> list[dict[str, Any]]:
        return [t for t in running_tasks(api) if t["Node"] == f"node{CUT_NODE}"]

    # Precondition: the node to cut runs an API task (the scheduler spreads, but a rollback may not have).
    for _ in range(3):
        if on_cut_node():
            break
        dk(1, "service", "update", "--force", "--detach=false", api, timeout=300)
    on_cut = on_cut_node()
    assert on_cut, f"no api task on node{CUT_NODE} to lose"
    survivors = [k for k in range(1, NODES + 1) if k != CUT_NODE]
    with SpreadLoop(survivors, API_PORT, "/prices?symbol=SWRM") as loop:
        time.sleep(2)
        lab("cut", str(CUT_NODE))
        try:
            def moved() -> bool:
                tasks = running_tasks(api)
                return len(tasks) == 3 and all(t["Node"] != f"node{CUT_NODE}" for t in tasks)
            recovery = wait_until(f"api tasks off node{CUT_NODE}", moved, 90, 1)
            time.sleep(3)
        finally:
            lab("heal", str(CUT_NODE))
    FIGURES["node cut: api tasks moved (s)"] = round(recovery, 1)
    FIGURES["node cut: requests/failed"] = (loop.count, len(loop.failures))
    print(f"node{CUT_NODE} cut with {len(on_cut)} api task(s): moved in {recovery:.1f} s;", loop.summary())
    assert recovery <= 90
    # Requests go to the surviving nodes' proxies; the proxies drop the cut node's tasks on their own checks.
    assert len(loop.failures) <= 5, loop.failures
    wait_until("every node Ready and every manager reachable again", swarm_settled, 120, 2)


def test_the_database_keeps_its_rows_across_an_update_and_a_node_failure(
        deployed: tuple[SwarmApplied, Recording], settings: StackSettings) -> None:
    pg = _service(settings, "postgres")
    (before,) = running_tasks(pg)
    dk(1, "service", "update", "--force", "--detach", pg, timeout=60)
    wait_until("a new Postgres task", lambda: [t["ID"] for t in running_tasks(pg)] not in ([], [before["ID"]]), 120)
    wait_until("the API healthy again", lambda: lab_http("GET", 1, API_PORT, "/prices?symbol=SWRM")[0] == 200, 90)
    assert _rows("SWRM") == 28
    # Power loss on the database node: every container there killed at once; Swarm restarts the tasks.
    ids = dk(DB_NODE, "ps", "-q").split()
    dk(DB_NODE, "kill", *ids)
    down = wait_until("the API back after the kill",
                      lambda: lab_http("GET", 1, API_PORT, "/prices?symbol=SWRM")[0] == 200, 120)
    FIGURES["database node killed: API back (s)"] = round(down, 1)
    assert _rows("SWRM") == 28
