"""Point-in-time recovery on the real engine (docs/recovery.md): a stack with WAL archiving into a local
repository and an off-host S3 store on a second machine (tests/docker/offhost.sh, a network namespace), under
a bounded write loop whose acknowledged rows are logged. Disasters: a bad write at a known time, the data
volume destroyed under writes, the host lost (only the off-host copy left), and a damaged backup that a
scheduled drill must catch. Every count is what a user would see: acknowledged writes lost, rows wrong."""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from exporters import compose
from model.settings import PITR_STATUS_DIR, VOL_BACKUPS, VOL_PITR_REPO
from model.stack_yaml import settings_from_file
from tests.docker.compose_support import Stack
from tests.docker.conftest import ca_bundle
from tests.docker.pitr_support import (
    BUCKET,
    OFFHOST_ENDPOINT,
    S3_KEY,
    S3_SECRET,
    Pitr,
    Writes,
    destroy_data_volume,
    fingerprint,
    make_bucket,
    offhost,
    safety_copies,
    utc,
)
from tests.docker.standins import ensure_image
from tests.docker.support import http, one_error_line, sh, wait_for, wait_healthy

pytestmark = pytest.mark.docker
ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
STACK = "pitrtest"
ARCHIVE_TIMEOUT_S = 10
RESULTS: dict[str, object] = {}


def _project(tmp: Path) -> Path:
    for d in ("app", "pitr"):
        (tmp / d).symlink_to(ROOT / d)
    shutil.copy(ROOT / "Pulumi.yaml", tmp / "Pulumi.yaml")
    config = {"environment": "dev", "pitr": True, "pitrArchiveTimeoutSeconds": ARCHIVE_TIMEOUT_S,
              "pitrOffhost": "s3", "pitrS3Endpoint": OFFHOST_ENDPOINT, "pitrS3Bucket": BUCKET,
              "pitrS3VerifyTls": False}
    (tmp / f"Pulumi.{STACK}.yaml").write_text(yaml.safe_dump({"config": {f"stock-analyzer:{k}": v
                                                                          for k, v in config.items()}}))
    return tmp


@pytest.fixture(scope="module")
def pitr(docker_cli: str, base_images: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pitr]:
    ensure_image("postgres:17.6-trixie")
    offhost("down")
    offhost("up")
    project = _project(tmp_path_factory.mktemp("pitr-project"))
    s = settings_from_file(STACK, project)
    out = project / "out"
    try:
        make_bucket()
        (out / "secrets").mkdir(parents=True, mode=0o700)
        for name, value in (("pitr_s3_key", S3_KEY), ("pitr_s3_key_secret", S3_SECRET)):
            (out / "secrets" / name).write_text(value)
            (out / "secrets" / name).chmod(0o444)
        compose.export(STACK, out, project_dir=project, ca_bundle=ca_bundle())
        # The schedule, shortened so that the test sees it run (the defaults are hours and days).
        doc = yaml.safe_load((out / "compose.yaml").read_text())
        assert s.pitr_runner is not None
        doc["services"][s.pitr_runner.service]["environment"].update(
            {"PITR_DRILL_INTERVAL_S": "3600", "PITR_TICK_S": "2", "PITR_RETRY_S": "5"})
        (out / "compose.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
        for volume in s.volumes.values():
            sh("docker", "volume", "rm", "-f", volume, check=False)
        st = Stack(out, s)
        st.up()
        p = Pitr(st, s, project, STACK)
        wait_for("the first full base backups in both repositories",
                 lambda: p.status("backup-repo1").get("result") == "ok"
                 and p.status("backup-repo2").get("result") == "ok", timeout_s=180, interval_s=1)
        yield p
    finally:
        if not os.environ.get("PITR_KEEP"):  # debugging a failure: PITR_KEEP=1 leaves everything as it is
            sh("docker", "compose", "-f", str(out / "compose.yaml"), "down", "--volumes", "--timeout", "20",
               check=False, timeout=180)
            for v in sh("docker", "volume", "ls", "-q", "--filter", f"label=stock-analyzer.stack={STACK}",
                        check=False).stdout.split():
                sh("docker", "volume", "rm", "-f", v, check=False)
            offhost("down")
        if RESULTS:
            print("\n*** PITR figures: " + ", ".join(f"{k}={v}" for k, v in RESULTS.items()) + " ***",
                  file=sys.stderr)


def test_a_drill_on_its_schedule_turns_red_on_a_damaged_backup(pitr: Pitr, capsys: pytest.CaptureFixture[str]) -> None:
    wait_for("a scheduled drill", lambda: pitr.status("drill").get("result") == "ok", timeout_s=120, interval_s=1)
    assert pitr.pitr_sh("health", check=False)[0] == 0
    label = pitr.status("backup-repo1")["label"]
    # A flipped byte in the middle of the largest file of the newest base backup of the local repository, written
    # through the volume's directory on the host.
    mount = sh("docker", "volume", "inspect", "-f", "{{.Mountpoint}}", pitr.s.volumes[VOL_PITR_REPO]).stdout.strip()
    files = [f for f in (Path(mount) / "backup" / "main" / label).rglob("*") if f.is_file()
             and f.name != "backup.manifest" and not f.name.endswith(".copy")]
    assert files, f"no files in backup {label}"
    victim = max(files, key=lambda f: f.stat().st_size)
    with open(victim, "r+b") as fh:
        fh.seek(victim.stat().st_size // 2)
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 0xFF]))
    before = int(pitr.status("drill")["time"])
    # Due again: the scheduled drill runs within a tick and fails.
    sh("docker", "exec", pitr.s.pitr_runner.container_name, "sh", "-c",  # type: ignore[union-attr]
       f"sed -i 's/^time=.*/time=1/' {PITR_STATUS_DIR}/drill")
    # A diff backup may fall due on the same tick and run first, on a loaded machine for a minute or more.
    try:
        wait_for("the scheduled drill to fail", lambda: int(pitr.status("drill").get("time", "0")) > before
                 and pitr.status("drill")["result"] == "failed", timeout_s=240, interval_s=1)
    except AssertionError as timed_out:
        logs = sh("docker", "logs", "--tail", "20", pitr.s.pitr_runner.container_name,  # type: ignore[union-attr]
                  check=False)
        drill = pitr.status("drill")
        raise AssertionError(f"{timed_out}; drill status {drill}; runner log:\n{logs.stdout}{logs.stderr}") from None
    assert pitr.pitr_sh("health", check=False)[0] == 1
    status, body = http("GET", pitr.st.url("admin", "/metrics"), headers={
        "Authorization": "Basic " + __import__("base64").b64encode(
            f"admin:{pitr.st.secret('admin_password')}".encode()).decode()})
    assert status == 200 and "stock_pitr_last_drill_success 0" in body.decode(), body
    code, out, err = pitr.ops(capsys, "backups")
    assert code == 0 and "last drill: failed" in out
    code, out, err = pitr.ops(capsys, "drill")
    assert code == 1 and "failed" in one_error_line(err)
    _, out, _ = pitr.ops(capsys, "doctor")
    assert any(line.startswith("fail") and "restore drill" in line for line in out.splitlines()), out
    # A new full backup: the drill of it passes and the status is green again.
    code, out, err = pitr.ops(capsys, "basebackup", "--type", "full")
    assert code == 0, err
    code, out, err = pitr.ops(capsys, "drill")
    assert code == 0 and "ok" in out, err
    assert pitr.pitr_sh("health", check=False)[0] == 0
    RESULTS["drill_s"] = pitr.status("drill")["seconds"]


