"""Continuous WAL archiving and point-in-time recovery with pgBackRest (docs/recovery.md): the settings,
the pgBackRest configuration they render, and the db-pitr container that schedules base backups and
restore drills. Pure: no Pulumi here."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

PITR_SOURCE = Path(__file__).resolve().parent.parent / "pitr"  # Dockerfile and scripts of the pitr image
PITR_TARGET = "/pitr"
REPO_DIR = "/var/lib/pgbackrest"  # the local repository (repo1), a volume of its own
SOCKET_DIR = "/var/run/postgresql"  # shared by the server and db-pitr: pgBackRest talks to Postgres by socket
STATUS_DIR = f"{REPO_DIR}/status"  # last backup, last drill: read by ops, the admin UI and /metrics
CONF_PATH = "/etc/pgbackrest/pgbackrest.conf"
STANZA = "main"
OFFHOST_KINDS = ("none", "s3", "sftp")
SCRATCH_PORT = 5499  # the drill's scratch server inside db-pitr (its own socket, no network)
# With pitrSyncReceiver: pg_receivewal's directory (a volume of its own) and the name the server waits for.
WALSTREAM_DIR = "/var/lib/pg-walstream"
RECEIVER_NAME = "walreceiver"  # its application_name, and synchronous_standby_names
RECEIVER_SLOT = "stock_walreceiver"  # a physical slot: the server keeps WAL the receiver has not yet got

_ENDPOINT = re.compile(r"(?P<host>[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?)(?::(?P<port>[0-9]{1,5}))?")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_REGION = re.compile(r"[a-z0-9-]{1,32}")
_FINGERPRINT = re.compile(r"[0-9a-f]{64}")  # SHA-256 of the host key, hex (pgBackRest's form)
_SFTP_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_SFTP_PATH = re.compile(r"(?:/[A-Za-z0-9._-]+)+")


@dataclass(frozen=True)
class S3Repo:
    host: str
    port: int
    bucket: str
    region: str
    verify_tls: bool
    retention_days: int


@dataclass(frozen=True)
class SftpRepo:
    """A directory on another machine over SSH: the host key pinned by its SHA-256 fingerprint (never
    learned on first use), a key pair for the login (the private key a supplied secret)."""

    host: str
    port: int
    user: str
    path: str
    host_fingerprint: str
    retention_days: int


@dataclass(frozen=True)
class PitrSettings:
    archive_timeout_s: int  # a WAL segment is closed and archived at least this often (the RPO bound)
    full_interval_h: int
    diff_interval_h: int
    drill_interval_h: int
    local_retention_days: int
    offhost: S3Repo | SftpRepo | None  # the off-host repository (repo2), encrypted with the stack's cipher key
    superuser: str
    image: str  # the stack's Postgres image with pgBackRest (built from pitr/Dockerfile)
    # pg_receivewal on a volume of its own, and every commit waits until it has the WAL on disk.
    sync_receiver: bool = False

    @property
    def repos(self) -> tuple[int, ...]:
        return (1, 2) if self.offhost else (1,)

    @property
    def offhost_kind(self) -> str:
        return "s3" if self.s3 else "sftp" if self.sftp else "none"

    @property
    def s3(self) -> S3Repo | None:
        return self.offhost if isinstance(self.offhost, S3Repo) else None

    @property
    def sftp(self) -> SftpRepo | None:
        return self.offhost if isinstance(self.offhost, SftpRepo) else None


def _host_port(value: str, default_port: int) -> tuple[str, int]:
    m = _ENDPOINT.fullmatch(value)
    if not m:
        raise ValueError(value)
    port = int(m["port"] or default_port)
    if not 1 <= port <= 65535:
        raise ValueError(value)
    return m["host"], port


def parse_endpoint(value: str) -> tuple[str, int]:
    """host[:port] of an S3 endpoint (HTTPS); raises ValueError for anything else."""
    return _host_port(value, 443)


def valid_bucket(value: str) -> bool:
    return _BUCKET.fullmatch(value) is not None and ".." not in value


def valid_region(value: str) -> bool:
    return _REGION.fullmatch(value) is not None


def parse_sftp_host(value: str) -> tuple[str, int]:
    """host[:port] of an SSH server (port 22 unless given); raises ValueError for anything else."""
    host, port = _host_port(value, 22)
    if ".." in host:
        raise ValueError(value)
    return host, port


def valid_fingerprint(value: str) -> bool:
    return _FINGERPRINT.fullmatch(value) is not None


def valid_sftp_user(value: str) -> bool:
    return _SFTP_USER.fullmatch(value) is not None


def valid_sftp_path(value: str) -> bool:
    return _SFTP_PATH.fullmatch(value) is not None and "/../" not in f"{value}/" and "/./" not in f"{value}/"


def pitr_image(postgres_image: str, project: str) -> str:
    """A deterministic local name: the Postgres image's tag plus pgBackRest (rebuilt when it changes)."""
    tag = postgres_image.rsplit("/", 1)[-1].replace(":", "-").replace("@", "-")[:100]
    return f"{project}-postgres-pgbackrest:{tag}"


