"""The SFTP off-host repository and the synchronous WAL receiver without an engine: settings, what they
render on both paths, the receiver's collect step against a stand-in pgBackRest, doctor (docs/recovery.md)."""

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
from ops.doctor import FAIL, OK, pitr_findings
from tests.pulumi_mocks import PROJECT, ROOT, plain, run_program
from tests.test_pitr import _pitr_config as _config
from tests.test_pitr import _project

FINGERPRINT = "a6" * 32
SFTP = {"pitrOffhost": "sftp", "pitrSftpHost": "backup.example.com", "pitrSftpHostFingerprint": FINGERPRINT}
# Not a key: the settings only check that the value is there and has no control character but newlines.
KEY_TEXT = "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n"


def settings(**over: str) -> Any:
    return load_settings({"environment": "dev", "pitr": "true", **over}, "dev")


# -- SFTP --------------------------------------------------------------------------------------------------


def test_sftp_repository_pins_the_host_key_and_is_encrypted() -> None:
    s = settings(**SFTP, pitrSftpPath="/srv/backups/stock", pitrOffhostRetentionDays="30")
    conf = pgbackrest_conf(s.pitr, "/unused").splitlines()
    for line in ("repo2-type=sftp", "repo2-sftp-host=backup.example.com", "repo2-sftp-host-port=22",
                 "repo2-sftp-host-user=pgbackrest", "repo2-path=/srv/backups/stock",
                 "repo2-sftp-host-key-check-type=fingerprint", "repo2-sftp-host-key-hash-type=sha256",
                 f"repo2-sftp-host-fingerprint={FINGERPRINT}", "repo2-cipher-type=aes-256-cbc",
                 "repo2-retention-full=30", "repo2-retention-full-type=time"):
        assert line in conf
    assert not [line for line in conf if "s3" in line or "private-key" in line]
    assert s.pitr.repos == (1, 2)
    assert [spec.name for spec in s.supplied_secrets] == ["pitr_sftp_key"]
    assert "pitr_cipher_key" in [spec.name for spec in s.generated_secrets]
    for c in (s.postgres, s.pitr_runner):
        assert {m.secret.name for m in c.secrets if m.secret.name.startswith("pitr_")} == {
            "pitr_cipher_key", "pitr_sftp_key"}


def test_the_wrapper_hands_pgbackrest_the_key_file_when_there_is_one(tmp_path: Path) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "pgbackrest").write_text("#!/bin/sh\nenv | grep '^PGBACKREST_' | sort\n")
    (fake / "pgbackrest").chmod(0o755)
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "pitr_cipher_key").write_text("c" * 64)

    def env_of() -> dict[str, str]:
        out = subprocess.run(["sh", str(ROOT / "pitr" / "pgbackrest.sh"), "info"], capture_output=True, text=True,
                             env={"PATH": f"{fake}:{os.environ['PATH']}", "PITR_SECRETS_DIR": str(secrets),
                                  "PITR_REPOS": "1 2"}, timeout=30, check=True).stdout
        return dict(line.split("=", 1) for line in out.splitlines())

    assert "PGBACKREST_REPO2_SFTP_PRIVATE_KEY_FILE" not in env_of()
    (secrets / "pitr_sftp_key").write_text(KEY_TEXT)
    got = env_of()
    assert got["PGBACKREST_REPO2_SFTP_PRIVATE_KEY_FILE"] == str(secrets / "pitr_sftp_key")
    assert got["PGBACKREST_REPO2_CIPHER_PASS"] == "c" * 64 and "PGBACKREST_REPO2_S3_KEY" not in got


@pytest.mark.parametrize(("key", "value"), [
    ("pitrSftpHost", "backup.example.com:0"), ("pitrSftpHost", "ssh://backup.example.com"),
    ("pitrSftpHost", "backup.example.com:22/x"), ("pitrSftpHost", "backup..example.com"),
    ("pitrSftpHostFingerprint", "a6" * 31),
    ("pitrSftpHostFingerprint", "A6" * 32), ("pitrSftpHostFingerprint", "a6" * 32 + "00"),
    # OpenSSH's own form of a fingerprint (not pgBackRest's), of a throwaway test key.
    ("pitrSftpHostFingerprint", "SHA256:7Vgxu+dogH8Thfo2rU/sVkpNLWm0Plypdf9Ty4kPIB0"),  # pragma: allowlist secret
    ("pitrSftpUser", "Root"), ("pitrSftpUser", "a b"), ("pitrSftpPath", "relative/dir"),
    ("pitrSftpPath", "/srv/../etc"), ("pitrSftpPath", "/srv/./x"), ("pitrSftpPath", "/srv/"),
])
def test_bad_sftp_values_name_key_value_and_what_is_allowed(key: str, value: str) -> None:
    with pytest.raises(ConfigError) as err:
        settings(**{**SFTP, key: value})
    assert key in str(err.value) and value in str(err.value)


