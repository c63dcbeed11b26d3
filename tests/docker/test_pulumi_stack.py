"""The Pulumi path on a real engine: the exact inputs the program registers for the committed dev stack
(captured under mocks) applied with the provider's semantics, then the first part of the scenario."""

from __future__ import annotations

import base64
import json
import re
import shlex
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from model.settings import StackSettings
from tests.docker.conftest import ca_bundle
from tests.docker.pulumi_apply import Applied, JobFailedError, apply, update
from tests.docker.support import (
    RequestLoop,
    assert_database_isolated,
    http,
    inspect,
    postgres_dsn,
    remove_containers,
    sh,
)
from tests.pulumi_mocks import PROJECT, Recording, committed_config, plain, run_program

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def recording() -> Recording:
    return run_program("dev")


@pytest.fixture(scope="module")
def applied(recording: Recording, base_images: dict[str, str], dev_settings: StackSettings) -> Iterator[Applied]:
    remove_containers(dev_settings.prefix + "-")
    for volume in dev_settings.volumes.values():
        sh("docker", "volume", "rm", "-f", volume, check=False)
    for network in dev_settings.networks.values():
        sh("docker", "network", "rm", network, check=False)
    result = apply(recording, ca_bundle())
    yield result
    result.destroy()


def _url(recording: Recording, key: str, path: str) -> str:
    return str(plain(recording.outputs[key])) + path


def test_every_container_came_up_healthy(applied: Applied, recording: Recording) -> None:
    print("harness timings (s):", {k: round(v, 1) for k, v in applied.timings.items()})
    for name in plain(recording.outputs["containers"]).values():
        assert inspect(name)["State"]["Health"]["Status"] == "healthy", name
    assert inspect("stock-analyzer-dev-db-provision")["State"]["ExitCode"] == 0


def test_ports_bind_the_configured_interfaces(applied: Applied, recording: Recording) -> None:
    for container in recording.containers().values():
        bindings = inspect(container.inputs["name"])["HostConfig"]["PortBindings"] or {}
        for port in container.inputs.get("ports", []):
            (bound,) = bindings[f"{int(port['internal'])}/tcp"]
            assert bound == {"HostIp": port["ip"], "HostPort": str(int(port["external"]))}


def test_secret_files_are_private_to_their_reader(applied: Applied) -> None:
    # The credential file: the app's uid owns it; group root lets the job (root without DAC_OVERRIDE) read
    # back which role the app is on.
    for container, path, owner in (("stock-analyzer-dev-api", "/run/app-credentials/db", ["10001", "0", "440"]),
                                   ("stock-analyzer-dev-admin", "/run/app-credentials/db", ["10001", "0", "440"]),
                                   ("stock-analyzer-dev-admin", "/run/secrets/admin_password",
                                    ["10001", "10001", "400"])):
        out = sh("docker", "exec", container, "stat", "-c", "%u %g %a", path)
        assert out.stdout.split() == owner, (container, path)
    # The app mounts only the credential volume, read-only: never the job's state or the superuser secret.
    # The admin UI also reads the backups' status file, read-only.
    for container in ("stock-analyzer-dev-api", "stock-analyzer-dev-admin"):
        mounts = sorted((m["Name"], m["Destination"], m["RW"]) for m in inspect(container)["Mounts"])
        assert mounts == [("stock-analyzer-dev_app_credentials", "/run/app-credentials", False),
                          *([("stock-analyzer-dev_backups", "/var/lib/backups", False)]
                            if container.endswith("admin") else [])]
        assert sh("docker", "exec", container, "test", "-e", "/run/secrets/postgres_password",
                  check=False).returncode == 1
    env = inspect("stock-analyzer-dev-api")["Config"]["Env"]
    assert not any(v in e for e in env for v in applied.passwords.values())


