"""What the point-in-time recovery tests share (tests/docker/test_pitr*.py): a stack exported with pitr on, the
off-host machine (offhost.sh), a bounded write loop whose acknowledged rows are logged, and the disasters."""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from model.settings import PITR_STATUS_DIR, VOL_DATA, StackSettings
from tests.docker.compose_support import Stack
from tests.docker.support import http, run_ops, sh, wait_for, wait_healthy

HERE = Path(__file__).resolve().parent
OFFHOST_ENDPOINT = "10.231.50.2:9443"  # tests/docker/offhost.sh
BUCKET = "stock-backups"
# The test store accepts any keys; these are its own, never a real credential.
S3_KEY, S3_SECRET = "stock-test-key", "stock-test-secret-key-0000"  # pragma: allowlist secret
OFFHOST_SFTP = "10.231.50.2:22"  # offhost.sh's sshd


def offhost(*args: str) -> str:
    return sh("bash", str(HERE / "offhost.sh"), *args, env={**os.environ, "OFFHOST_PYTHON": sys.executable},
              timeout=120).stdout


def make_bucket() -> None:
    import boto3  # type: ignore[import-untyped]
    import urllib3

    urllib3.disable_warnings()
    s3 = boto3.client("s3", endpoint_url=f"https://{OFFHOST_ENDPOINT}", aws_access_key_id=S3_KEY,
                      aws_secret_access_key=S3_SECRET, region_name="us-east-1", verify=False)
    s3.create_bucket(Bucket=BUCKET)


@dataclass
class Pitr:
    st: Stack
    s: StackSettings
    project: Path
    stack: str

    def ops(self, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
        return run_ops(capsys, *argv, "--stack", self.stack, "--project", str(self.project))

    def psql(self, sql: str) -> str:
        return sh("docker", "exec", self.s.postgres.container_name, "psql", "-X", "-A", "-t", "-q", "-U", "postgres",
                  "-d", self.s.db_name, "-c", sql, timeout=60).stdout.strip()

    def days(self, symbol: str) -> set[str]:
        assert symbol.isalnum()
        return set(self.psql(f"SELECT day FROM stock_prices WHERE symbol = '{symbol}'").split())  # noqa: S608

    def status(self, name: str) -> dict[str, str]:
        assert self.s.pitr_runner is not None
        out = sh("docker", "exec", self.s.pitr_runner.container_name, "cat", f"{PITR_STATUS_DIR}/{name}",
                 check=False).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def pitr_sh(self, *args: str, check: bool = True) -> tuple[int, str]:
        assert self.s.pitr_runner is not None
        r = sh("docker", "exec", self.s.pitr_runner.container_name, "sh", "/pitr/pitr.sh", *args, check=check,
               timeout=300)
        return r.returncode, r.stdout + r.stderr


@dataclass
class Writes:
    """A bounded write loop: one new day per request; what the API acknowledged (201), with when."""

    st: Stack
    symbol: str
    max_requests: int = 3000
    max_seconds: float = 90
    acked: list[tuple[str, float, float]] = field(default_factory=list)  # (day, sent, acknowledged)
    failed: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def _run(self) -> None:
        started = time.monotonic()
        for i in range(self.max_requests):
            if self._stop.is_set() or time.monotonic() - started > self.max_seconds:
                break
            day = (date(2000, 1, 1) + timedelta(days=i)).isoformat()
            sent = time.time()
            code, _ = http("POST", self.st.url("api", "/prices"), {"symbol": self.symbol, "day": day,
                                                                    "close": "1.5"}, timeout_s=3)
            if code == 201:
                self.acked.append((day, sent, time.time()))
            else:
                self.failed += 1
                time.sleep(0.05)
            time.sleep(0.01)

    def __enter__(self) -> Writes:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def wait_acked(self, n: int) -> None:
        wait_for(f"{n} acknowledged writes", lambda: len(self.acked) >= n, timeout_s=60, interval_s=0.1)


def _utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00")


def utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00")


def fingerprint(pitr: Pitr) -> str:
    """Every table's rows and checksum, the timeline and the cluster's identity."""
    rows = sh("docker", "exec", pitr.s.postgres.container_name, "psql", "-X", "-A", "-t", "-q", "-U", "postgres",
              "-d", pitr.s.db_name, "-f", "/pitr/checksums.sql").stdout
    ident = pitr.psql("SELECT system_identifier FROM pg_control_system()")
    timeline = pitr.psql("SELECT timeline_id FROM pg_control_checkpoint()")
    return "\n".join((rows, ident, timeline))


def safety_copies() -> set[str]:
    out = sh("docker", "volume", "ls", "-q", "--filter", "label=stock-analyzer.pitr-safety-copy-of").stdout
    return set(out.split())


def destroy_data_volume(pitr: Pitr, also: tuple[str, ...] = (), deploy: bool = False) -> float:
    """SIGKILL the server, remove it and every container that mounts the volumes, remove the volumes, and
    recreate the containers (empty volumes): created only, or with `deploy` started as the runbook's first
    step does (`up -d`: a new empty cluster initialised and provisioned). Returns when it was killed."""
    s = pitr.s
    killed = time.time()
    sh("docker", "kill", "-s", "KILL", s.postgres.container_name)
    volumes = [s.volumes[VOL_DATA], *(s.volumes[v] for v in also)]
    users = sorted({c for v in volumes for c in sh("docker", "ps", "-aq", "--filter", f"volume={v}").stdout.split()})
    sh("docker", "rm", "-f", *users)
    for v in volumes:
        sh("docker", "volume", "rm", v)
    if deploy:
        pitr.st.compose("up", "-d", timeout=300)
        wait_healthy([c.container_name for c in s.apps], timeout_s=180)
    else:
        pitr.st.compose("up", "--no-start", "--no-deps", *(c.service for c in s.containers))
    return killed
