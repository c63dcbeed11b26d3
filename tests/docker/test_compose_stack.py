"""The committed dev stack, exported as compose, on a real Docker engine (loopback only)."""

from __future__ import annotations

import base64
import json
import os
import shlex
import signal
import time
from collections.abc import Iterator

import psycopg
import pytest

from exporters import compose
from model.settings import USER_SECRETS, StackSettings
from tests.api_fuzz import fuzz
from tests.docker.compose_support import Stack, exported_stack, open_credentials
from tests.docker.support import (
    RequestLoop,
    assert_database_isolated,
    health,
    http,
    inspect,
    post_oversized_body,
    postgres_dsn,
    sh,
    wait_for,
    wait_healthy,
)

pytestmark = pytest.mark.docker
WRONG_PASSWORD = "wrong-password"  # pragma: allowlist secret (deliberately wrong)
ROWS = [{"symbol": "ACME", "day": f"2024-01-{d:02d}", "close": f"{100 + d}.25"} for d in range(1, 11)]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, base_images: dict[str, str],
          dev_settings: StackSettings) -> Iterator[Stack]:
    yield from exported_stack(tmp_path_factory.mktemp("compose-dev"), dev_settings)


@pytest.fixture(scope="module")
def up(stack: Stack) -> float:
    """Seconds from `up -d --build` (which itself waits for the database and the job) to all healthy."""
    return stack.up()


def test_all_services_healthy_and_answering(stack: Stack, up: float) -> None:
    print(f"up -> all healthy: {up:.1f} s")
    status, body = http("GET", stack.url("api", "/health"))
    assert status == 200 and json.loads(body)["database"] == "ok"
    assert http("GET", stack.url("frontend", "/"))[0] == 200
    assert http("GET", stack.url("admin", "/"))[0] == 401
    auth = base64.b64encode(f"{stack.s.admin_user}:{stack.secret('admin_password')}".encode()).decode()
    status, body = http("GET", stack.url("admin", "/"), headers={"Authorization": f"Basic {auth}"})
    assert status == 200
    assert inspect(stack.names["db-provision"])["State"]["ExitCode"] == 0


def test_frontend_cannot_reach_the_database(stack: Stack, up: float) -> None:
    assert_database_isolated(stack.names["frontend"], stack.names["api"], stack.names["postgres"])


def test_api_server_refuses_an_oversized_body(stack: Stack, up: float) -> None:
    started = time.monotonic()
    assert post_oversized_body(stack.s.app("api").ports[0].host_port).startswith(b"HTTP/1.1 413")
    assert time.monotonic() - started < 10
    assert health(stack.names["api"]) == "healthy"


def test_app_containers_stop_promptly(stack: Stack, up: float) -> None:
    """The servers run as PID 1 and handle SIGTERM: `docker stop` does not wait out its grace period."""
    started = time.monotonic()
    sh("docker", "stop", "-t", "30", stack.names["frontend"])
    took = time.monotonic() - started
    sh("docker", "start", stack.names["frontend"])
    wait_healthy([stack.names["frontend"]], timeout_s=60)
    print(f"docker stop of the frontend: {took:.1f} s")
    assert took < 5


def test_rows_survive_down_and_up(stack: Stack, up: float) -> None:
    status, body = http("POST", stack.url("api", "/prices"), ROWS)
    assert status == 201, body
    stack.compose("down", "--timeout", "30")
    assert sh("docker", "volume", "inspect", stack.s.volume_name, check=False).returncode == 0
    stack.compose("up", "-d")
    wait_healthy(stack.services, timeout_s=180)
    status, body = http("GET", stack.url("api", "/prices?symbol=ACME"))
    assert status == 200
    assert sorted(r["day"] for r in json.loads(body)) == sorted(r["day"] for r in ROWS)
    # The frontend shows them, fetched from the API over the stack network.
    assert b"ACME" in http("GET", stack.url("frontend", "/"))[1]