def test_scenario_health_frontend_admin_and_rows(applied: Applied, recording: Recording) -> None:
    status, body = http("GET", _url(recording, "api_url", "/health"))
    assert status == 200 and json.loads(body) == {"database": "ok", "status": "ok"}
    rows = [{"symbol": "PULU", "day": "2024-02-01", "close": "42.0"},
            {"symbol": "PULU", "day": "2024-02-02", "close": "43.5"}]
    assert http("POST", _url(recording, "api_url", "/prices"), rows)[0] == 201
    status, body = http("GET", _url(recording, "api_url", "/prices?symbol=PULU"))
    assert status == 200 and {r["close"] for r in json.loads(body)} == {"42.0000", "43.5000"}
    status, body = http("GET", _url(recording, "frontend_url", "/"))
    assert status == 200 and b"PULU" in body
    admin_pw = applied.passwords["credentials-admin-password"]
    auth = base64.b64encode(f"{plain(recording.outputs['admin_user'])}:{admin_pw}".encode()).decode()
    assert http("GET", _url(recording, "admin_url", "/"))[0] == 401
    status, body = http("GET", _url(recording, "admin_url", "/"), headers={"Authorization": f"Basic {auth}"})
    assert status == 200 and b"2 price rows" in body


def test_frontend_cannot_reach_the_database(applied: Applied, recording: Recording) -> None:
    names = plain(recording.outputs["containers"])
    assert_database_isolated(names["frontend"], names["api"], names["postgres"])
    networks = {n: sorted(inspect(c)["NetworkSettings"]["Networks"]) for n, c in names.items()}
    assert networks["frontend"] == ["stock-analyzer-dev_frontend"]
    assert networks["postgres"] == networks["admin"] == ["stock-analyzer-dev_backend"]
    assert networks["api"] == ["stock-analyzer-dev_backend", "stock-analyzer-dev_frontend"]


def test_scheduled_backup_ran_and_ops_lists_it(applied: Applied, recording: Recording,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """The Pulumi path has the same backup container: its first backup ran at start, `ops` sees it."""
    from ops.__main__ import main as ops

    name = plain(recording.outputs["containers"])["db-backup"]
    assert inspect(name)["State"]["Health"]["Status"] == "healthy"
    capsys.readouterr()
    assert ops(["backups", "--stack", "dev"]) == 0
    listing = capsys.readouterr().out
    assert "stock_analysis-20" in listing and "(ok)" in listing


# Rotation (issue #4), on the stack applied above: each test moves the deployment one step further.
ROTATION_ROWS = [{"symbol": "ROTA", "day": f"2024-03-{d:02d}", "close": f"{d}.5"} for d in range(1, 21)]


@pytest.fixture(scope="module")
def deployed(recording: Recording) -> dict[str, Any]:
    """The recording (and config) currently applied to the engine."""
    return {"rec": recording, "cfg": committed_config("dev")}


def _rotate(applied: Applied, deployed: dict[str, Any], key: str) -> tuple[list[str], Recording]:
    cfg = dict(deployed["cfg"])
    cfg[f"{PROJECT}:{key}"] = str(int(cfg.get(f"{PROJECT}:{key}", "1")) + 1)
    after = run_program("dev", cfg)
    replaced = update(applied, deployed["rec"], after, ca_bundle())
    deployed.update(rec=after, cfg=cfg)
    return replaced, after


def _rows(recording: Recording) -> list[dict[str, str]]:
    status, body = http("GET", _url(recording, "api_url", "/prices?symbol=ROTA"))
    assert status == 200
    rows: list[dict[str, str]] = json.loads(body)
    return rows


def test_app_role_rotation_drops_no_request(applied: Applied, deployed: dict[str, Any],
                                            dev_settings: StackSettings) -> None:
    rec = deployed["rec"]
    assert http("POST", _url(rec, "api_url", "/prices"), ROTATION_ROWS)[0] == 201
    old_password = applied.passwords["credentials-app-db-password"]
    started = {c: inspect(c)["State"]["StartedAt"] for c in ("stock-analyzer-dev-postgres", "stock-analyzer-dev-api")}
    with RequestLoop([_url(rec, "api_url", "/health"), _url(rec, "api_url", "/prices?symbol=ROTA")]) as loop:
        replaced, after = _rotate(applied, deployed, "appDbPasswordVersion")
        time.sleep(2)
    print(f"app-role rotation: {loop.count} requests, {len(loop.failures)} failed")
    assert sorted(replaced) == ["credentials-app-db-password", "database-provision"]
    assert loop.failures == [] and loop.count >= 50
    assert {c: inspect(c)["State"]["StartedAt"] for c in started} == started, "no restart of Postgres or the API"
    assert len(_rows(after)) == len(ROTATION_ROWS)
    new_password = applied.passwords["credentials-app-db-password"]
    assert new_password != old_password
    logs = sh("docker", "logs", "stock-analyzer-dev-db-provision").stdout
    assert f"moves from {dev_settings.db_app_user} to {dev_settings.db_app_user}_b" in logs
    dsn, role_a, role_b = postgres_dsn(dev_settings), dev_settings.db_app_user, f"{dev_settings.db_app_user}_b"
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, user=role_a, password=old_password).close()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, user=role_b, password=old_password).close()
    with psycopg.connect(dsn, user=role_b, password=new_password) as conn:
        assert conn.execute("SELECT count(*) FROM stock_prices WHERE symbol = 'ROTA'").fetchone() == (20,)