def test_the_receiver_without_pitr_is_refused_not_ignored() -> None:
    with pytest.raises(ConfigError, match="pitrSyncReceiver"):
        load_settings({"environment": "dev", "pitrSyncReceiver": "true"}, "dev")


def test_the_fingerprint_is_required() -> None:
    with pytest.raises(ConfigError, match="pitrSftpHostFingerprint"):
        settings(**{**SFTP, "pitrSftpHostFingerprint": ""})


def test_only_the_private_key_may_hold_newlines_and_no_secret_is_echoed() -> None:
    settings(**SFTP, pitrSftpPrivateKey=KEY_TEXT)
    with pytest.raises(ConfigError, match="pitrSftpUser"):
        settings(**SFTP, pitrSftpUser="pgbackrest\n")
    with pytest.raises(ConfigError) as err:
        settings(**SFTP, pitrSftpPrivateKey=KEY_TEXT + "\x07")
    assert "BEGIN" not in str(err.value) and "<secret>" in str(err.value)
    with pytest.raises(ConfigError) as err:
        settings(pitrOffhost="s3", pitrS3Endpoint="s3.example.com", pitrS3Bucket="bkt",
                 pitrS3SecretKey="not-shown-\x01")  # pragma: allowlist secret
    assert "not-shown" not in str(err.value)


def test_compose_with_sftp_needs_the_login_key_from_the_user(tmp_path: Path) -> None:
    project = _project(tmp_path, SFTP)
    with pytest.raises(compose.ExportError, match="pitr_sftp_key"):
        compose.export("t", tmp_path / "out", project_dir=project)
    assert not (tmp_path / "out" / "compose.yaml").exists()
    (tmp_path / "out" / "secrets" / "pitr_sftp_key").write_text("\n")
    with pytest.raises(compose.ExportError, match="pitr_sftp_key"):
        compose.export("t", tmp_path / "out", project_dir=project)
    (tmp_path / "out" / "secrets" / "pitr_sftp_key").write_text(KEY_TEXT)
    created = compose.export("t", tmp_path / "out", project_dir=project)
    assert created.count("pitr_cipher_key") == 1
    doc = yaml.safe_load((tmp_path / "out" / "compose.yaml").read_text())
    assert set(doc["services"]["db-pitr"]["secrets"]) == {"pitr_cipher_key", "pitr_sftp_key"}


def test_program_with_sftp_requires_the_key_as_a_secret() -> None:
    with pytest.raises(Exception, match="pitrSftpPrivateKey"):
        run_program("dev", _config(SFTP))
    with pytest.raises(Exception, match=r"pitrSftpPrivateKey' is unset or empty"):
        run_program("dev", {**_config(SFTP), f"{PROJECT}:pitrSftpPrivateKey": ""},
                    secret_keys=("pitrSftpPrivateKey",))
    rec = run_program("dev", {**_config(SFTP), f"{PROJECT}:pitrSftpPrivateKey": KEY_TEXT},
                      secret_keys=("pitrSftpPrivateKey",))
    uploads = {u["file"]: u for u in plain(rec.named("database-server").inputs["uploads"])}
    assert {"/run/secrets/pitr_cipher_key", "/run/secrets/pitr_sftp_key"} <= set(uploads)
    assert uploads["/run/secrets/pitr_sftp_key"]["content"] == KEY_TEXT


# -- the synchronous receiver ------------------------------------------------------------------------------


def test_off_by_default_no_receiver_and_commits_wait_for_nobody() -> None:
    s = settings()
    assert s.wal_receiver is None and "pg_walstream" not in s.volumes
    assert "synchronous_standby_names" not in " ".join(s.postgres.command)


def test_the_server_waits_for_the_receiver_it_names() -> None:
    s = settings(pitrSyncReceiver="true")
    assert "-c synchronous_standby_names=walreceiver" in " ".join(s.postgres.command)
    r = s.wal_receiver
    assert r is not None and r.user == "999:999" and not r.ports and not r.secrets
    assert dict(r.env)["WALSTREAM_NAME"] == "walreceiver"
    mounts = {m.volume: m.target for m in r.mounts}
    assert mounts == {"pg_socket": "/var/run/postgresql", "pg_walstream": "/var/lib/pg-walstream"}
    assert "postgres_data" not in mounts, "the receiver's WAL must not live on the volume it protects"
    assert dict(s.pitr_runner.env)["PITR_RECEIVER"] == "walreceiver"
    assert r in s.containers
    # The provisioning job's own commits do not wait (a deploy onto a new empty cluster must finish).
    assert dict(s.provision.env)["PGOPTIONS"] == "-c synchronous_commit=local"
    assert "PGOPTIONS" not in dict(settings().provision.env)