def test_postgres_crash_is_survived_without_app_restart(stack: Stack, up: float) -> None:
    api_before = inspect(stack.names["api"])["State"]["StartedAt"]
    pg = inspect(stack.names["postgres"])
    # kill -9 of the container's main process: a crash, which the restart policy answers
    # (`docker kill` would count as a manual stop).
    os.kill(pg["State"]["Pid"], signal.SIGKILL)
    wait_for("API 503 while Postgres is down", lambda: http("GET", stack.url("api", "/health"))[0] == 503,
             timeout_s=20, interval_s=0.05)
    wait_for("Postgres restarted", lambda: inspect(stack.names["postgres"])["RestartCount"] >= 1, timeout_s=60)
    wait_for("API 200 again", lambda: http("GET", stack.url("api", "/health"))[0] == 200, timeout_s=90)
    assert inspect(stack.names["api"])["State"]["StartedAt"] == api_before
    assert inspect(stack.names["api"])["RestartCount"] == 0
    status, body = http("GET", stack.url("api", "/prices?symbol=ACME"))
    assert status == 200 and len(json.loads(body)) == len(ROWS)
    wait_healthy(stack.services, timeout_s=120)
    assert health(stack.names["postgres"]) == "healthy"


def test_app_role_rotation_drops_no_request(stack: Stack, up: float) -> None:
    old_password = stack.secret("app_db_password")
    api_started = inspect(stack.names["api"])["State"]["StartedAt"]
    urls = [stack.url("api", "/health"), stack.url("api", "/prices?symbol=ACME")]
    with RequestLoop(urls) as loop:
        assert compose.main(["--stack", "dev", "--out", str(stack.out), "--rotate", "app_db_password"]) == 0
        stack.compose("up", "-d")
        time.sleep(2)
    print(f"compose app-role rotation: {loop.count} requests, {len(loop.failures)} failed")
    assert loop.failures == [] and loop.count >= 50
    assert inspect(stack.names["api"])["State"]["StartedAt"] == api_started
    new_password = stack.secret("app_db_password")
    assert new_password != old_password
    dsn = postgres_dsn(stack.s)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, user=stack.s.db_app_user, password=old_password).close()
    with psycopg.connect(dsn, user=f"{stack.s.db_app_user}_b", password=new_password) as conn:
        assert conn.execute("SELECT count(*) FROM stock_prices").fetchone() == (len(ROWS),)


def test_superuser_rotation_needs_no_restart(stack: Stack, up: float) -> None:
    old_password = stack.secret("postgres_password")
    pg_started = inspect(stack.names["postgres"])["State"]["StartedAt"]
    assert compose.main(["--stack", "dev", "--out", str(stack.out), "--rotate", "postgres_password"]) == 0
    stack.compose("up", "-d")
    assert inspect(stack.names["db-provision"])["State"]["ExitCode"] == 0
    assert inspect(stack.names["postgres"])["State"]["StartedAt"] == pg_started
    dsn = postgres_dsn(stack.s)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(dsn, user=stack.s.db_superuser, password=old_password).close()
    with psycopg.connect(dsn, user=stack.s.db_superuser, password=stack.secret("postgres_password")) as conn:
        assert conn.execute("SELECT count(*) FROM stock_prices").fetchone() == (len(ROWS),)
    assert http("GET", stack.url("api", "/health"))[0] == 200


def test_wrong_password_refused_right_one_accepted(stack: Stack, up: float) -> None:
    dsn = postgres_dsn(stack.s)
    user = open_credentials(stack)[0]  # the app's active role
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(dsn, user=user, password=WRONG_PASSWORD).close()
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(dsn, user=stack.s.db_superuser, password=WRONG_PASSWORD).close()
    with psycopg.connect(dsn, user=user, password=stack.secret("app_db_password")) as conn:
        assert conn.execute("SELECT count(*) FROM stock_prices").fetchone() is not None
        # Least privilege: the app role cannot change the schema.
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE TABLE nope (id int)")


def test_app_processes_do_not_run_as_root(stack: Stack, up: float) -> None:
    for svc in ("api", "frontend", "admin"):
        status = sh("docker", "exec", stack.names[svc], "cat", "/proc/1/status").stdout
        uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
        assert set(uid_line.split()[1:]) == {"10001"}, (svc, uid_line)


def test_final_image_holds_no_compiler(stack: Stack, up: float) -> None:
    probe = ("import shutil,glob,sys; hits=[t for t in ('gcc','cc','g++','c++','make') if shutil.which(t)]"
             " + glob.glob('/usr/bin/*-gcc*') + glob.glob('/usr/lib/gcc/*'); print(hits); sys.exit(1 if hits else 0)")
    result = sh("docker", "run", "--rm", "--entrypoint", "python", stack.s.app_image, "-c", probe, check=False)
    assert result.returncode == 0, result.stdout