def test_app_role_rotates_back_to_the_first_role(applied: Applied, deployed: dict[str, Any],
                                                 dev_settings: StackSettings) -> None:
    rec = deployed["rec"]
    with RequestLoop([_url(rec, "api_url", "/prices?symbol=ROTA")]) as loop:
        _rotate(applied, deployed, "appDbPasswordVersion")
        time.sleep(1)
    print(f"second app-role rotation: {loop.count} requests, {len(loop.failures)} failed")
    assert loop.failures == []
    new_password = applied.passwords["credentials-app-db-password"]
    with psycopg.connect(postgres_dsn(dev_settings), user=dev_settings.db_app_user, password=new_password) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    with pytest.raises(psycopg.OperationalError, match=r"not permitted to log in|password authentication"):
        psycopg.connect(postgres_dsn(dev_settings), user=f"{dev_settings.db_app_user}_b", password=new_password).close()


def test_superuser_rotation(applied: Applied, deployed: dict[str, Any], dev_settings: StackSettings) -> None:
    rec = deployed["rec"]
    old_password = applied.passwords["credentials-postgres-password"]
    pg_started = inspect("stock-analyzer-dev-postgres")["State"]["StartedAt"]
    with RequestLoop([_url(rec, "api_url", "/health"), _url(rec, "api_url", "/prices?symbol=ROTA")]) as loop:
        start = time.monotonic()
        replaced, after = _rotate(applied, deployed, "postgresPasswordVersion")
        took = time.monotonic() - start
        time.sleep(1)
    print(f"superuser rotation: update {took:.1f} s; {loop.count} requests, {len(loop.failures)} failed")
    # Issue #8: the server holds only the bootstrap password, so it is neither replaced nor restarted. The
    # backup container logs in as its own role (issue #17): untouched.
    assert sorted(replaced) == ["credentials-postgres-password", "database-provision"]
    assert loop.failures == [] and loop.count >= 20
    assert inspect("stock-analyzer-dev-postgres")["State"]["StartedAt"] == pg_started
    assert len(_rows(after)) == len(ROTATION_ROWS)
    new_password = applied.passwords["credentials-postgres-password"]
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(postgres_dsn(dev_settings), user=dev_settings.db_superuser, password=old_password).close()
    with psycopg.connect(postgres_dsn(dev_settings), user=dev_settings.db_superuser, password=new_password) as conn:
        assert conn.execute("SELECT count(*) FROM stock_prices").fetchone() is not None
    assert "superuser password rotated" in sh("docker", "logs", "stock-analyzer-dev-db-provision").stdout


