"""The data's whole life on the real engine: adopt a legacy PostgreSQL 13 volume (the legacy compose file's
shape) into the dev stack, back up, prune, restore after losing the data volume. Loopback only."""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from model.settings import VOL_BACKUPS, VOL_DATA, StackSettings
from tests.docker.compose_support import Stack, exported_stack, open_credentials
from tests.docker.standins import ensure_image
from tests.docker.support import http, one_error_line, postgres_dsn, run_ops, sh, wait_for

pytestmark = pytest.mark.docker
ROOT = Path(__file__).resolve().parents[2]
LEGACY_IMAGE = "postgres:13"
LEGACY_PROJECT = "stock-analyzer-legacy-test"
LEGACY_VOLUME = f"{LEGACY_PROJECT}_postgres_data"
LEGACY_ROWS = 20_000
FIXTURE = (Path(__file__).parent / "sql" / "legacy_fixture.sql").read_text()
CHECKSUM = ("SELECT count(*), md5(string_agg(md5(t::text), '' ORDER BY md5(t::text))) FROM {} t")


class Legacy:
    """The legacy deployment's database: the legacy compose file, its postgres service only."""

    def __init__(self, tmp: Path) -> None:
        self.password = secrets.token_hex(12)
        self.password_file = tmp / "legacy-password"
        self.password_file.write_text(self.password + "\n")  # as `echo` writes it
        self.file = tmp / "legacy-compose.yaml"
        self.file.write_text((ROOT / "bench/legacy/compose.yaml.tmpl").read_text())
        self.env = {"POSTGRES_IMAGE": LEGACY_IMAGE, "LEGACY_DB_PASSWORD": self.password}

    def compose(self, *args: str) -> None:
        import os

        sh("docker", "compose", "-p", LEGACY_PROJECT, "-f", str(self.file), *args, env={**os.environ, **self.env},
           timeout=300)

    def psql(self, sql: str, *args: str) -> str:
        return sh("docker", "exec", "-i", f"{LEGACY_PROJECT}-postgres-1", "psql", "-X", "-q", "-A", "-t",
                  "-v", "ON_ERROR_STOP=1", "-U", "postgres", "-d", "stock_analysis", *args, input=sql).stdout

    def up(self) -> None:
        self.compose("up", "-d", "--wait", "--wait-timeout", "120", "postgres")

    def stop(self) -> None:
        self.compose("stop", "-t", "30", "postgres")

    def fingerprint(self) -> str:
        """Every file's path, size, mode and mtime in the legacy volume: any write changes it."""
        return sh("docker", "run", "--rm", "--network", "none", "-v", f"{LEGACY_VOLUME}:/v:ro", "--entrypoint", "sh",
                  LEGACY_IMAGE, "-c", "cd /v && find . -printf '%p %s %m %T@\\n' | sort | md5sum").stdout


@pytest.fixture(scope="module")
def legacy(tmp_path_factory: pytest.TempPathFactory, base_images: dict[str, str]) -> Iterator[Legacy]:
    print("legacy image:", ensure_image(LEGACY_IMAGE))
    leg = Legacy(tmp_path_factory.mktemp("legacy"))
    leg.compose("down", "--volumes")
    leg.up()
    leg.psql(FIXTURE, "-v", f"rows={LEGACY_ROWS}")
    try:
        yield leg
    finally:
        leg.compose("down", "--volumes", "--timeout", "10")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, base_images: dict[str, str],
          dev_settings: StackSettings) -> Iterator[Stack]:
    yield from exported_stack(tmp_path_factory.mktemp("compose-lifecycle"), dev_settings)




