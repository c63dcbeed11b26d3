"""Backups and restores that can never make things worse, proven by the faults of real life on the real
engine: archives cut at many points or with a flipped byte, pg_restore killed mid-stream, full disks, two
runs at once, a scheduled loop whose database goes away, a table lock that never ends. After each, the
database is compared whole (rows and checksums, indexes, constraints, sequences, the app's privileges) and
the API must still write. The data and backups volumes are size-bounded tmpfs volumes, so a full disk is
a real one without filling the host's. Loopback only."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

import psycopg
import pytest

from model.settings import BACKUP_DIR, VOL_BACKUPS, VOL_DATA, StackSettings
from ops.engine import Engine
from tests.docker.compose_support import Stack, exported_stack, open_credentials
from tests.docker.support import http, one_error_line, postgres_dsn, run_ops, sh, wait_for

pytestmark = pytest.mark.docker
ROOT = Path(__file__).resolve().parents[2]
ROWS = 1340  # as in the report: the compose export of dev with 1,340 rows
BULK_ROWS = 300_000  # a table large enough that pg_restore runs for seconds
DATA_TMPFS_MB, BACKUPS_TMPFS_MB = 1536, 512
SCRIPT = "/backup/backup.sh"
KEEPER = "stock-analyzer-dev-test-volume-keeper"

# Everything a restore could break, read as the superuser: one line per fact.
FINGERPRINT_SQL = """
SELECT 'table ' || c.relname || ' ' || (xpath('/row/n/text()',
       query_to_xml(format('SELECT count(*) || '':'' || coalesce(md5(string_agg(md5(t::text), '''' ORDER BY
       md5(t::text))), ''-'') AS n FROM %%I.%%I t', n.nspname, c.relname), false, true, '')))[1]::text
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND c.relkind = 'r'
UNION ALL SELECT 'index ' || indexname || ' ' || indexdef FROM pg_indexes WHERE schemaname = 'public'
UNION ALL SELECT 'constraint ' || conname || ' ' || pg_get_constraintdef(oid) FROM pg_constraint
 WHERE connamespace = 'public'::regnamespace
UNION ALL SELECT 'sequence ' || sequencename || ' ' || coalesce(last_value::text, 'unused') FROM pg_sequences
 WHERE schemaname = 'public'
UNION ALL SELECT 'grant ' || table_name || ' ' || string_agg(privilege_type, ',' ORDER BY privilege_type)
  FROM information_schema.role_table_grants WHERE grantee = %(group)s GROUP BY table_name
UNION ALL SELECT 'execute ' || p.oid::regprocedure::text || ' ' || has_function_privilege(%(group)s, p.oid, 'EXECUTE')
  FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace
ORDER BY 1
"""


def _tmpfs_volume(name: str, size_mb: int, owner: str) -> None:
    """A tmpfs mount takes no ownership from the image (a disk volume copies PGDATA's): set it as the
    official image's data directory has it."""
    sh("docker", "volume", "rm", "-f", name, check=False)
    sh("docker", "volume", "create", "--driver", "local", "--opt", "type=tmpfs", "--opt", "device=tmpfs",
       "--opt", f"o=size={size_mb}m,{owner}", name)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, base_images: dict[str, str],
          dev_settings: StackSettings) -> Iterator[Stack]:
    for st in exported_stack(tmp_path_factory.mktemp("compose-safety"), dev_settings):
        try:
            _bounded_volumes(dev_settings)
            st.up()
            _seed(st)
            yield st
        finally:
            st.compose("down", "--timeout", "20")
            sh("docker", "rm", "-f", KEEPER, check=False)
        return


def _bounded_volumes(s: StackSettings) -> None:
    sh("docker", "rm", "-f", KEEPER, check=False)
    _tmpfs_volume(s.volumes[VOL_DATA], DATA_TMPFS_MB, "uid=999,gid=999,mode=0700")
    _tmpfs_volume(s.volumes[VOL_BACKUPS], BACKUPS_TMPFS_MB, "mode=0755")
    # The engine mounts a tmpfs volume while a container uses it and drops its contents when the last one
    # stops: a keeper holds both for the module, so stopping Postgres loses nothing.
    sh("docker", "run", "-d", "--name", KEEPER, "--network", "none", "-v", f"{s.volumes[VOL_DATA]}:/d",
       "-v", f"{s.volumes[VOL_BACKUPS]}:/b", "--entrypoint", "sleep", s.postgres_image, "infinity")


def _seed(st: Stack) -> None:
    with _su(st) as conn:
        conn.execute("INSERT INTO stock_prices (symbol, day, close) SELECT 'S' || (i %% 20), "
                     "date '2000-01-01' + i / 20, i / 10.0 FROM generate_series(1, %s) i", (ROWS,))
        conn.execute("CREATE INDEX stock_prices_close_idx ON stock_prices (close)")
        conn.execute("CREATE VIEW latest AS SELECT symbol, max(day) AS day FROM stock_prices GROUP BY symbol")
        # As the provisioning job's next run would grant it (provision/privileges.sql): the model a restore keeps.
        conn.execute(f"GRANT SELECT, INSERT, UPDATE ON latest TO {st.s.db_app_user}_rw")
        # Reviewed and closed to the app: runs with the superuser's rights.
        conn.execute("CREATE FUNCTION su_only() RETURNS int LANGUAGE sql SECURITY DEFINER AS 'SELECT 1'")
        conn.execute("REVOKE EXECUTE ON FUNCTION su_only() FROM PUBLIC")


def _su(stack: Stack) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(postgres_dsn(stack.s), user=stack.s.db_superuser,
                           password=stack.secret("postgres_password"), autocommit=True)


def fingerprint(stack: Stack) -> list[str]:
    with _su(stack) as conn:
        group = f"{stack.s.db_app_user}_rw"
        return [str(r[0]) for r in conn.execute(FINGERPRINT_SQL, {"group": group}).fetchall()]


_write_days = iter(range(100_000))


def _api_writes(stack: Stack, tag: str) -> None:
    day = (date(2100, 1, 1) + timedelta(days=next(_write_days))).isoformat()
    status, body = http("POST", stack.url("api", "/prices"), {"symbol": tag, "day": day, "close": "1"})
    assert status == 201, (status, body)




def _exec(stack: Stack, *args: str, env: dict[str, str] | None = None, check: bool = False,
          timeout: float = 300) -> subprocess.CompletedProcess[str]:
    flags = [x for k, v in (env or {}).items() for x in ("-e", f"{k}={v}")]
    return sh("docker", "exec", *flags, stack.s.backup.container_name, *args, check=check, timeout=timeout)


def _restore_in_container(stack: Stack, backup_id: str, **env: str) -> subprocess.CompletedProcess[str]:
    """backup.sh restore as `ops restore` runs it: the superuser handed to this one exec."""
    return _exec(stack, "sh", SCRIPT, "restore", backup_id, env={
        "PGUSER": stack.s.db_superuser, "PGPASSWORD": stack.secret("postgres_password"), **env})


def _read_backup(stack: Stack, backup_id: str) -> bytes:
    return subprocess.run(["docker", "exec", stack.s.backup.container_name, "cat", f"{BACKUP_DIR}/{backup_id}.dump"],
                          capture_output=True, check=True, timeout=60).stdout


def _plant(stack: Stack, backup_id: str, data: bytes, meta: str | None) -> None:
    """A backup file brought back from elsewhere: as the backup uid, 0600, with or without its record."""
    files = {f"{backup_id}.dump": data, **({f"{backup_id}.meta": meta.encode()} if meta is not None else {})}
    for name, content in files.items():
        subprocess.run(["docker", "exec", "-i", stack.s.backup.container_name, "sh", "-c",
                        f"cat > {BACKUP_DIR}/{name}"], input=content, check=True, timeout=60)


def _meta(stack: Stack, backup_id: str) -> str:
    return _exec(stack, "cat", f"{BACKUP_DIR}/{backup_id}.meta", check=True).stdout


def _take(capsys: pytest.CaptureFixture[str]) -> str:
    code, out, err = run_ops(capsys, "backup", "--stack", "dev")
    assert code == 0, err
    return out.strip()


def _cut_points(size: int) -> list[int]:
    fractions = [0.01, 0.1, 0.2, 0.3, 0.4, 0.5, 0.55, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99]
    blocks = [b for b in (512, 4096, 8192, 16384, 32768) if b < size]
    return sorted({*(int(size * f) for f in fractions), *blocks, size - 1})


_planted = iter(range(1, 10_000))


def _planted_id() -> str:
    """IDs in the past, so that the real backups stay the newest."""
    n = next(_planted)
    return f"stock_analysis-2001{n // 10000 + 1:02d}01T{n // 3600 % 24:02d}{n // 60 % 60:02d}{n % 60:02d}Z"


def test_a_cut_or_damaged_backup_is_refused_before_anything_changes(
        stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    """The report: a torn copy restored as `restored`, leaving 0 rows. Every cut and a flipped byte are now
    refused by the checks (size, SHA-256, full read-back), with the database untouched."""
    good = _take(capsys)
    data, meta = _read_backup(stack, good), _meta(stack, good)
    before = fingerprint(stack)
    results: dict[str, str] = {}
    cases: list[tuple[str, bytes, str | None]] = []
    for cut in _cut_points(len(data)):
        cases.append((f"cut at {cut} with its record", data[:cut], meta))
        cases.append((f"cut at {cut}, no record", data[:cut], None))
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x01
    cases.append(("one byte flipped, with its record", bytes(flipped), meta))
    for what, content, record in cases:
        backup_id = _planted_id()
        _plant(stack, backup_id, content, record.replace(good, backup_id) if record else None)
        code, out, err = run_ops(capsys, "restore", "--stack", "dev", backup_id)
        assert code == 1, (what, out, err)
        results[what] = one_error_line(err)
        assert "unchanged" in results[what] and "not used" in results[what], (what, results[what])
    print(f"{len(cases)} damaged archives of {len(data)} bytes, every one refused; e.g.\n"
          + "\n".join(f"  {k}: {v}" for k, v in list(results.items())[:3]))
    assert fingerprint(stack) == before
    _api_writes(stack, "AFTER")


def test_the_transaction_alone_rolls_back_every_cut(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    """With the checks skipped (fault injection), the damaged archive reaches the restore's transaction:
    pg_restore fails part-way, COMMIT is never sent, the server rolls back. Cut at many points, block
    boundaries included."""
    good = _take(capsys)
    data = _read_backup(stack, good)
    before = fingerprint(stack)
    cuts = _cut_points(len(data))
    for cut in cuts:
        backup_id = _planted_id()
        _plant(stack, backup_id, data[:cut], None)
        result = _restore_in_container(stack, backup_id, BACKUP_FAULT_SKIP_CHECKS="1")
        assert result.returncode == 1, (cut, result.stdout, result.stderr)
        assert "rolled back: the database is unchanged" in result.stderr, result.stderr
        # It failed for the cut, not for anything else (a login, say).
        assert "pg_restore: error:" in result.stderr, result.stderr
        assert fingerprint(stack) == before, f"cut at {cut} of {len(data)} changed the database"
    print(f"{len(cuts)} cuts of a {len(data)}-byte archive, each rolled back")
    # The control: the same path with the whole archive restores, and changes what it should.
    with _su(stack) as conn:
        conn.execute("INSERT INTO stock_prices (symbol, day, close) VALUES ('CTRL', '1999-01-01', 1)")
    whole = _planted_id()
    _plant(stack, whole, data, None)
    result = _restore_in_container(stack, whole, BACKUP_FAULT_SKIP_CHECKS="1")
    assert result.returncode == 0, result.stderr
    assert fingerprint(stack) == before
    _api_writes(stack, "TXN")


def _pg_restore_pid(stack: Stack) -> int | None:
    """The host pid of the restore's pg_restore (the one writing SQL, not the read-back)."""
    out = sh("docker", "top", stack.s.backup.container_name, "-eo", "pid,args", check=False).stdout
    for line in out.splitlines()[1:]:
        pid, _, args = line.strip().partition(" ")
        if "pg_restore" in args and "--clean" in args:
            return int(pid)
    return None


def _copying_bulk(stack: Stack) -> bool:
    out = sh("docker", "exec", stack.names["postgres"], "psql", "-X", "-A", "-t", "-U", stack.s.db_superuser, "-d",
             stack.s.db_name, "-c", "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'COPY public.bulk %'",
             check=False).stdout.strip()
    return out not in ("", "0")


def test_pg_restore_killed_mid_stream_changes_nothing(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    with _su(stack) as conn:
        conn.execute("CREATE TABLE bulk AS SELECT i, repeat(md5(i::text), 8) AS pad FROM generate_series(1, %s) i",
                     (BULK_ROWS,))
        conn.execute("GRANT SELECT, INSERT, UPDATE ON bulk TO stock_app_rw")
    big = _take(capsys)
    with _su(stack) as conn:
        conn.execute("DELETE FROM bulk WHERE i > 1000")  # so a finished restore would show
    before = fingerprint(stack)
    result: dict[str, object] = {}

    def run() -> None:
        result["code"], _, result["err"] = run_ops(capsys, "restore", "--stack", "dev", big)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        # Inside the stream: the server is loading the big table.
        wait_for("the restore's COPY into bulk", lambda: _copying_bulk(stack), timeout_s=120, interval_s=0.05)
        pid = _pg_restore_pid(stack)
        assert pid, sh("docker", "top", stack.s.backup.container_name, "-eo", "pid,args").stdout
        os.kill(pid, 9)
    finally:
        thread.join(timeout=120)
    print(f"pg_restore killed mid-stream: {str(result.get('err', '')).strip().splitlines()[-1:]}")
    assert not thread.is_alive()
    assert result["code"] == 1, result
    assert "rolled back" in one_error_line(str(result["err"])), result
    assert fingerprint(stack) == before
    _api_writes(stack, "KILL")


def _fill(stack: Stack, volume: str, leave_kb: int) -> None:
    """A filler file that leaves `leave_kb` free on the volume's (tmpfs) filesystem."""
    sh("docker", "run", "--rm", "--network", "none", "-v", f"{stack.s.volumes[volume]}:/v", "--entrypoint", "sh",
       stack.s.postgres_image, "-c",
       f"free=$(df -k /v | awk 'NR==2 {{print $4}}'); fallocate -l $(( (free - {leave_kb}) * 1024 )) /v/filler")


def _unfill(stack: Stack, volume: str) -> None:
    sh("docker", "run", "--rm", "--network", "none", "-v", f"{stack.s.volumes[volume]}:/v", "--entrypoint", "rm",
       stack.s.postgres_image, "-f", "/v/filler")


def test_a_full_data_disk_during_restore_changes_nothing(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    with _su(stack) as conn:
        if conn.execute("SELECT count(*) FROM bulk").fetchone() != (BULK_ROWS,):
            conn.execute("TRUNCATE bulk")
            conn.execute("INSERT INTO bulk SELECT i, repeat(md5(i::text), 8) FROM generate_series(1, %s) i",
                         (BULK_ROWS,))
    big = _take(capsys)
    with _su(stack) as conn:
        conn.execute("DELETE FROM bulk WHERE i > 1000")
        conn.execute("CHECKPOINT")
    before = fingerprint(stack)
    _fill(stack, VOL_DATA, leave_kb=20 * 1024)  # the restore needs far more than 20 MB
    try:
        code, _, err = run_ops(capsys, "restore", "--stack", "dev", big)
        print(f"restore on a full data disk: {err.strip().splitlines()[-1]}")
        assert code == 1 and "unchanged" in one_error_line(err)
    finally:
        _unfill(stack, VOL_DATA)
    # If the server hit the full disk in its WAL, it restarted and recovered: wait for it, bounded.
    wait_for("the API writing again", lambda: http("GET", stack.url("api", "/health"))[0] == 200, timeout_s=90)
    assert fingerprint(stack) == before
    _api_writes(stack, "DISK")


def test_a_full_backups_disk_keeps_every_backup_and_says_why(
        stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    first = _take(capsys)
    _, listing_before, _ = run_ops(capsys, "backups", "--stack", "dev")
    before = fingerprint(stack)
    _fill(stack, VOL_BACKUPS, leave_kb=8)
    try:
        code, _, err = run_ops(capsys, "backup", "--stack", "dev")
        assert code == 1 and "No space left on device" in one_error_line(err), err
        # A restore cannot take its safety copy: it refuses before touching anything.
        code, _, err = run_ops(capsys, "restore", "--stack", "dev", first)
        assert code == 1 and "safety copy" in one_error_line(err) and "unchanged" in one_error_line(err), err
        files = _exec(stack, "ls", "-A", BACKUP_DIR, check=True).stdout.split()
        assert not [f for f in files if f.startswith(".partial") or f.startswith(".status.tmp")], files
        code, listing, _ = run_ops(capsys, "backups", "--stack", "dev")
        assert code == 0 and "(failed)" in listing and "No space left on device" in listing, listing
        ids = [line.split()[0] for line in listing.splitlines() if line.startswith(stack.s.db_name)]
        assert ids == [line.split()[0] for line in listing_before.splitlines() if line.startswith(stack.s.db_name)]
        assert _exec(stack, "sh", SCRIPT, "health").returncode == 1
    finally:
        _unfill(stack, VOL_BACKUPS)
    assert fingerprint(stack) == before
    assert _exec(stack, "sh", SCRIPT, "verify", first).returncode == 0
    _take(capsys)
    assert _exec(stack, "sh", SCRIPT, "health").returncode == 0


def test_two_backups_at_once_both_succeed_and_read_back(stack: Stack) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "ops", "backup", "--stack", "dev"]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
             for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    ids = [out.strip() for out, _ in results]
    assert len(set(ids)) == 2, ids
    for backup_id in ids:
        assert _exec(stack, "sh", SCRIPT, "verify", backup_id).returncode == 0, backup_id


def test_a_dump_that_waits_on_a_lock_gives_up_after_its_bound(stack: Stack) -> None:
    with _su(stack) as conn, conn.transaction():
        conn.execute("LOCK TABLE stock_prices IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        result = _exec(stack, "sh", SCRIPT, "now", env={"BACKUP_DUMP_LOCK_WAIT_S": "2"}, timeout=120)
        took = time.monotonic() - started
    assert result.returncode == 1 and "LOCK TABLE" in result.stderr and "timeout" in result.stderr, result.stderr
    assert took < 30, took
    files = _exec(stack, "ls", "-A", BACKUP_DIR, check=True).stdout.split()
    assert not [f for f in files if f.startswith(".partial")], files
    assert _exec(stack, "sh", SCRIPT, "health").returncode == 1


def test_the_scheduled_loop_survives_a_failed_attempt_and_retries(stack: Stack) -> None:
    """A second loop in the backup container (the container's own command, with a short back-off): the
    database is stopped, the attempt fails, the loop keeps running and succeeds once the database is back."""
    log, pid = "/tmp/loop.log", "/tmp/loop.pid"  # the container's private tmpfs
    sh("docker", "stop", "-t", "30", stack.names["postgres"])
    try:
        _exec(stack, "sh", "-c", f"rm -f {log}", check=True)
        sh("docker", "exec", "-d", "-e", "BACKUP_RETRY_S=2", stack.s.backup.container_name, "sh", "-c",
           f"echo $$ > {pid}; exec sh {SCRIPT} loop 2>{log}")
        wait_for("a failed attempt", lambda: "next attempt in" in _exec(stack, "cat", log).stdout, timeout_s=60)
        time.sleep(3)
        assert "next attempt in 4s" in _exec(stack, "cat", log).stdout or \
            "next attempt in 8s" in _exec(stack, "cat", log).stdout, _exec(stack, "cat", log).stdout
        assert _exec(stack, "sh", SCRIPT, "health").returncode == 1
    finally:
        sh("docker", "start", stack.names["postgres"])
    wait_for("the loop's good backup", lambda: _exec(stack, "sh", SCRIPT, "health").returncode == 0, timeout_s=90)
    assert "(scheduled)" in _exec(stack, "cat", log).stdout
    _exec(stack, "sh", "-c", f"kill $(cat {pid})", check=True)
    assert sh("docker", "inspect", "-f", "{{.RestartCount}} {{.State.Status}}",
              stack.s.backup.container_name).stdout.split() == ["0", "running"]
    wait_for("api healthy", lambda: http("GET", stack.url("api", "/health"))[0] == 200, timeout_s=60)


def test_a_restore_keeps_the_privilege_model_and_names_its_safety_copy(
        stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    user, password = open_credentials(stack)
    app = psycopg.connect(postgres_dsn(stack.s), user=user, password=password, autocommit=True)
    with app, pytest.raises(psycopg.errors.InsufficientPrivilege):
        app.execute("SELECT su_only()")
    backup_id = _take(capsys)
    with _su(stack) as conn:
        conn.execute("INSERT INTO stock_prices (symbol, day, close) VALUES ('GONE', '1999-01-01', 1)")
    changed = fingerprint(stack)
    code, out, err = run_ops(capsys, "restore", "--stack", "dev", backup_id)
    assert code == 0, err
    assert f"with backup {backup_id}" in err and "rows in" in err
    safety = out.split("are backup ", 1)[1].split(";", 1)[0]
    assert f"restore --stack dev {safety} --yes" in out
    with psycopg.connect(postgres_dsn(stack.s), user=user, password=password, autocommit=True) as app:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app.execute("SELECT su_only()")
        assert app.execute("SELECT count(*) FROM stock_prices WHERE symbol = 'GONE'").fetchone() == (0,)
        assert app.execute("SELECT count(*) >= 20 FROM latest").fetchone() == (True,)
    _api_writes(stack, "PRIV")
    # The safety copy is listed as such and brings the replaced contents back.
    code, listing, _ = run_ops(capsys, "backups", "--stack", "dev")
    assert any(line.startswith(safety) and "pre-restore" in line for line in listing.splitlines()), listing
    assert run_ops(capsys, "restore", "--stack", "dev", safety)[0] == 0
    assert fingerprint(stack) == changed


def test_the_app_roles_reach_their_database_only(stack: Stack) -> None:
    user, password = open_credentials(stack)
    for db in ("postgres", "template1"):
        dsn = postgres_dsn(stack.s).replace(f"dbname={stack.s.db_name}", f"dbname={db}")
        with pytest.raises(psycopg.OperationalError, match="permission denied"):
            psycopg.connect(dsn, user=user, password=password).close()


def _protected_project(tmp: Path) -> Path:
    (tmp / "Pulumi.yaml").write_text((ROOT / "Pulumi.yaml").read_text())
    (tmp / "Pulumi.dev.yaml").write_text((ROOT / "Pulumi.dev.yaml").read_text()
                                         + "  stock-analyzer:protectData: true\n")
    return tmp


def test_a_protected_stack_asks_before_a_restore(stack: Stack, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    project = _protected_project(tmp_path)
    backup_id = _take(capsys)
    before = fingerprint(stack)
    code, _, err = run_ops(capsys, "restore", "--stack", "dev", backup_id, "--project", str(project))
    line = one_error_line(err)
    assert code == 1 and "--yes" in line and backup_id in line and "rows in" in line and "taken 20" in line, line
    # On a terminal: the question names the backup's time and the rows; a wrong answer changes nothing.
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "ops", "restore", "--stack", "dev", backup_id,
                             "--project", str(project)], stdin=follower, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    os.close(follower)
    os.write(leader, b"prod\n")
    _, err = proc.communicate(timeout=120)
    os.close(leader)
    assert proc.returncode == 1 and "Type the stack name" in err and "not confirmed" in err, err
    assert fingerprint(stack) == before
    code, _, err = run_ops(capsys, "restore", "--stack", "dev", backup_id, "--project", str(project), "--yes")
    assert code == 0, err


def test_the_safety_copy_never_prunes_the_backup_being_restored(
        stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    """An old backup that the tiers would drop at the next prune: the restore's own safety copy must not."""
    good = _take(capsys)
    old = _planted_id()
    _plant(stack, old, _read_backup(stack, good), _meta(stack, good).replace(good, old))
    tight = {"BACKUP_KEEP": "1", "BACKUP_KEEP_DAILY": "1", "BACKUP_KEEP_WEEKLY": "0", "BACKUP_KEEP_MONTHLY": "0"}
    result = _restore_in_container(stack, old, **tight)
    assert result.returncode == 0, result.stderr
    assert _exec(stack, "sh", SCRIPT, "verify", old).returncode == 0


def test_an_operation_holds_the_stack_against_others_and_deploys(
        stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    """While an operation holds the stack (here: as `ops restore` takes it), a second operation, a backup and
    ./deploy.sh each refuse in one line naming the holder; afterwards they work."""
    backup_id = _take(capsys)
    before = sh("docker", "ps", "-aq", "--filter", f"name=^{stack.s.prefix}-").stdout.split()
    engine = Engine()
    with engine.stack_lock(stack.s.ops_lock, stack.s.stack, "restore", stack.s.postgres_image):
        for argv in (("restore", "--stack", "dev", backup_id, "--yes"), ("backup", "--stack", "dev"),
                     ("upgrade", "--stack", "dev", "--to-image", "postgres:17.6-trixie"),
                     ("adopt", "--stack", "dev", "--from-volume", "x", "--password-file", "/nonexistent")):
            code, _, err = run_ops(capsys, *argv)
            line = one_error_line(err)
            assert code == 1 and "held by `ops restore`" in line and f"docker rm {stack.s.ops_lock}" in line, line
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PULUMI_", "VIRTUAL_ENV"))}
        env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if not (Path(p) / "pulumi").exists())
        deploy = subprocess.run(["./deploy.sh", "dev"], cwd=ROOT, env=env, capture_output=True, text=True,
                                timeout=300, check=False)
        assert deploy.returncode == 1 and "is held by `python -m ops restore`" in deploy.stderr, deploy
        lock = sh("docker", "ps", "-aq", "--filter", f"name=^{stack.s.ops_lock}$").stdout.split()
        assert set(sh("docker", "ps", "-aq", "--filter", f"name=^{stack.s.prefix}-").stdout.split()) == {
            *before, *lock}, "deploy.sh created or removed containers"
    assert engine.lock_holder(stack.s.ops_lock) is None
    assert run_ops(capsys, "backup", "--stack", "dev")[0] == 0


def test_scheduled_backups_log_in_as_a_role_that_only_reads(stack: Stack) -> None:
    role, password = stack.s.db_backup_user, stack.secret("backup_db_password")
    env = dict(stack.s.backup.env)
    assert env["PGUSER"] == role and "POSTGRES_PASSWORD_FILE" not in env
    mounted = _exec(stack, "ls", "/run/secrets", check=True).stdout.split()
    assert mounted == ["backup_db_password"], mounted
    with psycopg.connect(postgres_dsn(stack.s), user=role, password=password, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) > 0 FROM stock_prices").fetchone() == (True,)
        for statement in ("INSERT INTO stock_prices (symbol, day, close) VALUES ('NO', '1990-01-01', 1)",
                          "DELETE FROM stock_prices", "CREATE TABLE x (i int)", "DROP TABLE stock_prices"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
    dsn = postgres_dsn(stack.s).replace(f"dbname={stack.s.db_name}", "dbname=postgres")
    with pytest.raises(psycopg.OperationalError, match="permission denied"):
        psycopg.connect(dsn, user=role, password=password).close()