def test_compose_starts_the_receiver_before_anything_writes(tmp_path: Path) -> None:
    project = _project(tmp_path, {"pitrSyncReceiver": "true"})
    compose.export("t", tmp_path / "out", project_dir=project)
    doc = yaml.safe_load((tmp_path / "out" / "compose.yaml").read_text())
    receiver = doc["services"]["db-walreceiver"]
    assert receiver["image"] == doc["services"]["postgres"]["image"]
    assert doc["services"]["db-provision"]["depends_on"]["db-walreceiver"] == {"condition": "service_started"}
    assert "pg_walstream" in doc["volumes"]
    assert (tmp_path / "out" / "provision" / "walstream.sh").is_file()


def test_program_runs_the_receiver_before_the_provisioning_job() -> None:
    rec = run_program("dev", _config({"pitrSyncReceiver": "true"}))
    receiver = rec.named("database-walreceiver")
    assert plain(receiver.inputs["image"]) == plain(rec.named("database-pitr-image").state["repoDigest"])
    assert receiver.urn in rec.named("database-provision").dependencies
    assert rec.named("database-walstream").protect is False  # dev; prod protects every volume


def _fake_tree(tmp_path: Path, push_rc: int = 0, push_out: str = "") -> tuple[Path, Path, dict[str, str]]:
    """walstream.sh beside a pgbackrest.sh stand-in that logs each push; a receiver directory with two
    completed segments, the partial one, a history file and the cluster's id; a restored pg_wal."""
    bin_dir = tmp_path / "pitr"
    bin_dir.mkdir(parents=True)
    shutil.copy(ROOT / "pitr" / "walstream.sh", bin_dir / "walstream.sh")
    (bin_dir / "pgbackrest.sh").write_text(
        f'echo "$@" >> {tmp_path}/pushed\necho "{push_out}"\nexit {push_rc}\n')
    stream = tmp_path / "stream"
    stream.mkdir()
    for name in ("000000010000000000000003", "000000010000000000000004", "00000002.history"):
        (stream / name).write_bytes(b"w" * 64)
    (stream / "000000010000000000000005.partial").write_bytes(b"p" * 64)
    (stream / ".system").write_text("7412345\n")
    pgdata = tmp_path / "data"
    (pgdata / "pg_wal").mkdir(parents=True)
    env = {**os.environ, "WALSTREAM_DIR": str(stream), "PGDATA": str(pgdata)}
    return bin_dir, stream, env


def _walstream(bin_dir: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(bin_dir / "walstream.sh"), *args], env=env, capture_output=True, text=True,
                          timeout=30, check=False)


def test_collect_pushes_history_then_segments_then_the_partial_one_and_replays_them(tmp_path: Path) -> None:
    bin_dir, stream, env = _fake_tree(tmp_path)
    r = _walstream(bin_dir, env, "collect", "S1")
    assert r.returncode == 0, r.stderr
    pushed = (tmp_path / "pushed").read_text().splitlines()
    # The history first: without it a recovery cannot follow the timeline the segments are on.
    assert [line.split()[-1].rsplit("/", 1)[-1] for line in pushed] == [
        "00000002.history", "000000010000000000000003", "000000010000000000000004",
        "000000010000000000000005.partial"]
    assert all(line.startswith("--stanza=main archive-push ") for line in pushed)
    wal = tmp_path / "data" / "pg_wal"
    assert (wal / "000000010000000000000005").read_bytes() == b"p" * 64
    assert (wal / "000000010000000000000003").read_bytes() == b"w" * 64  # this recovery needs no repository
    assert not (wal / "00000002.history").exists()
    assert not [f for f in stream.iterdir() if f.is_file()], "a new stream starts in an empty directory"
    assert {f.name for f in (stream / "superseded-S1").iterdir()} == {
        "000000010000000000000003", "000000010000000000000004", "00000002.history",
        "000000010000000000000005.partial", ".system"}
    assert "2 completed segment(s)" in r.stdout


def test_collect_keeps_what_a_repository_has_already_and_fails_on_anything_else(tmp_path: Path) -> None:
    bin_dir, stream, env = _fake_tree(tmp_path, push_rc=45, push_out="ERROR: [045]: WAL file already exists")
    assert _walstream(bin_dir, env, "collect", "S1").returncode == 0
    assert (tmp_path / "data" / "pg_wal" / "000000010000000000000005").exists()
    assert (stream / "superseded-S1" / "000000010000000000000003").exists()
    bin_dir2, stream2, env2 = _fake_tree(tmp_path / "b", push_rc=1, push_out="ERROR: [039]: unable to connect")
    r = _walstream(bin_dir2, env2, "collect", "S2")
    assert r.returncode == 1 and "archive-push of 00000002.history failed" in r.stderr
    assert (stream2 / "000000010000000000000005.partial").exists(), "a failed collect moves nothing"
    assert not (tmp_path / "b" / "data" / "pg_wal" / "000000010000000000000005").exists()
    assert _walstream(bin_dir2, env2, "uncollect", "S2").returncode == 0
    assert not (stream2 / "superseded-S2").exists()