APPS = ("api", "frontend", "admin")


def _running(stack: Stack) -> dict[str, tuple[str, str, int]]:
    """(container id, start time, restart count) of every long-running container."""
    out = {}
    for svc in ("postgres", *APPS):
        info = inspect(stack.names[svc])
        out[svc] = (info["Id"], info["State"]["StartedAt"], info["RestartCount"])
    return out


def test_one_build_labels_every_app_container_with_the_tagged_image(stack: Stack, up: float) -> None:
    """Issue #8.6: three builds of one tag left containers labelled with other images than the tag's, and
    the next `up -d` recreated them."""
    tagged = sh("docker", "image", "inspect", "-f", "{{.Id}}", stack.s.app_image).stdout.strip()
    for svc in APPS:
        info = inspect(stack.names[svc])
        assert info["Image"] == tagged, svc
        assert info["Config"]["Labels"]["com.docker.compose.image"] == tagged, svc


@pytest.mark.parametrize("name", [s.name for s in USER_SECRETS])
def test_rotation_applied_as_the_cli_says_recreates_nothing(stack: Stack, up: float, name: str,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Issue #8.6: each `--rotate NAME`, applied with exactly the command the CLI prints: no running
    container is recreated or restarted, no request fails, and the new secret is the one that works."""
    before = _running(stack)
    old = stack.secret(name)
    urls = [stack.url("api", "/health"), stack.url("api", "/prices?symbol=ACME"), stack.url("frontend", "/")]
    capsys.readouterr()
    with RequestLoop(urls) as loop:
        assert compose.main(["--stack", "dev", "--out", str(stack.out), "--rotate", name]) == 0
        printed = capsys.readouterr().out
        command = printed.split("apply with: ", 1)[1].strip()
        assert shlex.split(command)[:2] == ["docker", "compose"], printed
        sh(*shlex.split(command), timeout=300)
        time.sleep(1)
    print(f"compose rotation of {name}: {loop.count} requests, {len(loop.failures)} failed")
    assert loop.failures == [] and loop.count >= 20
    assert _running(stack) == before, "a running container was recreated or restarted"
    assert inspect(stack.names["db-provision"])["State"]["ExitCode"] == 0
    new = stack.secret(name)
    assert new != old
    if name == "admin_password":
        def basic(pw: str) -> dict[str, str]:
            return {"Authorization": "Basic " + base64.b64encode(f"{stack.s.admin_user}:{pw}".encode()).decode()}
        assert http("GET", stack.url("admin", "/"), headers=basic(old))[0] == 401
        assert http("GET", stack.url("admin", "/"), headers=basic(new))[0] == 200
        return
    dsn = postgres_dsn(stack.s)
    if name == "backup_db_password":
        # The backup container reads its file before every run: the next backup works, nothing restarted.
        assert sh("docker", "exec", stack.s.backup.container_name, "sh", "/backup/backup.sh", "now").returncode == 0
    app_roles = [stack.s.db_app_user, f"{stack.s.db_app_user}_b"]
    old_users = {"postgres_password": [stack.s.db_superuser], "backup_db_password": [stack.s.db_backup_user]}
    for user in old_users.get(name, app_roles):
        with pytest.raises(psycopg.OperationalError, match=r"password authentication failed|not permitted to log in"):
            psycopg.connect(dsn, user=user, password=old).close()
    user = {"postgres_password": stack.s.db_superuser, "backup_db_password": stack.s.db_backup_user}.get(
        name) or open_credentials(stack)[0]
    with psycopg.connect(dsn, user=user, password=new) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_api_fuzzed_with_the_real_database(stack: Stack, up: float) -> None:
    """The OpenAPI document against the real API and Postgres: no 5xx, every response as documented.
    Last in the module: it writes rows that the row counts above do not expect."""
    started = time.monotonic()
    sent = fuzz(stack.url("api", ""), max_examples=25)
    print(f"fuzzer: {sent} requests in {time.monotonic() - started:.1f} s")
    assert sent >= 5 * 15