def test_a_slot_left_by_a_receiver_turned_off_is_dropped(pitr: Pitr) -> None:
    """pitrSyncReceiver set back to false leaves the receiver's slot: inactive, it would keep all WAL."""
    pitr.psql("SELECT pg_create_physical_replication_slot('stock_walreceiver', true)")
    wait_for("db-pitr to drop it", lambda: pitr.psql(
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'stock_walreceiver'") == "0",
        timeout_s=30, interval_s=1)


def test_restore_to_the_second_before_a_bad_write(pitr: Pitr, capsys: pytest.CaptureFixture[str]) -> None:
    with Writes(pitr.st, "GOOD") as w:
        w.wait_acked(150)
        good = time.time()
        time.sleep(0.5)
        w.wait_acked(len(w.acked) + 50)
    # The bad deploy: every close of GOOD overwritten, at a known time after `good`.
    pitr.psql("UPDATE stock_prices SET close = 0 WHERE symbol = 'GOOD'")
    acked_before = {d for d, _, ack in w.acked if ack < good}
    sent_after = {d for d, sent, _ in w.acked if sent > good}
    code, out, err = pitr.ops(capsys, "restore", "--to-time", utc(good), "--yes")
    assert code == 0, err
    assert "reached: last commit replayed" in out
    days = pitr.days("GOOD")
    assert acked_before <= days, f"{len(acked_before - days)} acknowledged rows missing"
    assert not days & sent_after, f"{len(days & sent_after)} rows written after the target are back"
    assert pitr.psql("SELECT count(*) FROM stock_prices WHERE symbol = 'GOOD' AND close = 0") == "0"
    wait_healthy(pitr.st.services, timeout_s=120)
    assert http("POST", pitr.st.url("api", "/prices"), {"symbol": "AFTER", "day": "2001-01-01", "close": "2"})[0] == 201
    RESULTS["to_time_rows_kept"] = len(acked_before)


@pytest.mark.parametrize("step", range(1, 9))
def test_a_failed_restore_at_any_step_leaves_the_database_as_it_was(
        pitr: Pitr, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    code, _ = http("POST", pitr.st.url("api", "/prices"), {"symbol": "STEP", "day": f"2002-01-{step:02d}",
                                                            "close": "1"})
    assert code == 201
    before = fingerprint(pitr)
    copies = safety_copies()
    monkeypatch.setenv("OPS_FAIL_AFTER", str(step))
    code, _, err = pitr.ops(capsys, "restore", "--to-latest", "--yes")
    monkeypatch.delenv("OPS_FAIL_AFTER")
    assert code == 1 and "restore failed" in one_error_line(err), err
    wait_healthy([pitr.s.postgres.container_name], timeout_s=60)
    assert fingerprint(pitr) == before
    assert not sh("docker", "ps", "-aq", "--filter", "name=pitr-recovery").stdout.strip()
    assert safety_copies() == copies, "a failed restore that put everything back leaves no copy behind"
    wait_for("the API writing again", lambda: http("POST", pitr.st.url("api", "/prices"), {
        "symbol": "STEP", "day": f"2003-01-{step:02d}", "close": "1"})[0] == 201, timeout_s=60, interval_s=0.5)
    if step == 8:
        # None of the attempts reached the repositories: a real restore to the latest WAL has every row since.
        code, _, err = pitr.ops(capsys, "restore", "--to-latest", "--yes")
        assert code == 0, err
        assert {f"2003-01-{n:02d}" for n in range(1, 9)} <= pitr.days("STEP")


def test_a_named_base_backup_from_the_local_repository(pitr: Pitr, capsys: pytest.CaptureFixture[str]) -> None:
    """--repo 1 alone: the recovery reads WAL from the local repository (mounted into the recovery server)."""
    code, out, err = pitr.ops(capsys, "basebackup", "--type", "incr")
    assert code == 0, err
    label = next(line.split()[1] for line in out.splitlines() if line.startswith("repo1 "))
    days = pitr.days("STEP")
    http("POST", pitr.st.url("api", "/prices"), {"symbol": "STEP", "day": "2004-01-01", "close": "1"})
    code, out, err = pitr.ops(capsys, "restore", "--set", label, "--repo", "1", "--yes")
    assert code == 0, err
    assert "the end of the base backup" in out
    assert pitr.days("STEP") == days, "the row written after the base backup is not part of it"


def test_the_data_volume_destroyed_under_writes(pitr: Pitr, capsys: pytest.CaptureFixture[str]) -> None:
    with Writes(pitr.st, "LOST") as w:
        w.wait_acked(100)
        time.sleep(2 * ARCHIVE_TIMEOUT_S + 3)  # longer than archive_timeout: some of it must have been archived
        killed = destroy_data_volume(pitr, deploy=True)  # as the runbook: deploy (a new empty cluster), restore
    acked = {d: ack for d, _, ack in w.acked if ack < killed}
    started = time.monotonic()
    code, _, err = pitr.ops(capsys, "restore", "--to-latest", "--yes")
    rto = time.monotonic() - started
    assert code == 0, err
    pitr.st.compose("up", "-d")
    wait_healthy(pitr.st.services, timeout_s=180)
    lost = {d: ack for d, ack in acked.items() if d not in pitr.days("LOST")}
    window = killed - min(lost.values()) if lost else 0.0
    RESULTS.update({"volume_lost_acked": len(acked), "volume_lost_lost": len(lost),
                    "volume_lost_window_s": round(window, 1), "volume_lost_restore_s": round(rto, 1)})
    # At most what was written since the last archived segment: archive_timeout, plus the time one takes to ship.
    assert window <= ARCHIVE_TIMEOUT_S + 5, f"{len(lost)} acknowledged writes lost, the oldest {window:.1f} s old"


def test_the_host_lost_restore_from_the_offhost_copy_alone(pitr: Pitr, capsys: pytest.CaptureFixture[str]) -> None:
    with Writes(pitr.st, "HOST") as w:
        w.wait_acked(200)
        time.sleep(ARCHIVE_TIMEOUT_S + 3)  # what is archived by now is off-host too
        w.wait_acked(len(w.acked) + 20)
        killed = destroy_data_volume(pitr, also=(VOL_PITR_REPO, VOL_BACKUPS))
    acked = {d: ack for d, _, ack in w.acked if ack < killed}
    started = time.monotonic()
    code, _, err = pitr.ops(capsys, "restore", "--to-latest", "--repo", "2", "--yes")
    rto = time.monotonic() - started
    assert code == 0, err
    pitr.st.compose("up", "-d")
    wait_healthy(pitr.st.services, timeout_s=180)
    lost = {d: ack for d, ack in acked.items() if d not in pitr.days("HOST")}
    window = killed - min(lost.values()) if lost else 0.0
    RESULTS.update({"host_lost_acked": len(acked), "host_lost_lost": len(lost),
                    "host_lost_window_s": round(window, 1), "host_lost_restore_s": round(rto, 1)})
    assert window <= ARCHIVE_TIMEOUT_S + 5, f"{len(lost)} acknowledged writes lost, the oldest {window:.1f} s old"
    assert pitr.days("GOOD"), "rows restored earlier are gone"
    # The local repository comes back by itself: db-pitr recreates its stanza and backs up again.
    wait_for("a new base backup into the local repository",
             lambda: pitr.status("backup-repo1").get("result") == "ok", timeout_s=180, interval_s=1)