def test_uncollect_puts_the_stream_back(tmp_path: Path) -> None:
    bin_dir, stream, env = _fake_tree(tmp_path)
    before = {f.name: f.read_bytes() for f in stream.iterdir()}
    assert _walstream(bin_dir, env, "collect", "S1").returncode == 0
    assert _walstream(bin_dir, env, "uncollect", "S1").returncode == 0
    assert {f.name: f.read_bytes() for f in stream.iterdir()} == before


def test_collect_keeps_the_newest_three_set_aside_streams(tmp_path: Path) -> None:
    bin_dir, stream, env = _fake_tree(tmp_path)
    for old in ("superseded-20260101T000000Z", "superseded-20260201T000000Z", "superseded-20260301T000000Z",
                "diverged-20250101T000000Z"):
        (stream / old).mkdir()
    assert _walstream(bin_dir, env, "collect", "20261201T000000Z").returncode == 0
    assert sorted(d.name for d in stream.iterdir()) == [
        "diverged-20250101T000000Z", "superseded-20260201T000000Z", "superseded-20260301T000000Z",
        "superseded-20261201T000000Z"]


def _fake_receiver(tmp_path: Path, server_id: str, stream_error: str) -> tuple[Path, dict[str, str]]:
    """psql answering a system identifier, pg_receivewal failing with `stream_error`, on PATH."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "psql").write_text(f"#!/bin/sh\necho {server_id}\n")
    (fake / "pg_receivewal").write_text(
        '#!/bin/sh\ncase "$*" in *--create-slot*) exit 0;; esac\n'
        f'echo "pg_receivewal: error: {stream_error}" >&2\nexit 1\n')
    for f in fake.iterdir():
        f.chmod(0o755)
    return fake, {"PATH": f"{fake}:{os.environ['PATH']}", "TMPDIR": str(tmp_path)}


def test_a_stream_the_server_has_no_history_of_is_set_aside_not_deleted(tmp_path: Path) -> None:
    bin_dir, stream, env = _fake_tree(tmp_path)
    _, extra = _fake_receiver(tmp_path, "7412345", "could not send replication command \"START_REPLICATION\": "
                                 "ERROR:  requested starting point 0/5000000 on timeline 1 is not in this server's "
                                 "history")
    before = {f.name: f.read_bytes() for f in stream.iterdir() if f.is_file()}
    r = _walstream(bin_dir, {**env, **extra}, "once")
    assert r.returncode == 0, r.stderr
    assert not [f for f in stream.iterdir() if f.is_file()]
    (aside,) = [d for d in stream.iterdir() if d.name.startswith("diverged-")]
    assert {f.name: f.read_bytes() for f in aside.iterdir()} == before
    assert "set the stream aside" in r.stderr


def test_another_failure_or_another_cluster_leaves_the_stream_alone(tmp_path: Path) -> None:
    bin_dir, stream, env = _fake_tree(tmp_path)
    before = sorted(f.name for f in stream.iterdir())
    _, extra = _fake_receiver(tmp_path, "7412345", "could not connect to server: No such file or directory")
    assert _walstream(bin_dir, {**env, **extra}, "once").returncode == 0
    assert sorted(f.name for f in stream.iterdir()) == before
    (tmp_path / "bin2").mkdir()
    _, extra = _fake_receiver(tmp_path / "bin2", "9999999", "is not in this server's history")
    r = _walstream(bin_dir, {**env, **extra}, "once")
    assert sorted(f.name for f in stream.iterdir()) == before, "WAL of another cluster is never set aside by it"
    assert "holds WAL of cluster 7412345, the server is cluster 9999999" in r.stderr


def test_doctor_fails_while_commits_wait_for_the_receiver() -> None:
    s = settings(pitrSyncReceiver="true")
    healthy = {"backup-repo1.result": "ok", "backup-repo1.label": "L", "drill.result": "ok",
               "archive.receiver": "sync"}
    found = {f.check: f for f in pitr_findings(healthy, (1,), "dev", s.wal_receiver)}
    assert found["WAL receiver"].status == OK
    found = {f.check: f for f in pitr_findings({**healthy, "archive.receiver": "none"}, (1,), "dev", s.wal_receiver)}
    assert found["WAL receiver"].status == FAIL and "commits wait" in found["WAL receiver"].detail
    assert "WAL receiver" not in {f.check for f in pitr_findings(healthy, (1,), "dev", None)}
