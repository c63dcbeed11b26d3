"""The synchronous WAL receiver and the SFTP off-host repository on the real engine (docs/recovery.md): a stack
with pitrSyncReceiver (pg_receivewal on its own volume; every commit waits for its flush) whose off-host
repository is a directory on a second machine over SSH (tests/docker/offhost.sh's sshd in a network
namespace), under a bounded write loop whose acknowledged rows are logged. What a user would count: commits
that wait while the receiver is away, acknowledged writes lost with the data volume (the goal: none), a
failed restore that must put the receiver's WAL back, and the host lost (the SFTP copy alone)."""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from exporters import compose
from model.settings import VOL_BACKUPS, VOL_PITR_REPO, VOL_PITR_WALSTREAM
from model.stack_yaml import settings_from_file
from tests.docker.compose_support import Stack
from tests.docker.conftest import ca_bundle
from tests.docker.pitr_support import Pitr, Writes, destroy_data_volume, fingerprint, offhost, safety_copies
from tests.docker.standins import ensure_image
from tests.docker.support import http, one_error_line, sh, wait_for, wait_healthy

pytestmark = pytest.mark.docker
ROOT = Path(__file__).resolve().parents[2]
STACK = "pitrsync"
ARCHIVE_TIMEOUT_S = 10
RESULTS: dict[str, object] = {}


def _project(tmp: Path, fingerprint_hex: str) -> Path:
    for d in ("app", "pitr"):
        (tmp / d).symlink_to(ROOT / d)
    shutil.copy(ROOT / "Pulumi.yaml", tmp / "Pulumi.yaml")
    # The test machine's sshd takes root, chrooted to its sftp/ and the SFTP subsystem alone (offhost.sh).
    config = {"environment": "dev", "pitr": True, "pitrArchiveTimeoutSeconds": ARCHIVE_TIMEOUT_S,
              "pitrSyncReceiver": True, "pitrOffhost": "sftp", "pitrSftpHost": "10.231.50.2",
              "pitrSftpUser": "root", "pitrSftpPath": "/repo", "pitrSftpHostFingerprint": fingerprint_hex}
    (tmp / f"Pulumi.{STACK}.yaml").write_text(yaml.safe_dump({"config": {f"stock-analyzer:{k}": v
                                                                          for k, v in config.items()}}))
    return tmp