def test_adopt_refuses_bad_input_and_changes_nothing(legacy: Legacy, stack: Stack,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    data = stack.s.volumes[VOL_DATA]
    base = ["adopt", "--stack", "dev", "--from-volume", LEGACY_VOLUME, "--password-file", str(legacy.password_file)]
    code, _, err = run_ops(capsys, *base)  # the legacy server is still running
    assert code == 1 and "in use by running container" in one_error_line(err)
    legacy.stop()
    before = legacy.fingerprint()
    wrong = legacy.password_file.with_name("wrong")
    wrong.write_text("not-the-password")
    cases = {
        "unknown stack 'staging'": ["adopt", "--stack", "staging", *base[3:]],
        "no such volume": [*base[:4], "no-such-volume", *base[5:]],
        "wrong password": [*base[:6], str(wrong)],
        "cannot read it": [*base[:6], str(wrong) + "-missing"],
    }
    for expected, argv in cases.items():
        code, _, err = run_ops(capsys, *argv)
        assert code == 1 and expected in one_error_line(err), (expected, err)
        assert sh("docker", "volume", "inspect", data, check=False).returncode != 0, "the target was created"
    assert sh("docker", "volume", "ls", "-q", "--filter", "name=_ops").stdout.strip() == ""
    assert legacy.fingerprint() == before


def test_adopt_copies_everything_and_the_stack_comes_up(legacy: Legacy, stack: Stack,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    before = legacy.fingerprint()
    started = time.monotonic()
    code, out, err = run_ops(capsys, "adopt", "--stack", "dev", "--from-volume", LEGACY_VOLUME,
                          "--password-file", str(legacy.password_file))
    print(f"adopt of {LEGACY_ROWS} rows: {time.monotonic() - started:.1f} s\n{out}\n{err}")
    assert code == 0, err
    assert "[7/7] record the superuser password" in err  # progress was shown
    for line in ("table public.stock_prices", "table public.watchlists", "table public.analysis_runs",
                 "table analytics.signals",
                 "sequence public.watchlists_id_seq", "view public.latest_prices",
                 "index public.stock_prices_symbol_idx", "function public.average_close(sym text)"):
        row = next(r for r in out.splitlines() if r.startswith(line))
        assert row.rstrip().endswith("yes"), row
    assert f"{LEGACY_ROWS} rows" in out
    assert legacy.fingerprint() == before, "the legacy volume was written"

    stack.up()
    status, body = http("GET", stack.url("api", "/prices?symbol=S7&limit=1000"))
    assert status == 200 and len(json.loads(body)) == LEGACY_ROWS // 50
    assert http("POST", stack.url("api", "/prices"), {"symbol": "NEW", "day": "2030-01-01", "close": "1"})[0] == 201
    # As the app's least-privileged role: the adopted tables, sequence, view and function work through the
    # group's grants; nothing is owned by the app.
    user, password = open_credentials(stack)
    with psycopg.connect(postgres_dsn(stack.s), user=user, password=password) as conn:
        assert conn.execute("INSERT INTO watchlists (name) VALUES ('after-adopt') RETURNING id").fetchone() == (21,)
        assert conn.execute("SELECT count(*) FROM latest_prices").fetchone() == (51,)  # 50 legacy symbols, NEW
        assert conn.execute("SELECT average_close('S1') > 0").fetchone() == (True,)
        owners = conn.execute("SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'").fetchall()
        assert owners == [(stack.s.db_superuser,)]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DROP TABLE analysis_runs")
    with psycopg.connect(postgres_dsn(stack.s), user=user, password=password) as conn:
        # Every application schema, not only public: the legacy app wrote analytics.signals.
        conn.execute("INSERT INTO analytics.signals (symbol, strength) VALUES ('NEW', 1)")
        assert conn.execute("SELECT count(*) FROM analytics.signals").fetchone() == (31,)
        # Runs with the superuser's rights: listed for review, not callable by the app.
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT purge_prices()")
    assert "review: SECURITY DEFINER function public.purge_prices() runs as" in out
    assert "review: view public.latest_prices is owned by superuser" in out


def test_adopt_refuses_a_stack_that_holds_data(legacy: Legacy, stack: Stack,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_ops(capsys, "adopt", "--stack", "dev", "--from-volume", LEGACY_VOLUME,
                        "--password-file", str(legacy.password_file))
    assert code == 1 and "already holds data" in one_error_line(err)


def test_rollback_is_starting_the_legacy_stack_again(legacy: Legacy, stack: Stack) -> None:
    legacy.up()
    try:
        assert legacy.psql("SELECT count(*) FROM stock_prices").strip() == str(LEGACY_ROWS)
        assert legacy.psql("SELECT count(*) FROM watchlists").strip() == "19"
    finally:
        legacy.stop()


def _backup_files(stack: Stack) -> list[str]:
    out = sh("docker", "exec", stack.s.backup.container_name, "sh", "-c",
             "ls -ln /var/lib/backups | awk 'NR>1 {print $1, $3, $9}'; stat -c '%a %u' /var/lib/backups").stdout
    return out.splitlines()


def test_backups_are_private_checked_listed_and_pruned(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_ops(capsys, "backup", "--stack", "dev")
    assert code == 0, err
    first = out.strip()
    assert first.startswith(f"{stack.s.db_name}-")
    files = _backup_files(stack)
    assert files[-1] == "711 999"
    for line in files[:-1]:
        mode, uid, name = line.split()
        assert uid == "999" and (mode == "-rw-------" or name == "status"), line
    # The admin UI shows it.
    auth = base64.b64encode(f"{stack.s.admin_user}:{stack.secret('admin_password')}".encode()).decode()
    page = http("GET", stack.url("admin", "/"), headers={"Authorization": f"Basic {auth}"})[1].decode()
    assert "Last good backup: 20" in page and f"({first})" in page
    # Retention: keep the newest backupKeep (dev: 7).
    for _ in range(stack.s.backup_keep + 1):
        time.sleep(1.05)
        assert run_ops(capsys, "backup", "--stack", "dev")[0] == 0
    code, listing, _ = run_ops(capsys, "backups", "--stack", "dev")
    ids = [line.split()[0] for line in listing.splitlines()[1:] if line.startswith(stack.s.db_name)]
    assert len(ids) == stack.s.backup_keep and first not in ids and ids == sorted(ids, reverse=True)
    assert "last good backup: 20" in listing


def test_backups_do_not_block_the_apps_writes(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    su_pw = stack.secret("postgres_password")
    with psycopg.connect(postgres_dsn(stack.s), user=stack.s.db_superuser, password=su_pw) as conn:
        conn.execute("INSERT INTO analysis_runs (started_at, params, score) SELECT now(), "
                     "jsonb_build_object('pad', repeat('x', 200), 'i', i), i FROM generate_series(1, 300000) i")
    latencies: list[float] = []
    failures: list[int] = []
    stop = threading.Event()

    def writer() -> None:
        for i in range(5000):
            if stop.is_set():
                break
            t0 = time.monotonic()
            status, _ = http("POST", stack.url("api", "/prices"),
                             {"symbol": "LIVE", "day": f"{2100 + i // 365:04d}-01-01", "close": str(i)})
            latencies.append(time.monotonic() - t0)
            if status != 201:
                failures.append(status)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        started = time.monotonic()
        assert run_ops(capsys, "backup", "--stack", "dev")[0] == 0
        took = time.monotonic() - started
    finally:
        stop.set()
        thread.join(timeout=30)
    print(f"backup under writes: {took:.1f} s, {len(latencies)} writes, max latency {max(latencies):.3f} s")
    assert failures == [] and len(latencies) >= 10 and max(latencies) < 1.0


def test_a_failed_backup_never_counts(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    """Fault injection: the database goes away mid-schedule. The attempt fails loudly, leaves no partial
    file, keeps every earlier backup, and the status (listing, admin UI, health) says so."""
    _, before, _ = run_ops(capsys, "backups", "--stack", "dev")
    sh("docker", "stop", "-t", "30", stack.names["postgres"])
    try:
        code, _, err = run_ops(capsys, "backup", "--stack", "dev")
        assert code == 1 and "pg_dump" in one_error_line(err)
        files = sh("docker", "exec", stack.s.backup.container_name, "ls", "-A", "/var/lib/backups").stdout.split()
        assert not [f for f in files if f.startswith(".partial")]
        _, after, _ = run_ops(capsys, "backups", "--stack", "dev")
        ids = [line.split()[0] for line in after.splitlines() if line.startswith(stack.s.db_name)]
        assert ids == [line.split()[0] for line in before.splitlines() if line.startswith(stack.s.db_name)]
        assert "(failed)" in after
        auth = base64.b64encode(f"{stack.s.admin_user}:{stack.secret('admin_password')}".encode()).decode()
        assert sh("docker", "exec", stack.s.backup.container_name, "sh", "/backup/backup.sh", "health",
                  check=False).returncode == 1
    finally:
        sh("docker", "start", stack.names["postgres"])
        wait_for("postgres healthy", lambda: http("GET", stack.url("api", "/health"))[0] == 200, timeout_s=60)
    page = http("GET", stack.url("admin", "/"), headers={"Authorization": f"Basic {auth}"})[1].decode()
    assert "FAILED" in page
    assert run_ops(capsys, "backup", "--stack", "dev")[0] == 0
    assert "(ok)" in run_ops(capsys, "backups", "--stack", "dev")[1]


def test_restore_drill_after_losing_the_data_volume(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    def checksums() -> dict[str, tuple[int, str]]:
        with psycopg.connect(postgres_dsn(stack.s), user=stack.s.db_superuser,
                             password=stack.secret("postgres_password")) as conn:
            return {t: conn.execute(CHECKSUM.format(t)).fetchone()  # type: ignore[misc]
                    for t in ("stock_prices", "watchlists", "analysis_runs")}

    code, out, _ = run_ops(capsys, "backup", "--stack", "dev")
    assert code == 0
    backup_id = out.strip()
    before = checksums()
    # The data volume is lost; the backups volume is not.
    stack.compose("down", "--timeout", "30")
    sh("docker", "volume", "rm", stack.s.volumes[VOL_DATA])
    stack.up()
    assert http("GET", stack.url("api", "/prices?symbol=S7"))[1] == b"[]"
    assert backup_id in run_ops(capsys, "backups", "--stack", "dev")[1]
    started = time.monotonic()
    code, _, err = run_ops(capsys, "restore", "--stack", "dev", backup_id)
    print(f"restore: {time.monotonic() - started:.1f} s")
    assert code == 0, err
    assert checksums() == before
    assert http("GET", stack.url("api", "/health"))[0] == 200
    assert len(json.loads(http("GET", stack.url("api", "/prices?symbol=S7&limit=1000"))[1])) == LEGACY_ROWS // 50
    assert http("POST", stack.url("api", "/prices"), {"symbol": "BACK", "day": "2031-01-01", "close": "2"})[0] == 201
    assert stack.s.volumes[VOL_BACKUPS] in sh("docker", "volume", "ls", "-q").stdout


def test_restore_refuses_unknown_ids(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    for bad, expected in (("stock_analysis-20000101T000000Z", "no backup"), ("../../etc/passwd", "expected"),
                          ("x; rm -rf /", "expected")):
        code, _, err = run_ops(capsys, "restore", "--stack", "dev", bad)
        assert code == 1 and expected in one_error_line(err)
    wait_for("api healthy", lambda: http("GET", stack.url("api", "/health"))[0] == 200, timeout_s=10)
