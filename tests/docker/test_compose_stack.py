"""The committed dev stack, exported as compose, on a real Docker engine (loopback only)."""

from __future__ import annotations

import base64
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from components import compose
from components.settings import StackSettings
from tests.docker.conftest import ca_bundle
from tests.docker.support import (
    RequestLoop,
    health,
    http,
    inspect,
    postgres_dsn,
    remove_containers,
    sh,
    wait_for,
    wait_healthy,
)

pytestmark = pytest.mark.docker
WRONG_PASSWORD = "wrong-password"  # pragma: allowlist secret (deliberately wrong)
ROWS = [{"symbol": "ACME", "day": f"2024-01-{d:02d}", "close": f"{100 + d}.25"} for d in range(1, 11)]


class Stack:
    def __init__(self, out: Path, s: StackSettings) -> None:
        self.out, self.s = out, s
        self.file = str(out / "compose.yaml")
        self.names = {c.service: c.container_name for c in s.containers}
        self.services = [c.container_name for c in s.containers if c.healthcheck]

    def compose(self, *args: str, timeout: float = 600) -> str:
        return sh("docker", "compose", "-f", self.file, *args, timeout=timeout).stdout

    def url(self, service: str, path: str) -> str:
        port = self.s.app(service).ports[0]
        return f"http://{port.host_ip}:{port.host_port}{path}"

    def secret(self, name: str) -> str:
        return (self.out / "secrets" / name).read_text()


def open_credentials(stack: Stack) -> list[str]:
    """The app's current (user, password), as the provisioning job wrote them for the app."""
    out = sh("docker", "exec", stack.names["api"], "cat", "/run/app-credentials/db").stdout
    return out.splitlines()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, base_images: dict[str, str],
          dev_settings: StackSettings) -> Iterator[Stack]:
    out = tmp_path_factory.mktemp("compose-dev")
    assert compose.export("dev", out, ca_bundle=ca_bundle()) == ["postgres_password", "app_db_password",
                                                                "admin_password"]
    st = Stack(out, dev_settings)
    remove_containers(dev_settings.prefix + "-")
    for volume in dev_settings.volumes.values():
        sh("docker", "volume", "rm", "-f", volume, check=False)
    st.compose("build")
    yield st
    sh("docker", "compose", "-f", st.file, "down", "--volumes", "--timeout", "20", check=False, timeout=180)


@pytest.fixture(scope="module")
def up(stack: Stack) -> float:
    """Seconds from `up` (which itself waits for the database and the provisioning job) to all healthy."""
    start = time.monotonic()
    stack.compose("up", "-d")
    wait_healthy(stack.services, timeout_s=180)
    return time.monotonic() - start


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