def server_options(p: PitrSettings) -> tuple[str, ...]:
    """`postgres -c` options that turn archiving on: every WAL segment goes to every repository (pgBackRest's
    archive-push), a segment is closed at least every archive_timeout seconds."""
    return (
        "-c", "wal_level=replica",
        "-c", "archive_mode=on",
        "-c", f"archive_command=sh {PITR_TARGET}/pgbackrest.sh --stanza={STANZA} archive-push %p",
        "-c", f"archive_timeout={p.archive_timeout_s}",
        # A commit returns once the receiver has flushed its WAL (synchronous_commit's default, on).
        *(("-c", f"synchronous_standby_names={RECEIVER_NAME}") if p.sync_receiver else ()),
    )


def pgbackrest_conf(p: PitrSettings, repo_path_offhost: str) -> str:
    """The whole pgBackRest configuration, without secrets (the cipher key, the S3 keys and the SFTP key's path
    come from secret files through pitr/pgbackrest.sh). Retention is by age (time-based full retention; WAL
    follows its backups)."""
    lines = [
        "# Generated from the stack settings (model/pitr.py); secrets come from files, never from here.",
        "[global]",
        f"repo1-path={REPO_DIR}",
        "repo1-retention-full-type=time",
        f"repo1-retention-full={p.local_retention_days}",
        "repo1-bundle=y",
        "repo1-block=y",
    ]
    if p.sftp:
        sftp = p.sftp
        lines += [
            "repo2-type=sftp",
            f"repo2-path={sftp.path}",
            f"repo2-sftp-host={sftp.host}",
            f"repo2-sftp-host-port={sftp.port}",
            f"repo2-sftp-host-user={sftp.user}",
            "repo2-sftp-host-key-check-type=fingerprint",
            "repo2-sftp-host-key-hash-type=sha256",
            f"repo2-sftp-host-fingerprint={sftp.host_fingerprint}",
            "repo2-cipher-type=aes-256-cbc",
            "repo2-retention-full-type=time",
            f"repo2-retention-full={sftp.retention_days}",
            "repo2-bundle=y",
            "repo2-block=y",
        ]
    if p.s3:
        s3 = p.s3
        lines += [
            "repo2-type=s3",
            f"repo2-path={repo_path_offhost}",
            f"repo2-s3-bucket={s3.bucket}",
            f"repo2-s3-endpoint={s3.host}",
            f"repo2-storage-port={s3.port}",
            f"repo2-s3-region={s3.region}",
            "repo2-s3-uri-style=path",
            f"repo2-storage-verify-tls={'y' if s3.verify_tls else 'n'}",
            "repo2-cipher-type=aes-256-cbc",
            "repo2-retention-full-type=time",
            f"repo2-retention-full={s3.retention_days}",
            "repo2-bundle=y",
            "repo2-block=y",
        ]
    lines += [
        f"cmd=sh {PITR_TARGET}/pgbackrest.sh",  # what restore_command runs: the wrapper that reads the secrets
        "compress-type=zst",
        "start-fast=y",
        "process-max=2",
        "archive-timeout=120",
        "log-level-console=info",
        "log-level-stderr=off",
        "log-level-file=off",
        "lock-path=/tmp/pgbackrest",
        "",
        f"[{STANZA}]",
        "pg1-path=/var/lib/postgresql/data",
        f"pg1-socket-path={SOCKET_DIR}",
        "pg1-port=5432",
        f"pg1-user={p.superuser}",
        "",
    ]
    return "\n".join(lines)
