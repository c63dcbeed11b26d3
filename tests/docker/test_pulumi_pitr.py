"""Point-in-time recovery on the Pulumi path, on a real engine: the inputs the program registers for the dev
stack with pitr on (the synchronous receiver, the SFTP off-host repository of tests/docker/offhost.sh, its
login key a config secret), captured under mocks and applied with the provider's semantics
(tests/docker/pulumi_apply.py: two image builds, a tmpfs volume by driver options, uploaded secrets). Then
what the compose-path tests prove at length, once here: archiving into both repositories, a drill, and a
live restore by the operations CLI that loses nothing acknowledged."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from model.settings import PITR_STATUS_DIR, StackSettings
from model.stack_yaml import settings_from_file
from tests.docker.conftest import ca_bundle
from tests.docker.pitr_support import offhost
from tests.docker.pulumi_apply import Applied, apply
from tests.docker.support import http, inspect, remove_containers, run_ops, sh, wait_for, wait_healthy
from tests.pulumi_mocks import PROJECT, ROOT, Recording, committed_config, plain, run_program

pytestmark = pytest.mark.docker
EXTRA = {"pitr": "true", "pitrArchiveTimeoutSeconds": "10", "pitrSyncReceiver": "true", "pitrOffhost": "sftp",
         "pitrSftpHost": "10.231.50.2", "pitrSftpUser": "root", "pitrSftpPath": "/repo"}


@dataclass
class PulumiPitr:
    rec: Recording
    applied: Applied
    s: StackSettings
    project: Path

    def ops(self, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
        return run_ops(capsys, *argv, "--stack", "dev", "--project", str(self.project))

    def url(self, key: str, path: str) -> str:
        return str(plain(self.rec.outputs[key])) + path

    def status(self, name: str) -> dict[str, str]:
        assert self.s.pitr_runner is not None
        out = sh("docker", "exec", self.s.pitr_runner.container_name, "cat", f"{PITR_STATUS_DIR}/{name}",
                 check=False).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def days(self, symbol: str) -> set[str]:
        assert symbol.isalnum()
        out = sh("docker", "exec", self.s.postgres.container_name, "psql", "-X", "-A", "-t", "-q", "-U", "postgres",
                 "-d", self.s.db_name, "-c", f"SELECT day FROM stock_prices WHERE symbol = '{symbol}'",  # noqa: S608
                 ).stdout
        return set(out.split())


@pytest.fixture(scope="module")
def stack(base_images: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[PulumiPitr]:
    offhost("down")
    facts = dict(re.findall(r"(\w+)=(\S+)", offhost("up")))
    extra = {**EXTRA, "pitrSftpHostFingerprint": facts["sftp_fingerprint"]}
    # The stack file the operations CLI reads: the committed dev stack's, with pitr (no secret in it).
    project = tmp_path_factory.mktemp("pulumi-pitr-project")
    shutil.copy(ROOT / "Pulumi.yaml", project / "Pulumi.yaml")
    doc = yaml.safe_load((ROOT / "Pulumi.dev.yaml").read_text())
    doc["config"].update({f"{PROJECT}:{k}": v for k, v in extra.items()})
    (project / "Pulumi.dev.yaml").write_text(yaml.safe_dump(doc))
    s = settings_from_file("dev", project)
    config = {**committed_config("dev"), **{f"{PROJECT}:{k}": v for k, v in extra.items()},
              f"{PROJECT}:pitrSftpPrivateKey": Path(facts["sftp_key"]).read_text()}
    rec = run_program("dev", config, secret_keys=("pitrSftpPrivateKey",))
    remove_containers(s.prefix + "-")
    for volume in s.volumes.values():
        sh("docker", "volume", "rm", "-f", volume, check=False)
    for network in s.networks.values():
        sh("docker", "network", "rm", network, check=False)
    try:
        applied = apply(rec, ca_bundle())
        try:
            yield PulumiPitr(rec, applied, s, project)
        finally:
            remove_containers(s.prefix + "-")  # the restore's helpers too, if one was cut short
            applied.destroy()
    finally:
        offhost("down")


def test_the_program_archives_into_both_repositories_and_waits_for_the_receiver(
        stack: PulumiPitr, capsys: pytest.CaptureFixture[str]) -> None:
    print("harness timings (s):", {k: round(v, 1) for k, v in stack.applied.timings.items()})
    assert stack.s.wal_receiver is not None and stack.s.pitr_runner is not None
    wait_healthy([c.container_name for c in stack.s.containers if c.healthcheck and c.role == "service"],
                 timeout_s=180)
    socket = sh("docker", "volume", "inspect", "-f", "{{.Options.type}}", stack.s.volumes["pg_socket"]).stdout
    assert socket.strip() == "tmpfs"
    assert "synchronous_standby_names=walreceiver" in " ".join(inspect(stack.s.postgres.container_name)["Args"])
    wait_for("the first base backups, local and over SFTP",
             lambda: stack.status("backup-repo1").get("result") == "ok"
             and stack.status("backup-repo2").get("result") == "ok", timeout_s=180, interval_s=1)
    code, out, err = stack.ops(capsys, "drill", "--repo", "2")
    assert code == 0 and "ok" in out, err
    _, out, _ = stack.ops(capsys, "doctor")
    assert any(line.startswith("ok") and "WAL receiver" in line for line in out.splitlines()), out


def test_a_live_restore_of_a_pulumi_stack(stack: PulumiPitr, capsys: pytest.CaptureFixture[str]) -> None:
    days = [f"2005-01-{n:02d}" for n in range(1, 21)]
    for day in days:
        code, _ = http("POST", stack.url("api_url", "/prices"), {"symbol": "PUL", "day": day, "close": "3"})
        assert code == 201
    code, out, err = stack.ops(capsys, "restore", "--to-latest", "--yes")
    assert code == 0, err
    assert "collected:" in err and "timeline" in out
    assert set(days) <= stack.days("PUL")
    wait_healthy([c.container_name for c in stack.s.containers if c.healthcheck and c.role == "service"],
                 timeout_s=180)
    wait_for("the API writing again", lambda: http("POST", stack.url("api_url", "/prices"), {
        "symbol": "PUL", "day": "2005-02-01", "close": "3"})[0] == 201, timeout_s=60, interval_s=0.5)