@pytest.fixture(scope="module")
def pitr(docker_cli: str, base_images: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pitr]:
    ensure_image("postgres:17.6-trixie")
    offhost("down")
    facts = dict(re.findall(r"(\w+)=(\S+)", offhost("up")))
    project = _project(tmp_path_factory.mktemp("pitrsync-project"), facts["sftp_fingerprint"])
    s = settings_from_file(STACK, project)
    out = project / "out"
    try:
        (out / "secrets").mkdir(parents=True, mode=0o700)
        shutil.copy(facts["sftp_key"], out / "secrets" / "pitr_sftp_key")
        (out / "secrets" / "pitr_sftp_key").chmod(0o444)
        compose.export(STACK, out, project_dir=project, ca_bundle=ca_bundle())
        doc = yaml.safe_load((out / "compose.yaml").read_text())  # db-pitr reads the state every 2 s
        assert s.pitr_runner is not None
        doc["services"][s.pitr_runner.service]["environment"].update({"PITR_TICK_S": "2", "PITR_RETRY_S": "5"})
        (out / "compose.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
        for volume in s.volumes.values():
            sh("docker", "volume", "rm", "-f", volume, check=False)
        st = Stack(out, s)
        st.up()
        p = Pitr(st, s, project, STACK)
        wait_for("the first full base backups, local and over SFTP",
                 lambda: p.status("backup-repo1").get("result") == "ok"
                 and p.status("backup-repo2").get("result") == "ok", timeout_s=180, interval_s=1)
        yield p
    finally:
        if not os.environ.get("PITR_KEEP"):
            sh("docker", "compose", "-f", str(out / "compose.yaml"), "down", "--volumes", "--timeout", "20",
               check=False, timeout=180)
            for v in sh("docker", "volume", "ls", "-q", "--filter", f"label=stock-analyzer.stack={STACK}",
                        check=False).stdout.split():
                sh("docker", "volume", "rm", "-f", v, check=False)
            offhost("down")
        if RESULTS:
            print("\n*** PITR sync/SFTP figures: " + ", ".join(f"{k}={v}" for k, v in RESULTS.items()) + " ***",
                  file=sys.stderr)


def _receiver(pitr: Pitr) -> str:
    assert pitr.s.wal_receiver is not None
    return pitr.s.wal_receiver.container_name


def _stream_files(pitr: Pitr) -> list[str]:
    out = sh("docker", "exec", _receiver(pitr), "ls", "-A", "/var/lib/pg-walstream").stdout
    return sorted(out.split())


def test_commits_wait_while_the_receiver_is_away(pitr: Pitr, capsys: pytest.CaptureFixture[str]) -> None:
    wait_healthy([_receiver(pitr)], timeout_s=60)
    assert pitr.psql("SELECT sync_state FROM pg_stat_replication WHERE application_name = 'walreceiver'") == "sync"
    assert http("POST", pitr.st.url("api", "/prices"), {"symbol": "WAIT", "day": "2001-01-01", "close": "1"})[0] == 201
    sh("docker", "stop", "-t", "5", _receiver(pitr))
    stopped = time.monotonic()
    code, _ = http("POST", pitr.st.url("api", "/prices"), {"symbol": "WAIT", "day": "2001-01-02", "close": "1"},
                   timeout_s=3)
    assert code != 201, "a commit was acknowledged without the receiver"
    wait_for("the status to show the receiver away", lambda: pitr.status("archive").get("receiver") == "none",
             timeout_s=120, interval_s=1)
    _, out, _ = pitr.ops(capsys, "doctor")
    assert any(line.startswith("fail") and "WAL receiver" in line for line in out.splitlines()), out
    sh("docker", "start", _receiver(pitr))
    wait_healthy([_receiver(pitr)], timeout_s=60)
    waited = time.monotonic() - stopped
    # The commit that waited completes once the receiver has it; new ones are acknowledged again.
    wait_for("the waiting commit", lambda: "2001-01-02" in pitr.days("WAIT"), timeout_s=30, interval_s=0.5)
    assert http("POST", pitr.st.url("api", "/prices"), {"symbol": "WAIT", "day": "2001-01-03", "close": "1"})[0] == 201
    RESULTS["receiver_away_s"] = round(waited, 1)


def test_a_failed_restore_puts_the_receivers_wal_back(pitr: Pitr, capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    assert http("POST", pitr.st.url("api", "/prices"), {"symbol": "UNDO", "day": "2001-02-01", "close": "1"})[0] == 201
    before, stream, copies = fingerprint(pitr), _stream_files(pitr), safety_copies()
    monkeypatch.setenv("OPS_FAIL_AFTER", "5")  # right after the step that collects the receiver's WAL
    code, _, err = pitr.ops(capsys, "restore", "--to-latest", "--yes")
    monkeypatch.delenv("OPS_FAIL_AFTER")
    assert code == 1 and "restore failed" in one_error_line(err), err
    assert "collected:" in err, "the injected failure came after the collect step"
    wait_healthy([pitr.s.postgres.container_name, _receiver(pitr)], timeout_s=60)
    assert fingerprint(pitr) == before and safety_copies() == copies
    now = _stream_files(pitr)
    assert not [f for f in now if f.startswith("superseded-")], now
    assert set(stream) - {f for f in stream if f.endswith(".partial")} <= set(now)
    wait_for("the API writing again", lambda: http("POST", pitr.st.url("api", "/prices"), {
        "symbol": "UNDO", "day": "2001-02-02", "close": "1"})[0] == 201, timeout_s=60, interval_s=0.5)


def test_the_data_volume_destroyed_under_writes_loses_no_acknowledged_write(
        pitr: Pitr, capsys: pytest.CaptureFixture[str]) -> None:
    with Writes(pitr.st, "SYNC") as w:
        w.wait_acked(300)  # no wait for archiving: what the archive lacks, the receiver has
        archived = float(pitr.psql("SELECT extract(epoch FROM last_archived_time) FROM pg_stat_archiver"))
        killed = destroy_data_volume(pitr, deploy=True)  # as the runbook: deploy (a new empty cluster), restore
    acked = {d for d, _, ack in w.acked if ack < killed}
    # Acknowledged after the last segment reached the repositories: only the receiver had them.
    only_streamed = {d for d, _, ack in w.acked if archived < ack < killed}
    # The receiver holds the lost cluster's WAL and refuses the new one: nothing is acknowledged into it.
    code, _ = http("POST", pitr.st.url("api", "/prices"), {"symbol": "SYNC", "day": "2011-01-01", "close": "1"},
                   timeout_s=3)
    assert code != 201
    assert "holds WAL of cluster" in sh("docker", "logs", _receiver(pitr)).stderr
    started = time.monotonic()
    code, _, err = pitr.ops(capsys, "restore", "--to-latest", "--yes")
    rto = time.monotonic() - started
    assert code == 0, err
    assert "collected:" in err
    pitr.st.compose("up", "-d")
    wait_healthy(pitr.st.services, timeout_s=180)
    lost = acked - pitr.days("SYNC")
    RESULTS.update({"sync_volume_lost_acked": len(acked), "sync_volume_lost_only_streamed": len(only_streamed),
                    "sync_volume_lost_lost": len(lost), "sync_volume_lost_restore_s": round(rto, 1)})
    assert not lost, f"{len(lost)} of {len(acked)} acknowledged writes lost"
    assert only_streamed, "every write was archived before the kill: the receiver was not put to the test"
    # The new timeline streams into a fresh directory; commits are acknowledged again.
    wait_healthy([_receiver(pitr)], timeout_s=60)
    assert http("POST", pitr.st.url("api", "/prices"), {"symbol": "SYNC", "day": "2010-01-01", "close": "1"})[0] == 201
    assert any(f.startswith("superseded-") for f in _stream_files(pitr))


def test_the_host_lost_restore_from_the_sftp_copy_alone(pitr: Pitr, capsys: pytest.CaptureFixture[str]) -> None:
    wait_for("a base backup on the new timeline over SFTP",
             lambda: pitr.ops(capsys, "basebackup", "--type", "full")[0] == 0, timeout_s=120, interval_s=5)
    with Writes(pitr.st, "SFTP") as w:
        w.wait_acked(200)
        time.sleep(ARCHIVE_TIMEOUT_S + 3)  # what is archived by now is off-host too
        w.wait_acked(len(w.acked) + 20)
        killed = destroy_data_volume(pitr, also=(VOL_PITR_REPO, VOL_BACKUPS, VOL_PITR_WALSTREAM))
    acked = {d: ack for d, _, ack in w.acked if ack < killed}
    started = time.monotonic()
    code, _, err = pitr.ops(capsys, "restore", "--to-latest", "--repo", "2", "--yes")
    rto = time.monotonic() - started
    assert code == 0, err
    pitr.st.compose("up", "-d")
    wait_healthy(pitr.st.services, timeout_s=180)
    lost = {d: ack for d, ack in acked.items() if d not in pitr.days("SFTP")}
    window = killed - min(lost.values()) if lost else 0.0
    RESULTS.update({"sftp_host_lost_acked": len(acked), "sftp_host_lost_lost": len(lost),
                    "sftp_host_lost_window_s": round(window, 1), "sftp_host_lost_restore_s": round(rto, 1)})
    assert window <= ARCHIVE_TIMEOUT_S + 5, f"{len(lost)} acknowledged writes lost, the oldest {window:.1f} s old"
    assert pitr.days("SYNC"), "rows restored earlier are gone"
