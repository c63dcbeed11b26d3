"""Point-in-time recovery without an engine: the settings and what they render, both outputs, the operations
CLI's argument checks, the metrics and the alert rules (docs/recovery.md)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporters import compose
from model.pitr import pgbackrest_conf
from model.settings import ConfigError, load_settings
from ops.engine import OpsError
from ops.pitr import archive_now, target_of, wait_promoted
from tests.pulumi_mocks import PROJECT, ROOT, committed_config, plain, run_program

S3 = {"pitrOffhost": "s3", "pitrS3Endpoint": "objects.example.com:9443", "pitrS3Bucket": "stock-backups"}


def settings(**over: str) -> Any:
    return load_settings({"environment": "dev", "pitr": "true", **over}, "dev")


# -- settings ----------------------------------------------------------------------------------------------


def test_off_by_default_changes_nothing() -> None:
    s = load_settings({"environment": "dev"}, "dev")
    assert s.pitr is None and s.pitr_runner is None
    assert "archive_mode=on" not in " ".join(s.postgres.command)
    assert "pgbackrest" not in s.volumes and not s.volume_driver_opts


def test_archiving_on_the_server() -> None:
    s = settings(pitrArchiveTimeoutSeconds="30")
    cmd = " ".join(s.postgres.command)
    assert "-c archive_mode=on" in cmd and "-c archive_timeout=30" in cmd
    assert "archive-push %p" in cmd
    assert s.pitr.image.startswith(f"{PROJECT}-postgres-pgbackrest:")
    mounts = {m.volume: m for m in s.postgres.mounts}
    assert {"postgres_data", "pgbackrest", "pg_socket"} <= set(mounts)
    # The socket moved from the server's private tmpfs to the shared tmpfs volume.
    assert all(path != "/var/run/postgresql" for path, _ in s.postgres.tmpfs)
    assert s.volume_driver_opts["pg_socket"]["type"] == "tmpfs"


def test_the_runner_reads_the_data_never_writes_it() -> None:
    s = settings()
    r = s.pitr_runner
    mounts = {m.volume: m for m in r.mounts}
    assert mounts["postgres_data"].read_only is True
    assert not mounts["pgbackrest"].read_only
    assert r.user == "999:999" and not r.ports and not r.cap_add
    env = dict(r.env)
    assert env["PITR_DIFF_INTERVAL_S"] == str(24 * 3600) and env["PITR_DRILL_INTERVAL_S"] == str(7 * 86400)


def test_local_repository_only_carries_no_secret() -> None:
    s = settings()
    assert not [m for m in s.postgres.secrets if m.secret.name.startswith("pitr_")]
    assert [spec.name for spec in s.generated_secrets if spec.name.startswith("pitr")] == []
    conf = pgbackrest_conf(s.pitr, "/x")
    assert "repo2" not in conf and "repo1-retention-full=14" in conf


def test_offhost_repository_is_encrypted_with_a_generated_key() -> None:
    s = settings(**S3, pitrOffhostRetentionDays="40")
    conf = pgbackrest_conf(s.pitr, "/stock-analyzer")
    for line in ("repo2-type=s3", "repo2-s3-endpoint=objects.example.com", "repo2-storage-port=9443",
                 "repo2-s3-bucket=stock-backups", "repo2-cipher-type=aes-256-cbc", "repo2-retention-full=40",
                 "repo2-retention-full-type=time", "repo2-storage-verify-tls=y"):
        assert line in conf.splitlines()
    # Secrets come from files: none is a config line.
    assert "cipher-pass" not in conf and "s3-key" not in conf
    assert "pitr_cipher_key" in [spec.name for spec in s.generated_secrets]
    assert [spec.name for spec in s.supplied_secrets] == ["pitr_s3_key", "pitr_s3_key_secret"]
    assert {m.secret.name for m in s.postgres.secrets} >= {"pitr_cipher_key", "pitr_s3_key", "pitr_s3_key_secret"}
    assert all(m.owner_uid == 999 for m in s.pitr_runner.secrets)


@pytest.mark.parametrize(("key", "value"), [
    ("pitrS3Endpoint", "https://objects.example.com"), ("pitrS3Endpoint", "objects.example.com:99999"),
    ("pitrS3Endpoint", "objects.example.com/extra"), ("pitrS3Bucket", "Stock"), ("pitrS3Bucket", "ab"),
    ("pitrS3Bucket", "a..b"), ("pitrS3Region", "us east"), ("pitrOffhost", "s3x"),
    ("pitrArchiveTimeoutSeconds", "0"), ("pitrRetentionDays", "0"),
])
def test_bad_values_name_key_value_and_what_is_allowed(key: str, value: str) -> None:
    with pytest.raises(ConfigError) as err:
        settings(**{**S3, key: value})
    assert key in str(err.value) and value in str(err.value)


def test_prod_refuses_an_unverified_object_store() -> None:
    prod = {"environment": "prod", "protectData": "true", "pitr": "true",
            **{f"{k}Memory": "512Mi" for k in ("postgres", "api", "frontend", "admin")}}
    with pytest.raises(ConfigError, match="pitrS3VerifyTls"):
        load_settings({**prod, **S3, "pitrS3VerifyTls": "false"}, "prod")
    p = load_settings({**prod, **S3}, "prod").pitr
    assert p is not None and p.s3 is not None and p.s3.verify_tls is True


def test_swarm_refuses_pitr() -> None:
    with pytest.raises(ConfigError, match="pitr"):
        load_settings({"environment": "dev", "pitr": "true", "target": "swarm", "swarmEndpointMode": "dnsrr"},
                      "swarm")


# -- both outputs ------------------------------------------------------------------------------------------


def _project(tmp_path: Path, config: dict[str, str]) -> Path:
    for d in ("app", "pitr"):
        (tmp_path / d).symlink_to(ROOT / d)
    shutil.copy(ROOT / "Pulumi.yaml", tmp_path / "Pulumi.yaml")
    doc = {"config": {f"{PROJECT}:{k}": v for k, v in {"environment": "dev", "pitr": "true", **config}.items()}}
    (tmp_path / "Pulumi.t.yaml").write_text(yaml.safe_dump(doc))
    return tmp_path


def test_compose_builds_the_server_image_and_runs_db_pitr(tmp_path: Path) -> None:
    project = _project(tmp_path, {})
    compose.export("t", tmp_path / "out", project_dir=project)
    doc = yaml.safe_load((tmp_path / "out" / "compose.yaml").read_text())
    pg, runner = doc["services"]["postgres"], doc["services"]["db-pitr"]
    assert pg["build"]["args"] == {"POSTGRES_IMAGE": "postgres:17.6-trixie"}
    assert Path(pg["build"]["context"]).resolve() == (ROOT / "pitr").resolve()
    assert runner["image"] == pg["image"] and runner["pull_policy"] == "never"
    data = next(v for v in runner["volumes"] if v["source"] == "postgres_data")
    assert data.get("read_only") is True
    assert doc["volumes"]["pg_socket"]["driver_opts"]["type"] == "tmpfs"
    assert runner["depends_on"]["postgres"] == {"condition": "service_healthy"}
    # The pgBackRest config is a file the export writes beside compose.yaml.
    assert "repo1-path=/var/lib/pgbackrest" in (tmp_path / "out" / "provision" / "pgbackrest.conf").read_text()


def test_compose_with_s3_needs_the_keys_from_the_user(tmp_path: Path) -> None:
    project = _project(tmp_path, S3)
    with pytest.raises(compose.ExportError, match="pitr_s3_key"):
        compose.export("t", tmp_path / "out", project_dir=project)
    assert not (tmp_path / "out" / "compose.yaml").exists()
    for name in ("pitr_s3_key", "pitr_s3_key_secret"):
        (tmp_path / "out" / "secrets" / name).write_text("k" * 20)
    created = compose.export("t", tmp_path / "out", project_dir=project)
    assert "pitr_cipher_key" in created and len((tmp_path / "out" / "secrets" / "pitr_cipher_key").read_text()) == 64
    doc = yaml.safe_load((tmp_path / "out" / "compose.yaml").read_text())
    assert set(doc["services"]["db-pitr"]["secrets"]) == {"pitr_cipher_key", "pitr_s3_key", "pitr_s3_key_secret"}


def _pitr_config(extra: dict[str, str]) -> dict[str, str]:
    return {**committed_config("dev"), f"{PROJECT}:pitr": "true", **{f"{PROJECT}:{k}": v for k, v in extra.items()}}


def test_program_builds_the_image_and_the_server_runs_it() -> None:
    rec = run_program("dev", _pitr_config({}))
    image = rec.named("database-pitr-image")
    assert plain(image.inputs["build"])["args"] == {"POSTGRES_IMAGE": "postgres:17.6-trixie"}
    server = rec.named("database-server")
    assert plain(server.inputs["image"]) == plain(image.state["repoDigest"])
    runner = rec.named("backup-pitr")
    assert plain(runner.inputs["image"]) == plain(image.state["repoDigest"])
    socket = rec.named("database-socket")
    assert plain(socket.inputs["driverOpts"])["type"] == "tmpfs"
    # A local repository only: no cipher key to generate.
    assert "credentials-pitr-cipher-key" not in {r.name for r in rec.resources}


def test_program_with_s3_requires_the_keys_as_secrets() -> None:
    with pytest.raises(Exception, match="pitrS3AccessKey"):
        run_program("dev", _pitr_config(S3))
    keys = {f"{PROJECT}:pitrS3AccessKey": "k" * 20, f"{PROJECT}:pitrS3SecretKey": "s" * 40}
    rec = run_program("dev", {**_pitr_config(S3), **keys}, secret_keys=("pitrS3AccessKey", "pitrS3SecretKey"))
    assert [r.name for r in rec.resources if r.name == "credentials-pitr-cipher-key"]
    uploads = {u["file"] for u in plain(rec.named("database-server").inputs["uploads"])}
    assert {"/run/secrets/pitr_cipher_key", "/run/secrets/pitr_s3_key", "/etc/pgbackrest/pgbackrest.conf"} <= uploads


# -- ops ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["2026-12-01 10:32:05+00", "2026-12-01T10:32:05.123Z", "2026-12-01 10:32:05+05:30"])
def test_restore_times_with_an_offset(value: str) -> None:
    t = target_of(value, False, None, None)
    assert t.options == ("--type=time", f"--target={value}", "--target-action=promote")


@pytest.mark.parametrize("value", ["2026-12-01 10:32:05", "2026-12-01 10:32:05+00; rm", "yesterday",
                                   "2026-12-01 10:32:05+00 "])
def test_restore_times_refused_whole(value: str) -> None:
    with pytest.raises(OpsError, match="--to-time"):
        target_of(value, False, None, None)


def test_restore_needs_exactly_one_target() -> None:
    with pytest.raises(OpsError, match="one of"):
        target_of("2026-12-01 10:32:05+00", True, None, None)
    with pytest.raises(OpsError, match="one of"):
        target_of(None, False, None, None)
    assert target_of(None, False, "20261201-103000F_20261202-103000D", 2).options == (
        "--set=20261201-103000F_20261202-103000D", "--type=immediate", "--target-action=promote", "--repo=2")
    with pytest.raises(OpsError, match="--set"):
        target_of(None, False, "20261201-103000X", None)


class _Stopped:
    name, status = "pg", "exited"

    def reload(self) -> None:
        pass

    def logs(self, tail: int) -> bytes:
        return b"FATAL:  recovery ended before configured recovery target was reached\n"


def test_a_server_that_stops_during_recovery_is_a_failure_with_its_reason() -> None:
    with pytest.raises(OpsError, match="recovery target was reached"):
        wait_promoted(_Stopped(), settings(), timeout_s=5, psql=lambda *_: (0, "t"))  # type: ignore[arg-type]


def test_a_time_in_the_future_is_refused() -> None:
    t = target_of("2026-12-01 10:32:05+00", False, None, None)
    t.refuse_future(now=t.epoch + 1)  # type: ignore[operator]
    with pytest.raises(OpsError, match="future"):
        t.refuse_future(now=t.epoch - 1)  # type: ignore[operator]


def test_archive_now_waits_until_the_switched_segment_is_archived() -> None:
    answers = iter([(0, "123"), (0, "000000010000000000000005"), (0, "000000010000000000000004"),
                    (0, "000000010000000000000005")])
    archive_now(_Stopped(), settings(), timeout_s=5, psql=lambda *_: next(answers))  # type: ignore[arg-type]


def test_archive_now_refuses_when_archiving_is_stuck() -> None:
    answers = iter([(0, "123"), (0, "000000010000000000000005"), *[(0, "000000010000000000000004")] * 100])
    with pytest.raises(OpsError, match="could not archive 000000010000000000000005"):
        archive_now(_Stopped(), settings(), timeout_s=1, psql=lambda *_: next(answers))  # type: ignore[arg-type]


def test_doctor_reads_the_pitr_status() -> None:
    from ops.doctor import FAIL, OK, WARN, pitr_findings

    healthy = {"backup-repo1.result": "ok", "backup-repo1.label": "L1", "backup-repo2.result": "ok",
               "archive.lag_seconds": "3", "archive.ready": "0", "drill.result": "ok"}
    assert {f.status for f in pitr_findings(healthy, (1, 2), "dev")} == {OK}
    bad = {**healthy, "backup-repo2.result": "failed", "archive.lag_seconds": "900", "drill.result": "failed",
           "drill.detail": "rows or checksums differ"}
    found = {f.check: f for f in pitr_findings(bad, (1, 2), "dev")}
    assert found["base backup repo2"].status == FAIL and found["restore drill"].status == FAIL
    assert found["WAL archive"].status == WARN and "900" in found["WAL archive"].detail
    assert "python -m ops drill --stack dev" in found["restore drill"].fix


# -- metrics and alerts ------------------------------------------------------------------------------------


def _status(tmp_path: Path, drill: str = "ok") -> tuple[str, str]:
    d = tmp_path / "pitr"
    d.mkdir()
    (d / "backup-repo1").write_text("result=ok\nlabel=20261201-000000F\ntype=full\ntime=1796000000\n")
    (d / "backup-repo2").write_text("result=failed\nlabel=\ntype=full\ntime=1796000100\n")
    (d / "archive").write_text("ready=3\nlag_seconds=42\nfailed_count=7\nlast_archived=1\nlast_failed=2\n"
                               "receiver=none\ntime=9\n")
    (d / "drill").write_text(f"result={drill}\nrepo=1\nlabel=x\ntime=1796000200\nseconds=5\ndetail=d\n")
    (tmp_path / "status").write_text("last_good=2026-12-01T00:00:00Z\nlast_result=ok\n")
    return str(tmp_path / "status"), str(d)


def test_metrics_from_the_status_files(tmp_path: Path) -> None:
    import sys
    sys.path.insert(0, str(ROOT / "app"))
    from stock_app import metrics
    text = metrics.render(*_status(tmp_path, drill="failed"))
    samples = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert samples['stock_pitr_last_backup_success{repo="1"}'] == "1"
    assert samples['stock_pitr_last_backup_success{repo="2"}'] == "0"
    assert samples['stock_pitr_last_backup_timestamp_seconds{repo="2"}'] == "1796000100"
    assert samples["stock_pitr_archive_lag_seconds"] == "42" and samples["stock_pitr_archive_failed_total"] == "7"
    assert samples["stock_pitr_last_drill_success"] == "0"
    assert samples["stock_pitr_receiver_synchronous"] == "0"  # receiver=none: commits wait
    assert samples["stock_backup_last_good_timestamp_seconds"] == "1796083200"  # 2026-12-01T00:00:00Z
    assert "# TYPE stock_pitr_archive_failed_total counter" in text
    # Without pitr, only the logical backups' metrics.
    assert "stock_pitr" not in metrics.render(str(tmp_path / "status"), "")


def _promtool() -> str | None:
    found = shutil.which("promtool")
    if found is None and os.environ.get("CI"):
        pytest.fail("promtool is not installed (.ci/run installs Debian's prometheus package)")
    return found


def test_alert_rules_are_valid_and_fire_as_tested() -> None:
    promtool = _promtool()
    if promtool is None:
        pytest.skip("promtool not installed (apt-get install prometheus)")
    rules = ROOT / "monitoring"
    check = subprocess.run([promtool, "check", "rules", str(rules / "alerts.yml")], capture_output=True, text=True,
                           timeout=60, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run([promtool, "test", "rules", "alerts.test.yml"], cwd=rules, capture_output=True, text=True,
                          timeout=120, check=False)
    assert test.returncode == 0, test.stdout + test.stderr


def test_every_alerted_metric_is_one_the_admin_serves(tmp_path: Path) -> None:
    import re
    import sys
    sys.path.insert(0, str(ROOT / "app"))
    from stock_app import metrics
    served = {line.split()[2] for line in metrics.render(*_status(tmp_path)).splitlines() if line.startswith("# TYPE")}
    doc = yaml.safe_load((ROOT / "monitoring" / "alerts.yml").read_text())
    used = {m for g in doc["groups"] for r in g["rules"] for m in re.findall(r"stock_[a-z_]+", r["expr"])}
    assert used and used <= served, used - served
