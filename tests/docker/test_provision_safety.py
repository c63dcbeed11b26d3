"""Issue #8 on a real engine (compose path): the provisioning job under failure. Each test runs the job
the way a deployment does (`docker compose run` of the same service: same image, secrets, volumes and
network), with a request loop on the API where the app must keep working."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from exporters import compose
from model.settings import POSTGRES_PORT, PROVISION_SOURCE, StackSettings
from tests.docker.compose_support import Stack, open_credentials, running_stack
from tests.docker.support import RequestLoop, postgres_dsn, sh

pytestmark = pytest.mark.docker
STEPS = re.findall(r"^\s*step_done (\w+)$", (PROVISION_SOURCE / "provision.sh").read_text(), re.MULTILINE)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, base_images: dict[str, str],
          dev_settings: StackSettings) -> Iterator[Stack]:
    yield from running_stack(tmp_path_factory.mktemp("compose-safety"), dev_settings)


def job_command(stack: Stack, *env: str, entrypoint: tuple[str, ...] = ()) -> list[str]:
    """The job once more, as `docker compose up` would run it, with extra environment."""
    args = ["docker", "compose", "-f", stack.file, "run", "--rm", "--no-deps", "--quiet-pull"]
    for e in env:
        args += ["-e", e]
    if entrypoint:
        args += ["--entrypoint", entrypoint[0]]
    return [*args, "db-provision", *entrypoint[1:]]


def run_job(stack: Stack, *env: str, entrypoint: tuple[str, ...] = ()) -> tuple[int, str]:
    out = sh(*job_command(stack, *env, entrypoint=entrypoint), check=False, timeout=300)
    return out.returncode, out.stdout + out.stderr


def superuser(stack: Stack, password: str | None = None) -> psycopg.Connection[Any]:
    return psycopg.connect(postgres_dsn(stack.s), user=stack.s.db_superuser,
                           password=password or stack.secret("postgres_password"), autocommit=True)


def role(stack: Stack, name: str) -> tuple[bool, bool] | None:
    """(can log in, superuser) of a role, None when it does not exist."""
    with superuser(stack) as conn:
        row = conn.execute("SELECT rolcanlogin, rolsuper FROM pg_roles WHERE rolname = %s", (name,)).fetchone()
    return (bool(row[0]), bool(row[1])) if row else None


def refused(stack: Stack, user: str, password: str) -> bool:
    try:
        psycopg.connect(postgres_dsn(stack.s), user=user, password=password).close()
    except psycopg.OperationalError as err:
        return bool(re.search(r"password authentication failed|not permitted to log in", str(err)))
    return False


def api_urls(stack: Stack) -> list[str]:
    return [stack.url("api", "/health"), stack.url("api", "/prices?symbol=ACME")]


def test_the_step_list_is_what_the_script_runs() -> None:
    assert STEPS[:2] == ["login", "su_known"] and STEPS[-1] == "record"
    assert len(STEPS) == len(set(STEPS)) >= 10


def test_crash_after_every_step_drops_no_request_and_converges(stack: Stack) -> None:
    """A failure right after each step boundary (the job ends as a crash would), then the normal re-run:
    no request fails, and at the end every earlier password is refused and the newest ones work."""
    s = stack.s
    app_roles = [s.db_app_user, f"{s.db_app_user}_b"]
    old_app, old_su = [stack.secret("app_db_password")], [stack.secret("postgres_password")]
    with RequestLoop(api_urls(stack), max_seconds=400) as loop:
        for step in STEPS:
            compose.rotate(stack.out, "app_db_password")
            compose.rotate(stack.out, "postgres_password")
            code, out = run_job(stack, f"PROVISION_FAIL_AFTER={step}")
            assert code == 99 and f"injected failure after step {step}" in out, (step, out[-2000:])
            stack.compose("up", "-d")
            assert sh("docker", "inspect", "-f", "{{.State.ExitCode}}", stack.names["db-provision"]
                      ).stdout.strip() == "0", sh("docker", "logs", stack.names["db-provision"], check=False).stderr
            old_app.append(stack.secret("app_db_password"))
            old_su.append(stack.secret("postgres_password"))
        time.sleep(1)
    print(f"fault injection at {len(STEPS)} step boundaries: {loop.count} requests, {len(loop.failures)} failed")
    assert loop.failures == [] and loop.count >= 100
    new_app, new_su = old_app.pop(), old_su.pop()
    for pw in old_su:
        assert refused(stack, s.db_superuser, pw)
    for pw in old_app:
        assert all(refused(stack, user, pw) for user in app_roles)
    user = open_credentials(stack)[0]
    with psycopg.connect(postgres_dsn(s), user=user, password=new_app) as conn:
        assert conn.execute("SELECT count(*) FROM stock_prices").fetchone() is not None
    with psycopg.connect(postgres_dsn(s), user=s.db_superuser, password=new_su) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    # The idle role of the pair cannot log in at all.
    (idle,) = set(app_roles) - {user}
    assert role(stack, idle) == (False, False)


def test_no_password_in_the_server_log(stack: Stack) -> None:
    """Force the job's password statement to fail (a read-only session) and search the server's log."""
    s = stack.s
    old = stack.secret("postgres_password")
    with superuser(stack) as conn:
        conn.execute(f"ALTER ROLE {s.db_superuser} SET default_transaction_read_only = on")
    try:
        # Control: a password in SQL text that fails is logged with the statement (so the search can fail).
        canary = "canary" + stack.secret("admin_password")[:12]
        with superuser(stack) as conn, pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute(f"ALTER ROLE {s.db_superuser} PASSWORD '{canary}'")
        compose.rotate(stack.out, "postgres_password")
        new = stack.secret("postgres_password")
        code, out = run_job(stack)
        assert not refused(stack, s.db_superuser, old), "the failed rotation left the server's password as it was"
        assert code != 0 and "could not set the password" in out, out[-2000:]
    finally:
        with superuser(stack, old) as conn:
            conn.execute("SET default_transaction_read_only = off")
            conn.execute(f"ALTER ROLE {s.db_superuser} RESET default_transaction_read_only")
    log = sh("docker", "logs", stack.names["postgres"]).stderr
    assert canary in log, "control: a failing statement is logged with its text"
    assert re.search(rf'ALTER USER "{s.db_superuser}" PASSWORD \'SCRAM-SHA-256\$', log), "the job's statement failed"
    assert new not in log and new not in out
    stack.compose("up", "-d")
    assert refused(stack, s.db_superuser, "x" + new) and not refused(stack, s.db_superuser, new)


def test_job_refuses_powerful_roles_at_run_time(stack: Stack) -> None:
    """A hand-edited config (bypassing validation) or a role changed by hand: the job never disables,
    re-passwords or hands the app a role with superuser rights, and never locks the superuser out."""
    s = stack.s
    with superuser(stack) as conn:
        conn.execute("CREATE ROLE evil_b SUPERUSER LOGIN")
        conn.execute("CREATE ROLE evil2_rw SUPERUSER")
    try:
        with RequestLoop(api_urls(stack)) as loop:
            code, out = run_job(stack, "APP_DB_USER=evil")
            assert code != 0 and "refusing to alter role evil_b" in out, out[-2000:]
            code, out = run_job(stack, "APP_DB_USER=evil2")
            assert code != 0 and "refusing to alter role evil2_rw" in out, out[-2000:]
            # dbSuperuser equal to a derived role: stock_app_b as superuser would be disabled as "idle".
            code, out = run_job(stack, f"APP_DB_USER={s.db_superuser}")
            assert code != 0 and "is the configured superuser" in out, out[-2000:]
        assert loop.failures == []
        assert role(stack, "evil_b") == (True, True), "the superuser-rights role was not touched"
        assert role(stack, "evil") is None and role(stack, "evil_rw") is None and role(stack, "evil2") is None
        assert role(stack, s.db_superuser) == (True, True)
    finally:
        with superuser(stack) as conn:
            conn.execute("DROP ROLE IF EXISTS evil_b")
            conn.execute("DROP ROLE IF EXISTS evil2_rw")


def test_renamed_app_role_retires_the_old_ones(stack: Stack) -> None:
    """Renaming dbAppUser moves the app to the new pair with no failed request; the old login roles can no
    longer log in, and the old group and its grants are gone. Renaming back works the same way."""
    s = stack.s
    old_user, password = open_credentials(stack)
    old_roles = [s.db_app_user, f"{s.db_app_user}_b", f"{s.db_app_user}_rw"]
    with RequestLoop(api_urls(stack)) as loop:
        code, out = run_job(stack, "APP_DB_USER=renamed_app")
        assert code == 0, out[-2000:]
        moved_user = open_credentials(stack)[0]
        for r in old_roles:
            assert role(stack, r) is None, f"{r} retired (dropped)"
        assert refused(stack, old_user, password)
        stack.compose("up", "-d")  # the committed config again: back to the original name
        time.sleep(1)
    print(f"rename and back: {loop.count} requests, {len(loop.failures)} failed")
    assert loop.failures == [] and loop.count >= 20
    assert moved_user == "renamed_app"
    for r in ("renamed_app", "renamed_app_b", "renamed_app_rw"):
        assert role(stack, r) is None
    assert refused(stack, "renamed_app", password)
    assert open_credentials(stack)[0] == s.db_app_user


def test_upgrade_from_the_previous_job_version(stack: Stack) -> None:
    """Files as the previous job version left them: the credential file 0400 and the app's (unreadable to
    the job, which runs without DAC_OVERRIDE), a copy of it in the job's record. The new job goes on from
    there: the app stays on its role, the file becomes readable to the job, the copy is removed."""
    user, password = open_credentials(stack)
    legacy_layout = ('f="$APP_CREDENTIALS_FILE"; cp "$f" "$PROVISION_STATE_DIR/app_credentials" && cp "$f" "$f.old"'
                     ' && chmod 0400 "$f.old" && chown "$APP_UID:$APP_UID" "$f.old" && mv -f "$f.old" "$f"')
    code, out = run_job(stack, entrypoint=("sh", "-c", legacy_layout))
    assert code == 0, out
    api = stack.names["api"]
    assert sh("docker", "exec", api, "stat", "-c", "%u %g %a", "/run/app-credentials/db").stdout.split() == [
        "10001", "10001", "400"]
    with RequestLoop(api_urls(stack)) as loop:
        code, out = run_job(stack)
        time.sleep(0.5)
    assert code == 0, out[-2000:]
    assert loop.failures == []
    assert open_credentials(stack) == [user, password]
    assert sh("docker", "exec", api, "stat", "-c", "%u %g %a", "/run/app-credentials/db").stdout.split() == [
        "10001", "0", "440"]
    code, out = run_job(stack, entrypoint=("sh", "-c", 'test ! -e "$PROVISION_STATE_DIR/app_credentials"'))
    assert code == 0, "the copy of the app's password is gone"


def test_the_job_waits_for_the_server_and_gives_up_in_time(stack: Stack) -> None:
    """Compose starts the job with the server; the job waits for the server's TCP probe itself. A server
    that never answers: one clear error after the bound. A server that comes up while the job waits: the
    job goes on and succeeds."""
    started = time.monotonic()
    code, out = run_job(stack, f"PGPORT={POSTGRES_PORT + 1}", "PROVISION_WAIT_S=2")
    assert code != 0 and "did not accept connections within 2s" in out, out[-2000:]
    assert time.monotonic() - started < 30
    pg = stack.names["postgres"]
    sh("docker", "stop", "-t", "30", pg)
    try:
        job = subprocess.Popen(job_command(stack, "PROVISION_WAIT_S=60"), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
        time.sleep(4)
        assert job.poll() is None, "the job waits while the server is down"
    finally:
        sh("docker", "start", pg)
    out, _ = job.communicate(timeout=120)
    assert job.returncode == 0, out[-2000:]
    assert "done; the app connects as" in out