def test_admin_rotation(applied: Applied, deployed: dict[str, Any]) -> None:
    old_password = applied.passwords["credentials-admin-password"]
    replaced, after = _rotate(applied, deployed, "adminPasswordVersion")
    assert sorted(replaced) == ["app-admin", "credentials-admin-password"]
    user = plain(after.outputs["admin_user"])

    def basic(password: str) -> dict[str, str]:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}

    assert http("GET", _url(after, "admin_url", "/"), headers=basic(old_password))[0] == 401
    assert http("GET", _url(after, "admin_url", "/"),
                headers=basic(applied.passwords["credentials-admin-password"]))[0] == 200


def _as_superuser(applied: Applied, s: StackSettings, statement: str) -> None:
    with psycopg.connect(postgres_dsn(s), user=s.db_superuser, password=applied.passwords[
            "credentials-postgres-password"], autocommit=True) as conn:
        conn.execute(statement.encode())  # fixed test statements, no user input


def test_failed_job_recovers_with_the_printed_command(applied: Applied, deployed: dict[str, Any],
                                                      dev_settings: StackSettings) -> None:
    """Issue #8.5: a job that failed stays in the provider's state; the error names the command that re-runs
    it, and that command converges once the cause is fixed. The app keeps answering throughout."""
    group = f"{dev_settings.db_app_user}_rw"
    # The cause: the app's group role made superuser by hand. The job refuses to hand it to the app.
    _as_superuser(applied, dev_settings, f"ALTER ROLE {group} SUPERUSER")
    rec = deployed["rec"]
    cfg = dict(deployed["cfg"])
    cfg[f"{PROJECT}:appDbPasswordVersion"] = str(int(cfg.get(f"{PROJECT}:appDbPasswordVersion", "1")) + 1)
    after = run_program("dev", cfg)
    with RequestLoop([_url(rec, "api_url", "/health"), _url(rec, "api_url", "/prices?symbol=ROTA")]) as loop:
        with pytest.raises(JobFailedError) as failed:
            update(applied, rec, after, ca_bundle())
        deployed.update(rec=after, cfg=cfg)
        assert f"refusing to alter role {group}" in str(failed.value)
        # What `pulumi up` prints: the program sees the recorded exit code.
        with pytest.raises(RuntimeError, match="database provisioning exited") as err:
            run_program("dev", cfg, exit_codes={"database-provision": failed.value.code})
        command = re.search(r"run the job again with: (pulumi up .+)$", str(err.value))
        assert command, str(err.value)
        argv = shlex.split(command[1])
        assert argv[:4] == ["pulumi", "up", "--stack", "dev"] and argv[4] == "--replace"
        # The fix, then a plain second `pulumi up`: nothing changed, so the job is not run again (the wedge).
        _as_superuser(applied, dev_settings, f"ALTER ROLE {group} NOSUPERUSER")
        assert update(applied, after, after, ca_bundle()) == []
        assert applied.exit_codes["database-provision"] == failed.value.code
        # The printed command re-runs the job, which now succeeds; the program then passes.
        replaced = update(applied, after, after, ca_bundle(), replace=(argv[5],))
        assert replaced == ["database-provision"]
        assert applied.exit_codes["database-provision"] == 0
        run_program("dev", cfg, exit_codes={"database-provision": 0})
        time.sleep(1)
    print(f"failed job and recovery: {loop.count} requests, {len(loop.failures)} failed")
    assert loop.failures == [] and loop.count >= 20
    new_password = applied.passwords["credentials-app-db-password"]
    user = sh("docker", "exec", "stock-analyzer-dev-api", "sed", "-n", "1p", "/run/app-credentials/db").stdout.strip()
    with psycopg.connect(postgres_dsn(dev_settings), user=user, password=new_password) as conn:
        assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (group,)).fetchone() == (False,)
