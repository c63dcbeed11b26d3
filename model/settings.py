"""Typed, validated stack settings: the one place where ports, env, healthchecks and images are decided.

Both the Pulumi components and the compose export are derived from `StackSettings`, so a value
changed in stack config changes both. Parsing is pure (a mapping of raw config strings in, a frozen
dataclass out) so that bad input fails before any resource is registered, and so the compose CLI can
use it without the Pulumi engine.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

from model import pitr as pitr_model
from model.pitr import PitrSettings, S3Repo, SftpRepo

PROJECT = "stock-analyzer"
ENVIRONMENTS = ("dev", "prod")
# Long-running services must come back; "no" is for one-shot jobs only.
SERVICE_RESTART_POLICIES = ("unless-stopped", "always", "on-failure")
# Where a stack runs: one Docker engine, or a Swarm cluster (docs/swarm.md).
TARGETS = ("single", "swarm")
# Swarm service discovery: a virtual IP with the ingress routing mesh (most clusters), or DNS round robin
# behind the edge proxy (kernels without IPVS, and where TLS ends at the proxy).
ENDPOINT_MODES = ("vip", "dnsrr")
PROXY_CONFIG_SOURCE = Path(__file__).resolve().parent.parent / "proxy" / "haproxy.cfg"
SWARM_SOURCE = Path(__file__).resolve().parent.parent / "swarm"  # scripts only the swarm target runs
SWARM_TARGET = "/swarm"
PROVISION_DONE_FILE = "/tmp/provisioned"  # noqa: S108 (the job's private tmpfs)
PROXY_CONFIG_TARGET = "/usr/local/etc/haproxy/haproxy.cfg"
PROXY_HEALTHCHECK_SOURCE = PROXY_CONFIG_SOURCE.parent / "healthcheck.sh"
PROXY_HEALTHCHECK_TARGET = "/usr/local/etc/haproxy/healthcheck.sh"
PROXY_UID = 99  # the official haproxy image's user
PROXY_MAX_TASKS = 10  # server slots the proxy keeps per service (tasks.<service> answers)

# Postgres majors whose data directory layout matches the legacy volume path
# (/var/lib/postgresql/data); 18+ moved PGDATA, 13 and older are end of life.
SUPPORTED_POSTGRES_MAJORS = range(14, 18)
PGDATA = "/var/lib/postgresql/data"
POSTGRES_PORT = 5432
# uid of the `postgres` user in the official image (and in the test stand-in).
POSTGRES_UID = 999
# The app image runs as this uid; passed to the Dockerfile as a build argument.
APP_UID = 10001
SECRETS_DIR = "/run/secrets"
DB_ALIAS = "postgres"
PROVISION_MEMORY_MB = 128
# Healthchecks probe this often during their start period only (Docker's start_interval).
START_INTERVAL_MS = 200
POSTGRES_START_PERIOD_S = 60
BACKUP_MEMORY_MB = 256
# The app's database credential (user and password, one file) lives in a volume that the provisioning
# job writes and the app reads on every connection: rotating it needs no app restart.
APP_CREDENTIALS_DIR = "/run/app-credentials"
APP_CREDENTIALS_FILE = f"{APP_CREDENTIALS_DIR}/db"
PROVISION_STATE_DIR = "/var/lib/provision"
TMPFS_OPTS = "rw,noexec,nosuid,nodev,size=16m"
TMP_DIR = "/tmp"  # noqa: S108 (a private tmpfs inside the container, not the host's /tmp)
# Logical network names (compose keys); engine names per stack, see StackSettings.networks. Postgres, the job,
# the API and the admin UI share the backend; the frontend reaches only the API, on the frontend network.
NET_BACKEND, NET_FRONTEND = "backend", "frontend"
NET_DCS = "dcs"  # postgresMembers 3: the members and etcd, nothing else
# Logical volume names (compose keys); the engine names are per stack, see StackSettings.volumes.
VOL_DATA, VOL_APP_CREDENTIALS, VOL_PROVISION_STATE = "postgres_data", "app_credentials", "provision_state"
VOL_BACKUPS = "backups"
# With pitr: the local pgBackRest repository, the server socket shared with db-pitr, the drill's scratch.
VOL_PITR_REPO, VOL_PITR_SOCKET, VOL_PITR_SCRATCH = "pgbackrest", "pg_socket", "pitr_scratch"
VOL_PITR_WALSTREAM = "pg_walstream"  # with pitrSyncReceiver: the receiver's WAL, on a volume of its own
PITR_MARKS_DIR = "/var/lib/pgbackrest/marks"
# Scheduled logical backups (backup/backup.sh), in their own volume: protected with the data in prod.
BACKUP_DIR = "/var/lib/backups"
PITR_STATUS_DIR = f"{BACKUP_DIR}/pitr"  # beside the dumps' status: the admin UI reads both
BACKUP_SOURCE = Path(__file__).resolve().parent.parent / "backup"
BACKUP_TARGET = "/backup"
BACKUP_TIERS = ("daily", "weekly", "monthly")
APP_PORTS = {"api": 5000, "frontend": 8000, "admin": 8001}  # container ports of the app's three roles
# The provisioning job's shell and SQL (see provision/provision.sh), uploaded to /provision in its container.
PROVISION_SOURCE = Path(__file__).resolve().parent.parent / "provision"
PROVISION_TARGET = "/provision"


def provision_files() -> tuple[tuple[str, str], ...]:
    """(path in the job's container, content) of every provisioning file, in a stable order."""
    return _script_files(PROVISION_SOURCE, PROVISION_TARGET)


def backup_files() -> tuple[tuple[str, str], ...]:
    # The app's privilege model is one file: the job applies it, and so does every restore.
    privileges = PROVISION_SOURCE / "privileges.sql"
    return tuple(sorted((*_script_files(BACKUP_SOURCE, BACKUP_TARGET),
                         (f"{BACKUP_TARGET}/{privileges.name}", privileges.read_text(encoding="utf-8")))))


def swarm_files() -> tuple[tuple[str, str], ...]:
    return _script_files(SWARM_SOURCE, SWARM_TARGET)


def _script_files(source: Path, target: str) -> tuple[tuple[str, str], ...]:
    files = sorted(p for p in source.iterdir() if p.suffix in (".sh", ".sql"))
    return tuple((f"{target}/{p.name}", p.read_text(encoding="utf-8")) for p in files)


class ConfigError(ValueError):
    """A stack config value is invalid; the message names the key, the value and what is allowed."""


@dataclass(frozen=True)
class SecretSpec:
    """A generated credential, delivered to containers only as a file."""

    name: str
    config_key: str
    description: str
    length: int = 32
    # False for a secret the stack never sets or rotates (no config key, no rotation trigger).
    configurable: bool = True

    @property
    def path(self) -> str:
        return f"{SECRETS_DIR}/{self.name}"

    @property
    def version_key(self) -> str:
        """The rotation trigger: bump it and `pulumi up` generates and applies a new value."""
        return f"{self.config_key}Version"


SECRET_POSTGRES = SecretSpec("postgres_password", "postgresPassword", "database superuser password")
SECRET_APP_DB = SecretSpec("app_db_password", "appDbPassword", "password of the app's database role")
SECRET_ADMIN = SecretSpec("admin_password", "adminPassword", "admin UI password")
SECRET_BACKUP_DB = SecretSpec("backup_db_password", "backupDbPassword", "password of the backup role")
# Initialises an empty data directory and nothing else: the provisioning job then moves the superuser to
# SECRET_POSTGRES. The server container carries only this one, so a superuser rotation never changes (or
# restarts) the server.
SECRET_POSTGRES_BOOTSTRAP = SecretSpec("postgres_bootstrap_password", "", "bootstrap superuser password",
                                       configurable=False)
# Encrypts the off-host pgBackRest repository. Not rotatable (the repository is written with it): keep a copy
# away from the host, with the stack's state (docs/recovery.md, Host lost).
SECRET_PITR_CIPHER = SecretSpec("pitr_cipher_key", "", "cipher key of the off-host backup repository", length=64,
                                configurable=False)
# Keys the hash in a swarm secret's name (model/swarm.py content_name): an unkeyed hash of a password would let
# anyone who can list secrets test guesses offline. Never mounted into a service; not rotatable (a new key would
# rename, and so roll, every secret: harmless, but nothing asks for it).
SECRET_SWARM_NAME_KEY = SecretSpec("swarm_name_key", "", "key of the hashes in swarm secret names", length=64,
                                   configurable=False)
# A Patroni cluster's own logins (postgresMembers 3): replication, pg_rewind, and the REST API's unsafe calls
# (switchover, restart). Generated, never mounted into anything but the members (and the API's into ops).
SECRET_PATRONI_REPLICATION = SecretSpec("patroni_replication_password", "", "password of Patroni's replication "
                                        "role", configurable=False)
SECRET_PATRONI_REWIND = SecretSpec("patroni_rewind_password", "", "password of Patroni's pg_rewind role",
                                   configurable=False)
SECRET_PATRONI_API = SecretSpec("patroni_api_password", "", "password of Patroni's REST API", configurable=False)
PATRONI_SECRETS = (SECRET_PATRONI_REPLICATION, SECRET_PATRONI_REWIND, SECRET_PATRONI_API)
# Their role names (patroni/patroni.yml's pg_hba names the first): no stack role may take them.
PATRONI_REPLICATION_USER = "patroni_replication"
PATRONI_REWIND_USER = "patroni_rewind"
PATRONI_API_USER = "patroni"
SECRETS = (SECRET_POSTGRES, SECRET_APP_DB, SECRET_ADMIN, SECRET_BACKUP_DB, SECRET_POSTGRES_BOOTSTRAP)
# The ones a stack may supply (config key) and rotate (version trigger).
USER_SECRETS = tuple(s for s in SECRETS if s.configurable)
# Supplied, never generated: the off-host object store's access keys (with pitrOffhost: s3).
SECRET_S3_KEY = SecretSpec("pitr_s3_key", "pitrS3AccessKey", "access key of the off-host object store")
SECRET_S3_KEY_SECRET = SecretSpec("pitr_s3_key_secret", "pitrS3SecretKey", "secret key of the off-host object store")
S3_SECRETS = (SECRET_S3_KEY, SECRET_S3_KEY_SECRET)
# Supplied too (with pitrOffhost: sftp): the SSH login's private key, the only secret here with newlines.
SECRET_SFTP_KEY = SecretSpec("pitr_sftp_key", "pitrSftpPrivateKey", "private key of the off-host SSH login")
OFFHOST_SECRETS = {"s3": S3_SECRETS, "sftp": (SECRET_SFTP_KEY,)}
SUPPLIED_SECRETS = (*S3_SECRETS, SECRET_SFTP_KEY)


@dataclass(frozen=True)
class Healthcheck:
    test: tuple[str, ...]
    interval_s: int
    timeout_s: int
    retries: int
    start_period_s: int
    start_interval_ms: int  # probes while starting: how soon "ready" is seen


@dataclass(frozen=True)
class PortBinding:
    host_ip: str
    host_port: int
    container_port: int


@dataclass(frozen=True)
class SecretMount:
    secret: SecretSpec
    owner_uid: int


@dataclass(frozen=True)
class VolumeMount:
    volume: str  # logical name, a key of StackSettings.volumes
    target: str
    read_only: bool = False


@dataclass(frozen=True)
class ContainerSpec:
    """Everything about one container that both Pulumi and compose need."""

    service: str
    container_name: str
    command: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    secrets: tuple[SecretMount, ...]
    ports: tuple[PortBinding, ...]
    healthcheck: Healthcheck | None
    memory_mb: int | None
    restart: str
    user: str | None = None
    aliases: tuple[str, ...] = ()  # DNS names of the container on each of its networks
    networks: tuple[str, ...] = (NET_BACKEND,)  # logical names, keys of StackSettings.networks
    entrypoint: tuple[str, ...] | None = None
    uploads: tuple[tuple[str, str], ...] = ()  # (path in container, non-secret file content)
    stop_signal: str | None = None
    stop_grace_s: int | None = None
    mounts: tuple[VolumeMount, ...] = ()
    # Hardening (CIS Docker Benchmark 5.x): every capability dropped, these added back; no privilege
    # gain through setuid binaries; read-only root filesystem with tmpfs where the process writes.
    cap_add: tuple[str, ...] = ()
    read_only: bool = True
    tmpfs: tuple[tuple[str, str], ...] = ((TMP_DIR, TMPFS_OPTS),)
    pids_limit: int = 256
    max_retries: int | None = None  # with restart "on-failure"
    role: str = "service"  # "service" (long-running) or "job" (one-shot)
    # Reviewed exceptions to the policy pack: policy name -> reason (become labels the policies read).
    policy_exceptions: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ConfigKey:
    name: str
    type: str
    description: str
    default: str | None
    secret: bool = False


# Every key of the project namespace, with its default. Pulumi.yaml declares the same keys; a test
# keeps the two in step.
CONFIG_KEYS: tuple[ConfigKey, ...] = (
    ConfigKey("environment", "string", "Environment profile: dev or prod (prod enforces hardening rules).", None),
    ConfigKey("postgresImage", "string", "Pinned Postgres image (major 14-17).", "postgres:17.6-trixie"),
    ConfigKey("pythonBaseImage", "string", "Pinned Python base image for the app build.", "python:3.13.7-slim-trixie"),
    ConfigKey("pipIndexUrl", "string", "Python package index for the app image build (a nearer mirror), e.g. "
              "https://pypi.example.internal/simple; empty: the default index.", ""),
    ConfigKey("pipTrustedHost", "string", "Host (host or host:port) pip may reach over plain HTTP or without "
              "certificate checks, for pipIndexUrl; empty: none.", ""),
    ConfigKey("appImageName", "string", "Repository of the app image (built locally on one host; in a registry "
              "for a swarm); its tag is appImageTag.",
              "stock-analyzer-app"),
    ConfigKey("appImageTag", "string", "Tag of the app image; empty: the stack name. On a swarm, set a new tag per "
              "release (e.g. the commit): a changed tag is what rolls the services onto a new build.", ""),
    ConfigKey("dbName", "string", "Database name.", "stock_analysis"),
    ConfigKey("dbSuperuser", "string", "Database superuser (used only by the provisioning job).", "postgres"),
    ConfigKey("dbAppUser", "string", "Least-privileged login role the app connects as.", "stock_app"),
    ConfigKey("appSchemas", "string", "The app's schemas, comma-separated (an adopted legacy database may use more "
              "than public); empty: every schema that holds a table.", ""),
    ConfigKey("dbBackupUser", "string", "Login role of the scheduled backups: reads everything (pg_read_all_data), "
              "writes nothing.", "stock_backup"),
    ConfigKey("postgresHostPort", "integer", "Host port for Postgres; 0 publishes nothing (required in prod).", "0"),
    ConfigKey("postgresHostIp", "string", "Host address for the Postgres port; loopback only.", "127.0.0.1"),
    ConfigKey("apiHostPort", "integer", "Host port of the API (container port 5000).", "5000"),
    ConfigKey("apiHostIp", "string", "Host address the API port binds to.", "127.0.0.1"),
    ConfigKey("frontendHostPort", "integer", "Host port of the frontend (container port 8000).", "8000"),
    ConfigKey("frontendHostIp", "string", "Host address the frontend port binds to.", "127.0.0.1"),
    ConfigKey("adminHostPort", "integer", "Host port of the admin UI (container port 8001).", "8001"),
    ConfigKey("adminHostIp", "string", "Host address the admin port binds to.", "127.0.0.1"),
    ConfigKey("postgresMemory", "string", "Memory limit of Postgres, e.g. 512Mi or 1Gi; empty for none.", ""),
    ConfigKey("apiMemory", "string", "Memory limit of the API container; empty for none.", ""),
    ConfigKey("frontendMemory", "string", "Memory limit of the frontend container; empty for none.", ""),
    ConfigKey("adminMemory", "string", "Memory limit of the admin container; empty for none.", ""),
    ConfigKey("logMaxSize", "string", "json-file log rotation: size of one log file, e.g. 10m.", "10m"),
    ConfigKey("logMaxFile", "integer", "json-file log rotation: files kept per container.", "3"),
    ConfigKey("restartPolicy", "string", "Restart policy of long-running containers.", "unless-stopped"),
    ConfigKey("restartMaxRetries", "integer", "Restart attempts when restartPolicy is on-failure.", "5"),
    ConfigKey("protectData", "boolean", "Protect the data volume from deletion (required in prod).", "false"),
    ConfigKey("postgresDataMajor", "integer", "PostgreSQL major of the data directory; postgresImage must match it "
              "(change both only after `python -m ops upgrade`).", "17"),
    ConfigKey("backupIntervalMinutes", "integer",
              "Minutes between scheduled logical backups (the first runs at start).", "1440"),
    ConfigKey("backupKeep", "integer", "Newest backups kept whatever their age (scheduled and on-demand alike).",
              "7"),
    ConfigKey("backupKeepDaily", "integer", "Also kept: the newest backup of each of this many days that have one.",
              "7"),
    ConfigKey("backupKeepWeekly", "integer", "Also kept: the newest backup of each of this many ISO weeks.", "4"),
    ConfigKey("backupKeepMonthly", "integer", "Also kept: the newest backup of each of this many months.", "6"),
    ConfigKey("adminUser", "string", "Admin UI user name.", "admin"),
    ConfigKey("pitr", "boolean", "Continuous WAL archiving and point-in-time recovery with pgBackRest "
              "(docs/recovery.md).", "false"),
    ConfigKey("pitrArchiveTimeoutSeconds", "integer", "pitr: a WAL segment is archived at least this often "
              "under writes (bounds the data lost with the volume).", "60"),
    ConfigKey("pitrFullIntervalHours", "integer", "pitr: hours between full base backups.", "168"),
    ConfigKey("pitrDiffIntervalHours", "integer", "pitr: hours between differential base backups.", "24"),
    ConfigKey("pitrDrillIntervalHours", "integer", "pitr: hours between restore drills of the newest backup.",
              "168"),
    ConfigKey("pitrRetentionDays", "integer", "pitr: days the local repository keeps full backups (and the WAL "
              "they need).", "14"),
    ConfigKey("pitrOffhost", "string", "pitr: the off-host repository, encrypted with a generated key: none, s3 "
              "(an S3-compatible object store) or sftp (a directory on another machine over SSH).", "none"),
    ConfigKey("pitrS3Endpoint", "string", "pitr with s3: the object store's HTTPS endpoint, host[:port].", ""),
    ConfigKey("pitrS3Bucket", "string", "pitr with s3: the bucket (it must exist).", ""),
    ConfigKey("pitrS3Region", "string", "pitr with s3: the region.", "us-east-1"),
    ConfigKey("pitrS3VerifyTls", "boolean", "pitr with s3: verify the endpoint's certificate (required in prod).",
              "true"),
    ConfigKey("pitrOffhostRetentionDays", "integer", "pitr: days the off-host repository keeps full backups.",
              "35"),
    *(ConfigKey(s.config_key, "string", f"pitr with s3: the {s.description}, set with --secret.", None,
                secret=True) for s in S3_SECRETS),
    ConfigKey("pitrSftpHost", "string", "pitr with sftp: the SSH server, host[:port] (port 22 unless given).", ""),
    ConfigKey("pitrSftpUser", "string", "pitr with sftp: the login on that server.", "pgbackrest"),
    ConfigKey("pitrSftpPath", "string", "pitr with sftp: the repository's directory there (absolute; it must "
              "exist and be the login's).", "/var/lib/pgbackrest"),
    ConfigKey("pitrSftpHostFingerprint", "string", "pitr with sftp: SHA-256 of the server's host key, 64 hex "
              "digits (docs/recovery.md shows how to compute it; a key that differs is refused).", ""),
    ConfigKey(SECRET_SFTP_KEY.config_key, "string", "pitr with sftp: the SSH login's private key (PEM or "
              "OpenSSH format, without passphrase), set with --secret.", None, secret=True),
    ConfigKey("pitrSyncReceiver", "boolean", "pitr: stream WAL to a receiver (pg_receivewal) on a volume of its "
              "own and make each commit wait until it has the WAL on disk: no acknowledged write lost with the "
              "data volume, at a cost in commit latency, and commits wait while the receiver is down "
              "(docs/recovery.md).", "false"),
    ConfigKey("target", "string", "Where the stack runs: single (one Docker engine) or swarm (a Swarm cluster "
              "reached through DOCKER_HOST; docs/swarm.md).", "single"),
    ConfigKey("swarmEndpointMode", "string", "swarm: vip (ingress routing mesh) or dnsrr (edge proxy published "
              "in host mode on every node).", "vip"),
    ConfigKey("swarmDbNodeLabel", "string", "swarm: node label that marks the node holding the database volume "
              "(docker node update --label-add LABEL=true NODE).", "stock-analyzer-db"),
    ConfigKey("postgresMembers", "integer", "swarm: PostgreSQL servers. 1: one, on the node labelled LABEL=true. "
              "3: a Patroni cluster (leader, two replicas, synchronous commit, automatic failover) with etcd, member k "
              "on the node labelled LABEL=k (docs/swarm.md).", "1"),
    ConfigKey("etcdImage", "string", "swarm with 3 members: pinned etcd image of Patroni's configuration store.",
              "quay.io/coreos/etcd:v3.5.16"),
    ConfigKey("patroniImage", "string", "swarm with 3 members: the members' image, built FROM postgresImage with "
              "patroni/Dockerfile; empty: stock-analyzer-patroni:<postgresImage's tag>.", ""),
    ConfigKey("swarmEncryptOverlay", "boolean", "swarm: encrypt the overlay networks (IPsec; needs the kernel's "
              "esp and xfrm support on every node).", "true"),
    ConfigKey("apiReplicas", "integer", f"swarm: tasks of the API service (1-{PROXY_MAX_TASKS}).", "2"),
    ConfigKey("frontendReplicas", "integer", f"swarm: tasks of the frontend service (1-{PROXY_MAX_TASKS}).", "2"),
    ConfigKey("adminReplicas", "integer", f"swarm: tasks of the admin service (1-{PROXY_MAX_TASKS}).", "1"),
    ConfigKey("swarmPublishApi", "boolean", "swarm: publish the API's port (apiHostPort) on every address of every "
              "node; the API takes writes without authentication, so off unless a trusted network surrounds the "
              "cluster. The frontend is always published, the admin UI never.", "false"),
    ConfigKey("proxyImage", "string", "swarm with dnsrr: pinned HAProxy image of the edge proxy.", "haproxy:3.0"),
    *(ConfigKey(s.config_key, "string", f"Optional own {s.description}, set with --secret; generated when unset.",
                None, secret=True)
      for s in USER_SECRETS),
    *(ConfigKey(s.version_key, "integer", f"Rotation trigger of the {s.description}; increase it to rotate.", "1")
      for s in USER_SECRETS),
)
KNOWN_KEYS = {k.name: k for k in CONFIG_KEYS}

_T = TypeVar("_T")
_IDENT = re.compile(r"[a-z_][a-z0-9_]{0,62}")
# Names PostgreSQL refuses or treats as keywords in role positions; pg_* is reserved as a prefix.
RESERVED_ROLE_NAMES = ("all", "current_role", "current_user", "none", "public", "session_user", "user",
                      PATRONI_REPLICATION_USER, PATRONI_REWIND_USER)
RESERVED_ROLE_PREFIX = "pg_"
RESERVED_DB_NAMES = ("template0", "template1")
# Docker reference grammar (distribution/reference), with a mandatory tag or digest.
_NAME_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?/)"
_IMAGE_REF = re.compile(
    rf"(?P<repo>{_DOMAIN}?{_NAME_COMPONENT}(?:/{_NAME_COMPONENT})*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?(?:@(?P<digest>sha256:[a-f0-9]{64}))?"
)
_REPO = re.compile(rf"{_DOMAIN}?{_NAME_COMPONENT}(?:/{_NAME_COMPONENT})*")
_MEMORY = re.compile(r"(?P<num>[0-9]+)(?P<unit>|b|k|kb|ki|kib|m|mb|mi|mib|g|gb|gi|gib)", re.IGNORECASE)
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_LOG_SIZE = re.compile(r"[1-9][0-9]*[kmg]")
_INTEGER = re.compile(r"[0-9]{1,9}")
_HOST_PORT = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?(?::[0-9]{1,5})?")
_INDEX_URL = re.compile(rf"https?://{_HOST_PORT.pattern}(?:/[A-Za-z0-9._~%/+-]*)?")
_UNIT_BYTES = {"": 1, "b": 1, "k": 1024, "kb": 1024, "ki": 1024, "kib": 1024, "m": 1024**2, "mb": 1024**2,
               "mi": 1024**2, "mib": 1024**2, "g": 1024**3, "gb": 1024**3, "gi": 1024**3, "gib": 1024**3}


@dataclass(frozen=True)
class SwarmSettings:
    """How the same containers become Swarm services (docs/swarm.md)."""

    endpoint_mode: str
    replicas: dict[str, int]  # app service -> tasks
    db_node_label: str  # the database, its job and its backups run where node.labels.<this> == true
    encrypted: bool
    proxy_image: str
    proxy_ports: tuple[tuple[str, int, int], ...]  # (service, published port, container port), dnsrr only
    publish_api: bool = False  # the API's port on every node; off, it is reached through the frontend only
    members: int = 1  # 3: a Patroni cluster, member k (and etcd k) where node.labels.<db_node_label> == k
    etcd_image: str = ""
    patroni_image: str = ""

    def published(self, service: str) -> bool:
        """Whether `service`'s port is published (on every address of every node: Swarm has no host address)."""
        return service == "frontend" or (service == "api" and self.publish_api)

    @property
    def db_constraint(self) -> str:
        """Where the database's node-local volumes are: the one server's node, or member 1's."""
        return f"node.labels.{self.db_node_label}=={'true' if self.members == 1 else '1'}"

    def member_constraint(self, k: int) -> str:
        return f"node.labels.{self.db_node_label}=={k}"


@dataclass(frozen=True)
class StackSettings:
    project: str
    stack: str
    environment: str
    networks: dict[str, str]  # logical name -> engine name
    volumes: dict[str, str]  # logical name -> engine name
    postgres_image: str
    python_base_image: str
    app_image: str
    app_build_args: tuple[tuple[str, str], ...]
    db_name: str
    db_superuser: str
    db_app_user: str
    db_backup_user: str
    admin_user: str
    protect_data: bool
    log_max_size: str
    log_max_file: int
    postgres: ContainerSpec
    provision: ContainerSpec
    apps: tuple[ContainerSpec, ...]
    backup: ContainerSpec
    postgres_major: int
    backup_interval_s: int
    backup_keep: int
    backup_tiers: dict[str, int]  # daily, weekly, monthly: periods whose newest backup is kept
    secret_versions: dict[str, int] = field(default_factory=dict)  # secret name -> rotation version
    target: str = "single"
    swarm: SwarmSettings | None = None  # set when target is swarm
    pitr: PitrSettings | None = None  # set when pitr is on
    pitr_runner: ContainerSpec | None = None  # db-pitr: base backups and drills (with pitr)
    wal_receiver: ContainerSpec | None = None  # db-walreceiver (with pitrSyncReceiver)
    # Volumes created with driver options (the shared socket is a tmpfs): logical name -> options.
    volume_driver_opts: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def volume_name(self) -> str:
        """The data volume: the one that matters for backups and protection."""
        return self.volumes[VOL_DATA]

    @property
    def prefix(self) -> str:
        return f"{self.project}-{self.stack}"

    @property
    def ops_lock(self) -> str:
        """The container whose existence says an operation (restore, upgrade, adopt) holds the stack; ops and
        deploy.sh refuse to start beside it."""
        return f"{self.prefix}-ops-lock"

    @property
    def containers(self) -> tuple[ContainerSpec, ...]:
        return (self.postgres, self.provision, *self.apps, self.backup,
                *((self.pitr_runner,) if self.pitr_runner else ()),
                *((self.wal_receiver,) if self.wal_receiver else ()))

    @property
    def app_group(self) -> str:
        return app_role_names(self.db_app_user)[2]

    @property
    def log_opts(self) -> dict[str, str]:
        return {"max-file": str(self.log_max_file), "max-size": self.log_max_size}

    def app(self, service: str) -> ContainerSpec:
        return next(a for a in self.apps if a.service == service)

    @property
    def generated_secrets(self) -> tuple[SecretSpec, ...]:
        """What this stack generates: the passwords, with an off-host repository its cipher key, on a swarm the
        key of its secrets' names."""
        return (*SECRETS, *((SECRET_PITR_CIPHER,) if self.pitr and self.pitr.offhost else ()),
                *((SECRET_SWARM_NAME_KEY,) if self.swarm else ()),
                *(PATRONI_SECRETS if self.swarm and self.swarm.members == 3 else ()))

    @property
    def supplied_secrets(self) -> tuple[SecretSpec, ...]:
        """What only the user can give: the object store's keys, or the SSH login's key."""
        return OFFHOST_SECRETS[self.pitr.offhost_kind] if self.pitr and self.pitr.offhost else ()


def _fail(key: str, value: object, allowed: str) -> ConfigError:
    return ConfigError(f"config key '{PROJECT}:{key}' has invalid value {value!r}: {allowed}")


class _Reader:
    """Typed access to raw config strings, each failure naming key, value and what is allowed."""

    def __init__(self, raw: Mapping[str, str]) -> None:
        self.raw = raw

    def text(self, key: str) -> str:
        value = self.raw.get(key)
        if value is None:
            default = KNOWN_KEYS[key].default
            if default is None:
                raise ConfigError(f"config key '{PROJECT}:{key}' is required: {KNOWN_KEYS[key].description}")
            return default
        return value

    def parsed(self, key: str, parse: Callable[[str], _T], allowed: str) -> _T:
        value = self.text(key)
        try:
            return parse(value)
        except (ValueError, TypeError, KeyError):
            raise _fail(key, value, allowed) from None

    def integer(self, key: str, lo: int, hi: int) -> int:
        def parse(v: str) -> int:
            if not _INTEGER.fullmatch(v):
                raise ValueError
            n = int(v)
            if not lo <= n <= hi:
                raise ValueError
            return n

        return self.parsed(key, parse, f"an integer from {lo} to {hi}")

    def boolean(self, key: str) -> bool:
        table = {"true": True, "false": False}
        return self.parsed(key, lambda v: table[v.lower()], "true or false")

    def choice(self, key: str, allowed: tuple[str, ...]) -> str:
        return self.parsed(key, lambda v: v if v in allowed else _raise(), "one of " + ", ".join(allowed))

    def ident(self, key: str, reserved: tuple[str, ...] = (), reserved_prefix: str = "", why: str = "") -> str:
        """A lower-case SQL identifier, none of `reserved` and not starting with `reserved_prefix`."""
        def parse(v: str) -> str:
            if not _IDENT.fullmatch(v) or v in reserved or (reserved_prefix and v.startswith(reserved_prefix)):
                raise ValueError
            return v

        return self.parsed(key, parse, "a lower-case SQL identifier ([a-z_][a-z0-9_]*, at most 63 characters)" + why)

    def role(self, key: str) -> str:
        return self.ident(key, RESERVED_ROLE_NAMES, RESERVED_ROLE_PREFIX,
                          f" that PostgreSQL does not reserve (not {RESERVED_ROLE_PREFIX}*, not "
                          + ", ".join(RESERVED_ROLE_NAMES) + ")")

    def ip(self, key: str, loopback_only: bool = False) -> str:
        def parse(v: str) -> str:
            addr = ipaddress.ip_address(v)
            if loopback_only and not addr.is_loopback:
                raise ValueError
            return str(addr)

        allowed = "a loopback address such as 127.0.0.1" if loopback_only else "an IP address such as 127.0.0.1"
        return self.parsed(key, parse, allowed)

    def memory_mb(self, key: str) -> int | None:
        def parse(v: str) -> int | None:
            if v == "":
                return None
            m = _MEMORY.fullmatch(v)
            if not m:
                raise ValueError
            mb = int(m["num"]) * _UNIT_BYTES[m["unit"].lower()] // 1024**2
            if mb < 6:  # Docker's own minimum is 6 MiB.
                raise ValueError
            return mb

        return self.parsed(key, parse, "a size of at least 6Mi such as 256Mi, 512m or 1Gi, or empty for no limit")

    def image(self, key: str, postgres: bool = False) -> str:
        def parse(v: str) -> str:
            m = _IMAGE_REF.fullmatch(v)
            if not m or not (m["tag"] or m["digest"]) or m["tag"] == "latest":
                raise ValueError
            if postgres:
                major = re.match(r"\d+", m["tag"] or "")
                if not major or int(major[0]) not in SUPPORTED_POSTGRES_MAJORS:
                    raise ValueError
            return v

        allowed = "an image reference pinned by tag or digest (not 'latest'), e.g. name:1.2.3"
        if postgres:
            allowed = (f"a postgres image tagged with a supported major version "
                       f"({SUPPORTED_POSTGRES_MAJORS.start}-{SUPPORTED_POSTGRES_MAJORS.stop - 1}), e.g. postgres:17.6")
        return self.parsed(key, parse, allowed)


def _raise() -> str:
    raise ValueError


def _check_unknown_keys(raw: Mapping[str, str]) -> None:
    for key in sorted(raw):
        if key not in KNOWN_KEYS:
            close = difflib.get_close_matches(key, KNOWN_KEYS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(
                f"unknown config key '{PROJECT}:{key}' with value {raw[key]!r}{hint}; "
                f"allowed keys: {', '.join(sorted(KNOWN_KEYS))}"
            )


def _check_characters(raw: Mapping[str, str]) -> None:
    """No control or format character in any value: a trailing newline in a role name would reach SQL."""
    secret_keys = {s.config_key for s in (*USER_SECRETS, *SUPPLIED_SECRETS)}
    for key in sorted(raw):
        # A private key's lines end in newlines; nothing else may.
        newline_ok = key == SECRET_SFTP_KEY.config_key
        bad = next((c for c in raw[key] if unicodedata.category(c).startswith("C")
                    and not (newline_ok and c == "\n")), None)
        if bad is not None:
            shown = "<secret>" if key in secret_keys else repr(raw[key])
            raise ConfigError(f"config key '{PROJECT}:{key}' has invalid value {shown}: no control or format "
                              f"characters (found U+{ord(bad):04X})")


# Passwords users supply (stack config secrets) must be at least this long; generated ones are SecretSpec.length.
MIN_USER_PASSWORD = 16


def password_problem(value: str, min_length: int) -> str | None:
    """Why `value` is unusable as a password, or None. The reason never quotes the value.

    One rule for every source (stack config, compose secret files): the app refuses the same values at
    run time (stock_app.config.usable_secret), so nothing accepted here is refused there.
    """
    if not value.strip():
        return "it is empty or only whitespace"
    bad = next((c for c in value if unicodedata.category(c).startswith("C")), None)
    if bad is not None:
        return f"it holds a control or format character (U+{ord(bad):04X}; a trailing newline?)"
    if value != value.strip():
        return "it starts or ends with whitespace"
    if len(value) < min_length:
        return f"it has {len(value)} characters; at least {min_length} are required"
    return None


def check_user_passwords(raw: Mapping[str, str]) -> None:
    """Passwords set in stack config (`pulumi config set --secret`), refused without echoing them."""
    for spec in USER_SECRETS:
        if spec.config_key in raw:
            problem = password_problem(raw[spec.config_key], MIN_USER_PASSWORD)
            if problem:
                raise ConfigError(f"config key '{PROJECT}:{spec.config_key}' has an unusable value (not shown): "
                                  f"{problem}; set another with `pulumi config set --secret {spec.config_key}`, "
                                  "or remove it to generate one")


def _app_healthcheck(port: int) -> Healthcheck:
    # start_interval probes every 200 ms while starting, so the app is seen healthy within 0.2 s of being
    # ready instead of after the legacy 30 s interval (steady-state probes stay at 10 s).
    return Healthcheck(
        test=("CMD", "python", "-m", "stock_app.healthcheck", f"http://127.0.0.1:{port}/health"),
        interval_s=10, timeout_s=3, retries=3, start_period_s=30, start_interval_ms=START_INTERVAL_MS,
    )


def load_settings(raw_config: Mapping[str, str], stack: str, project: str = PROJECT) -> StackSettings:
    """Validate raw project config (keys without the namespace) and derive every container's spec: one
    small reader per concern, then one builder per container.

    Password keys are only checked for presence here: their values travel as Pulumi secrets and are
    never part of the settings.
    """
    _check_unknown_keys(raw_config)
    _check_characters(raw_config)
    r = _Reader(raw_config)
    environment = r.choice("environment", ENVIRONMENTS)
    prod = environment == "prod"
    db = _database(r)
    run = _runtime(r, prod)
    admin_user = r.parsed("adminUser", lambda v: v if re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", v) else _raise(),
                          "1-64 characters from A-Z a-z 0-9 _ . -")
    bindings = _bindings(r, prod)
    images = _images(r, stack)
    backups = _backups(r)
    target = r.choice("target", TARGETS)
    swarm = _swarm_settings(r, bindings, images.postgres) if target == "swarm" else None
    if not swarm and r.text("postgresMembers") != "1":
        raise _fail("postgresMembers", r.raw["postgresMembers"], f"1 unless {PROJECT}:target is swarm (one host runs "
                    "one server; a replicated database needs nodes of its own)")
    prefix = f"{project}-{stack}"
    pitr = _pitr(r, prod, db, images.postgres, project) if r.boolean("pitr") else None
    if not pitr and r.boolean("pitrSyncReceiver"):
        raise _fail("pitrSyncReceiver", "true", f"false unless {PROJECT}:pitr is true (the receiver is part of "
                    "point-in-time recovery; without it nothing would protect the writes it is asked to)")
    if pitr and swarm:
        raise _fail("pitr", "true", f"false with {PROJECT}:target swarm (point-in-time recovery runs on the single "
                    "host today; the swarm's replicated database is docs/swarm.md's)")
    volumes = [VOL_DATA, VOL_APP_CREDENTIALS, VOL_PROVISION_STATE, VOL_BACKUPS,
               *((VOL_PITR_REPO, VOL_PITR_SOCKET, VOL_PITR_SCRATCH) if pitr else ()),
               *((VOL_PITR_WALSTREAM,) if pitr and pitr.sync_receiver else ())]
    return StackSettings(
        project=project,
        stack=stack,
        environment=environment,
        networks={n: f"{prefix}_{n}" for n in (NET_BACKEND, NET_FRONTEND,
                                                *((NET_DCS,) if swarm and swarm.members == 3 else ()))},
        volumes={v: f"{prefix}_{v}" for v in volumes},
        postgres_image=images.postgres,
        python_base_image=images.python_base,
        app_image=images.app,
        app_build_args=images.build_args,
        db_name=db.name,
        db_superuser=db.superuser,
        db_app_user=db.app_user,
        db_backup_user=db.backup_user,
        admin_user=admin_user,
        protect_data=run.protect,
        log_max_size=r.parsed("logMaxSize", lambda v: v if _LOG_SIZE.fullmatch(v) else _raise(),
                              "a size with unit k, m or g, e.g. 10m"),
        log_max_file=r.integer("logMaxFile", 1, 100),
        postgres=_postgres_spec(prefix, db, run, bindings, pitr),
        provision=_provision_spec(prefix, db, local_commits=bool(pitr and pitr.sync_receiver)),
        apps=_app_specs(prefix, environment, db, run, bindings, admin_user, pitr is not None),
        backup=_backup_spec(prefix, db, run, backups),
        postgres_major=images.postgres_major,
        backup_interval_s=backups.interval_min * 60,
        backup_keep=backups.keep,
        backup_tiers=backups.tiers,
        secret_versions={spec.name: r.integer(spec.version_key, 1, 1_000_000) for spec in USER_SECRETS},
        target=target,
        swarm=swarm,
        pitr=pitr,
        pitr_runner=_pitr_spec(prefix, db, run, pitr) if pitr else None,
        wal_receiver=_receiver_spec(prefix, db, run, pitr) if pitr and pitr.sync_receiver else None,
        volume_driver_opts={VOL_PITR_SOCKET: {
            "type": "tmpfs", "device": "tmpfs",
            "o": f"size=1m,uid={POSTGRES_UID},gid={POSTGRES_UID},mode=0775"}} if pitr else {},
    )


# --- readers: one concern each, every failure naming key, value and what is allowed ---------------------


@dataclass(frozen=True)
class _Db:
    name: str
    superuser: str
    app_user: str
    backup_user: str
    schemas: str  # the app's schemas, comma-separated; empty: every schema that holds a table


def _database(r: _Reader) -> _Db:
    """Who is who in the database: every role the provisioning job creates or alters differs from the
    superuser (granting it to the app would hand the app superuser rights; disabling it would lock the job
    out)."""
    name = r.ident("dbName", RESERVED_DB_NAMES, why=", not a template database")
    superuser, app_user = r.role("dbSuperuser"), r.role("dbAppUser")
    if len(app_user) > 60:  # room for the _b (second login role) and _rw (group) suffixes
        raise _fail("dbAppUser", app_user, "at most 60 characters")
    app_roles = app_role_names(app_user)
    if app_user == superuser:
        raise _fail("dbAppUser", app_user, f"a role other than the superuser '{superuser}'")
    if superuser in app_roles:
        raise _fail("dbSuperuser", superuser, f"a role other than the app's roles {', '.join(app_roles)} "
                    f"(derived from {PROJECT}:dbAppUser)")
    schemas = r.parsed("appSchemas", _schema_list, "empty, or schema names ([a-z_][a-z0-9_]*, not pg_*) "
                       "separated by commas, e.g. public,analytics")
    backup_user = r.role("dbBackupUser")
    if backup_user == superuser or backup_user in app_roles:
        raise _fail("dbBackupUser", backup_user, f"a role other than the superuser and the app's roles "
                    f"{', '.join((superuser, *app_roles))}")
    return _Db(name, superuser, app_user, backup_user, schemas)


@dataclass(frozen=True)
class _Runtime:
    restart: str
    max_retries: int | None
    memory: dict[str, int | None]  # postgres, api, frontend, admin
    protect: bool


def _runtime(r: _Reader, prod: bool) -> _Runtime:
    """How containers run and what protects the data; prod insists on limits and protection."""
    restart = r.choice("restartPolicy", SERVICE_RESTART_POLICIES)
    max_retries = r.integer("restartMaxRetries", 1, 100) if restart == "on-failure" else None
    memory = {key: r.memory_mb(f"{key}Memory") for key in ("postgres", "api", "frontend", "admin")}
    protect = r.boolean("protectData")
    if prod:
        if not protect:
            raise _fail("protectData", r.raw.get("protectData", "false"), "true in prod")
        for key, mb in memory.items():
            if mb is None:
                raise _fail(f"{key}Memory", r.raw.get(f"{key}Memory", ""),
                            "a memory limit such as 512Mi: prod sets one on every container")
    return _Runtime(restart, max_retries, memory, protect)


def _bindings(r: _Reader, prod: bool) -> dict[str, PortBinding]:
    """Host ports, one service per host port; the database only on loopback, and never in prod."""
    pg_host_port = r.integer("postgresHostPort", 0, 65535)
    pg_host_ip = r.ip("postgresHostIp", loopback_only=True)
    if prod and pg_host_port:
        raise _fail("postgresHostPort", pg_host_port, "0 in prod: prod publishes no database port")
    bindings: dict[str, PortBinding] = {}
    for svc, container_port in APP_PORTS.items():
        bindings[svc] = PortBinding(r.ip(f"{svc}HostIp"), r.integer(f"{svc}HostPort", 1, 65535), container_port)
    if pg_host_port:
        bindings["postgres"] = PortBinding(pg_host_ip, pg_host_port, POSTGRES_PORT)
    if prod and not ipaddress.ip_address(bindings["admin"].host_ip).is_loopback:
        # Basic auth over plain HTTP: the admin password would cross the network readable by anyone on the path.
        raise _fail("adminHostIp", bindings["admin"].host_ip, "a loopback address such as 127.0.0.1 in prod "
                    "(the admin UI speaks basic auth over plain HTTP; reach it through an SSH tunnel)")
    seen: dict[int, str] = {}
    for svc, b in bindings.items():
        if b.host_port in seen:
            raise _fail(f"{svc}HostPort", b.host_port,
                        f"a host port not already used by {seen[b.host_port]} ({PROJECT}:{seen[b.host_port]}HostPort)")
        seen[b.host_port] = svc
    return bindings


@dataclass(frozen=True)
class _Images:
    postgres: str
    postgres_major: int
    python_base: str
    app: str
    build_args: tuple[tuple[str, str], ...]


def _images(r: _Reader, stack: str) -> _Images:
    """What runs: the app image and how it is built, the Postgres image and the major of the data."""
    app_repo = r.parsed("appImageName", lambda v: v if _REPO.fullmatch(v) else _raise(),
                        "an image repository name without tag, e.g. stock-analyzer-app")
    app_tag = r.parsed("appImageTag", lambda v: v if v == "" or _TAG.fullmatch(v) else _raise(),
                       "an image tag ([A-Za-z0-9_][A-Za-z0-9_.-]{0,127}), or empty for the stack name")
    # Without credentials in them: these land in build arguments, which the build's history shows.
    pip_index = r.parsed("pipIndexUrl", lambda v: v if v == "" or _INDEX_URL.fullmatch(v) else _raise(),
                         "an http(s) URL of a simple index without user:password, e.g. "
                         "https://pypi.example.internal/simple, or empty")
    pip_trusted = r.parsed("pipTrustedHost", lambda v: v if v == "" or _HOST_PORT.fullmatch(v) else _raise(),
                           "a host name or address with an optional :port, or empty")
    python_base_image = r.image("pythonBaseImage")
    postgres_image = r.image("postgresImage", postgres=True)
    postgres_major = image_major(postgres_image)
    data_major = r.integer("postgresDataMajor", 9, 99)
    if postgres_major < data_major:
        raise _fail("postgresImage", postgres_image, f"an image of PostgreSQL {data_major}, the major of the data "
                    f"directory ({PROJECT}:postgresDataMajor): a downgrade cannot read it, and is refused")
    if postgres_major > data_major:
        raise _fail("postgresImage", postgres_image, f"an image of PostgreSQL {data_major}, the major of the data "
                    f"directory ({PROJECT}:postgresDataMajor): to upgrade, run `python -m ops upgrade "
                    f"--stack {stack} --to-image {postgres_image}` first, then set both keys (docs/operations.md)")
    build_args = (("APP_UID", str(APP_UID)), ("BASE_IMAGE", python_base_image),
                  *((("PIP_INDEX_URL", pip_index),) if pip_index else ()),
                  *((("PIP_TRUSTED_HOST", pip_trusted),) if pip_trusted else ()))
    return _Images(postgres_image, postgres_major, python_base_image, f"{app_repo}:{app_tag or stack}", build_args)


@dataclass(frozen=True)
class _Backups:
    interval_min: int
    keep: int
    tiers: dict[str, int]  # daily, weekly, monthly


def _backups(r: _Reader) -> _Backups:
    return _Backups(r.integer("backupIntervalMinutes", 5, 60 * 24 * 31), r.integer("backupKeep", 1, 1000),
                    {tier: r.integer(f"backupKeep{tier.capitalize()}", 0, 1000) for tier in BACKUP_TIERS})


# --- builders: one container each, from what the readers returned --------------------------------------


def _postgres_spec(prefix: str, db: _Db, run: _Runtime, bindings: dict[str, PortBinding],
                   pitr: PitrSettings | None = None) -> ContainerSpec:
    base = ContainerSpec(
        service="postgres",
        container_name=f"{prefix}-postgres",
        command=(),
        env=tuple(sorted({
            "PGDATA": PGDATA,
            "POSTGRES_DB": db.name,
            "POSTGRES_PASSWORD_FILE": SECRET_POSTGRES_BOOTSTRAP.path,
            "POSTGRES_USER": db.superuser,
        }.items())),
        secrets=(SecretMount(SECRET_POSTGRES_BOOTSTRAP, POSTGRES_UID),),
        ports=(bindings["postgres"],) if "postgres" in bindings else (),
        # TCP to 127.0.0.1, not the socket: the temporary server run during initdb listens on the
        # socket only, so it never counts as healthy.
        healthcheck=Healthcheck(
            test=("CMD", "pg_isready", "-h", "127.0.0.1", "-p", str(POSTGRES_PORT), "-U", db.superuser, "-d",
                  db.name),
            interval_s=10, timeout_s=5, retries=5, start_period_s=POSTGRES_START_PERIOD_S,
            start_interval_ms=START_INTERVAL_MS,
        ),
        memory_mb=run.memory["postgres"],
        restart=run.restart,
        max_retries=run.max_retries,
        # The official entrypoint runs unprivileged when started as the postgres uid; the data volume
        # takes the ownership of the image's (postgres-owned) PGDATA on first use.
        user=f"{POSTGRES_UID}:{POSTGRES_UID}",
        tmpfs=((TMP_DIR, TMPFS_OPTS),
               ("/var/run/postgresql",
                f"rw,noexec,nosuid,nodev,size=1m,uid={POSTGRES_UID},gid={POSTGRES_UID},mode=0775")),
        aliases=(DB_ALIAS,),
        # Fast shutdown (roll back, checkpoint) with time to finish: without a grace period the provider
        # kills Postgres outright on replacement, forcing crash recovery on the next start.
        stop_signal="SIGINT",
        stop_grace_s=60,
        mounts=(VolumeMount(VOL_DATA, PGDATA),),
    )
    return _with_archiving(base, pitr) if pitr else base


def _pitr_env(p: PitrSettings) -> dict[str, str]:
    return {"PITR_REPOS": " ".join(str(n) for n in p.repos)}


def _pitr_secrets(p: PitrSettings) -> tuple[SecretMount, ...]:
    # Only the off-host repository is encrypted: the local one lives beside the data it copies.
    offhost = (SECRET_PITR_CIPHER, *OFFHOST_SECRETS[p.offhost_kind]) if p.offhost else ()
    return tuple(SecretMount(spec, POSTGRES_UID) for spec in offhost)


def _with_archiving(spec: ContainerSpec, p: PitrSettings) -> ContainerSpec:
    """The server archives every WAL segment itself (archive_command = pgBackRest's archive-push); its socket
    moves to a volume db-pitr shares (pgBackRest reaches Postgres by socket only)."""
    return replace(
        spec,
        command=("postgres", *pitr_model.server_options(p)),
        env=tuple(sorted({**dict(spec.env), **_pitr_env(p)}.items())),
        secrets=(*spec.secrets, *_pitr_secrets(p)),
        tmpfs=((TMP_DIR, TMPFS_OPTS),),
        uploads=pitr_files(p),
        mounts=(*spec.mounts, VolumeMount(VOL_PITR_REPO, pitr_model.REPO_DIR),
                VolumeMount(VOL_PITR_SOCKET, pitr_model.SOCKET_DIR)),
    )


def pitr_files(p: PitrSettings) -> tuple[tuple[str, str], ...]:
    conf = pitr_model.pgbackrest_conf(p, f"/{PROJECT}")
    return ((pitr_model.CONF_PATH, conf), *_script_files(pitr_model.PITR_SOURCE, pitr_model.PITR_TARGET))


def _pitr_spec(prefix: str, db: _Db, run: _Runtime, p: PitrSettings) -> ContainerSpec:
    """db-pitr: schedules base backups and drills; reads the data volume, never writes it."""
    return ContainerSpec(
        service="db-pitr",
        container_name=f"{prefix}-db-pitr",
        entrypoint=("sh", f"{pitr_model.PITR_TARGET}/pitr.sh"),
        command=("loop",),
        env=tuple(sorted({
            **_pitr_env(p),
            "PGDATA": PGDATA,
            "PGDATABASE": db.name,
            "PGUSER": db.superuser,
            "PITR_SOCKET_DIR": pitr_model.SOCKET_DIR,
            "PITR_STATUS_DIR": PITR_STATUS_DIR,
            "PITR_MARKS_DIR": PITR_MARKS_DIR,
            "PITR_SCRATCH_DIR": "/var/lib/pitr-scratch",
            "PITR_SCRATCH_PORT": str(pitr_model.SCRATCH_PORT),
            "PITR_FULL_INTERVAL_S": str(p.full_interval_h * 3600),
            "PITR_DIFF_INTERVAL_S": str(p.diff_interval_h * 3600),
            "PITR_DRILL_INTERVAL_S": str(p.drill_interval_h * 3600),
            "PITR_SWITCH_S": str(p.archive_timeout_s),
            "PITR_RECEIVER_SLOT": pitr_model.RECEIVER_SLOT,  # dropped when the receiver is off (pitr.sh)
            **({"PITR_RECEIVER": pitr_model.RECEIVER_NAME} if p.sync_receiver else {}),
        }.items())),
        secrets=_pitr_secrets(p),
        ports=(),
        healthcheck=Healthcheck(test=("CMD", "sh", f"{pitr_model.PITR_TARGET}/pitr.sh", "health"), interval_s=30,
                                timeout_s=10, retries=2, start_period_s=600, start_interval_ms=START_INTERVAL_MS),
        memory_mb=BACKUP_MEMORY_MB * 2,
        restart=run.restart,
        max_retries=run.max_retries,
        user=f"{POSTGRES_UID}:{POSTGRES_UID}",
        uploads=pitr_files(p),
        pids_limit=128,
        stop_grace_s=30,
        mounts=(VolumeMount(VOL_DATA, PGDATA, read_only=True), VolumeMount(VOL_PITR_REPO, pitr_model.REPO_DIR),
                VolumeMount(VOL_PITR_SOCKET, pitr_model.SOCKET_DIR), VolumeMount(VOL_BACKUPS, BACKUP_DIR),
                VolumeMount(VOL_PITR_SCRATCH, "/var/lib/pitr-scratch")),
    )


def receiver_env(db_name: str, superuser: str) -> dict[str, str]:
    """What pitr/walstream.sh reads, in db-walreceiver and in a restore's collect step."""
    return {
        "PGDATA": PGDATA,
        "PGDATABASE": db_name,
        "PGUSER": superuser,
        "PITR_SOCKET_DIR": pitr_model.SOCKET_DIR,
        "WALSTREAM_DIR": pitr_model.WALSTREAM_DIR,
        "WALSTREAM_NAME": pitr_model.RECEIVER_NAME,
        "WALSTREAM_SLOT": pitr_model.RECEIVER_SLOT,
    }


def _receiver_spec(prefix: str, db: _Db, run: _Runtime, p: PitrSettings) -> ContainerSpec:
    """db-walreceiver: pg_receivewal by the shared socket into its own volume; the server's commits wait for
    its flush. Healthy when the server names it its synchronous standby."""
    return ContainerSpec(
        service="db-walreceiver",
        container_name=f"{prefix}-db-walreceiver",
        entrypoint=("sh", f"{pitr_model.PITR_TARGET}/walstream.sh"),
        command=("run",),
        env=tuple(sorted(receiver_env(db.name, db.superuser).items())),
        secrets=(),
        ports=(),
        healthcheck=Healthcheck(test=("CMD", "sh", f"{pitr_model.PITR_TARGET}/walstream.sh", "health"),
                                interval_s=10, timeout_s=5, retries=3, start_period_s=60,
                                start_interval_ms=START_INTERVAL_MS),
        memory_mb=BACKUP_MEMORY_MB,
        restart=run.restart,
        max_retries=run.max_retries,
        user=f"{POSTGRES_UID}:{POSTGRES_UID}",
        uploads=pitr_files(p),
        pids_limit=64,
        stop_grace_s=10,
        mounts=(VolumeMount(VOL_PITR_SOCKET, pitr_model.SOCKET_DIR),
                VolumeMount(VOL_PITR_WALSTREAM, pitr_model.WALSTREAM_DIR)),
    )


def _pitr(r: _Reader, prod: bool, db: _Db, postgres_image: str, project: str) -> PitrSettings:
    """Archiving, schedules, retention by age, and the off-host repository."""
    offhost = r.choice("pitrOffhost", pitr_model.OFFHOST_KINDS)
    repo: S3Repo | SftpRepo | None = None
    if offhost == "sftp":
        repo = _sftp(r)
    if offhost == "s3":
        host, port = r.parsed("pitrS3Endpoint", pitr_model.parse_endpoint,
                              "the object store's HTTPS endpoint as host or host:port, e.g. s3.example.com")
        bucket = r.parsed("pitrS3Bucket", lambda v: v if pitr_model.valid_bucket(v) else _raise(),
                          "an S3 bucket name: 3-63 of a-z 0-9 . -, starting and ending with a letter or digit")
        region = r.parsed("pitrS3Region", lambda v: v if pitr_model.valid_region(v) else _raise(),
                          "a region name of a-z 0-9 -, e.g. us-east-1")
        verify = r.boolean("pitrS3VerifyTls")
        if prod and not verify:
            raise _fail("pitrS3VerifyTls", "false", "true in prod (an unverified endpoint can be anyone's)")
        repo = S3Repo(host, port, bucket, region, verify, r.integer("pitrOffhostRetentionDays", 1, 3650))
    return PitrSettings(
        archive_timeout_s=r.integer("pitrArchiveTimeoutSeconds", 1, 3600),
        full_interval_h=r.integer("pitrFullIntervalHours", 1, 24 * 90),
        diff_interval_h=r.integer("pitrDiffIntervalHours", 1, 24 * 90),
        drill_interval_h=r.integer("pitrDrillIntervalHours", 1, 24 * 90),
        local_retention_days=r.integer("pitrRetentionDays", 1, 3650),
        offhost=repo,
        superuser=db.superuser,
        image=pitr_model.pitr_image(postgres_image, project),
        sync_receiver=r.boolean("pitrSyncReceiver"),
    )


def _sftp(r: _Reader) -> SftpRepo:
    host, port = r.parsed("pitrSftpHost", pitr_model.parse_sftp_host,
                          "the SSH server as host or host:port, e.g. backups.example.com or 10.0.0.5:2222")
    user = r.parsed("pitrSftpUser", lambda v: v if pitr_model.valid_sftp_user(v) else _raise(),
                    "a login name: a-z _ then up to 31 of a-z 0-9 _ -")
    path = r.parsed("pitrSftpPath", lambda v: v if pitr_model.valid_sftp_path(v) else _raise(),
                    "an absolute path of A-Z a-z 0-9 . _ - between slashes, without . or .. parts")
    fingerprint = r.parsed("pitrSftpHostFingerprint", lambda v: v if pitr_model.valid_fingerprint(v) else _raise(),
                           "the SHA-256 of the server's host key as 64 lowercase hex digits (docs/recovery.md)")
    return SftpRepo(host, port, user, path, fingerprint, r.integer("pitrOffhostRetentionDays", 1, 3650))


def _provision_spec(prefix: str, db: _Db, local_commits: bool = False) -> ContainerSpec:
    """`local_commits` (with the synchronous receiver): the job's own commits do not wait for it. Roles and
    grants are made again by every run, so they need no RPO 0; and a deploy onto a new empty cluster finishes
    while the receiver refuses to mix that cluster into the WAL it holds (docs/recovery.md)."""
    return ContainerSpec(
        service="db-provision",
        container_name=f"{prefix}-db-provision",
        entrypoint=("sh", "/provision/provision.sh"),
        command=(),
        env=tuple(sorted({
            "APP_CREDENTIALS_FILE": APP_CREDENTIALS_FILE,
            "APP_DB_PASSWORD_FILE": SECRET_APP_DB.path,
            "APP_DB_USER": db.app_user,
            "APP_SCHEMAS": db.schemas,
            "BACKUP_DB_USER": db.backup_user,
            "BACKUP_DB_PASSWORD_FILE": SECRET_BACKUP_DB.path,
            "APP_UID": str(APP_UID),
            "PGDATABASE": db.name,
            "PGHOST": DB_ALIAS,
            "PGPORT": str(POSTGRES_PORT),
            "PGUSER": db.superuser,
            "POSTGRES_BOOTSTRAP_PASSWORD_FILE": SECRET_POSTGRES_BOOTSTRAP.path,
            "POSTGRES_PASSWORD_FILE": SECRET_POSTGRES.path,
            "PROVISION_STATE_DIR": PROVISION_STATE_DIR,
            # As long as the server's healthcheck allows it to start (its start period).
            "PROVISION_WAIT_S": str(POSTGRES_START_PERIOD_S),
            "BACKUP_DIR": BACKUP_DIR,
            "BACKUP_UID": str(POSTGRES_UID),
            **({"PGOPTIONS": "-c synchronous_commit=local"} if local_commits else {}),
        }.items())),
        secrets=tuple(SecretMount(spec, 0)
                      for spec in (SECRET_POSTGRES, SECRET_APP_DB, SECRET_BACKUP_DB, SECRET_POSTGRES_BOOTSTRAP)),
        pids_limit=64,
        ports=(),
        healthcheck=None,
        memory_mb=PROVISION_MEMORY_MB,
        restart="no",
        # root, with CHOWN as its only capability: it hands the credential file to the app's uid.
        user="0",
        cap_add=("CHOWN",),
        role="job",
        policy_exceptions=(("prod-non-root", "one-shot job: chowns the app's credential file to the app uid; "
                            "all capabilities but CHOWN dropped, read-only root, no-new-privileges (all checked)"),),
        uploads=provision_files(),
        mounts=(VolumeMount(VOL_APP_CREDENTIALS, APP_CREDENTIALS_DIR),
                VolumeMount(VOL_PROVISION_STATE, PROVISION_STATE_DIR),
                # Only to hand the (new, root-owned) backup directory to the postgres uid.
                VolumeMount(VOL_BACKUPS, BACKUP_DIR)),
    )


def _backup_spec(prefix: str, db: _Db, run: _Runtime, backups: _Backups) -> ContainerSpec:
    return ContainerSpec(
        service="db-backup",
        container_name=f"{prefix}-db-backup",
        entrypoint=("sh", f"{BACKUP_TARGET}/backup.sh"),
        command=("loop",),
        env=tuple(sorted({
            "APP_GROUP": app_role_names(db.app_user)[2],
            "APP_SCHEMAS": db.schemas,
            "BACKUP_DIR": BACKUP_DIR,
            "BACKUP_INTERVAL_S": str(backups.interval_min * 60),
            "BACKUP_KEEP": str(backups.keep),
            **{f"BACKUP_KEEP_{tier.upper()}": str(n) for tier, n in backups.tiers.items()},
            "PGDATABASE": db.name,
            "PGHOST": DB_ALIAS,
            "PGPORT": str(POSTGRES_PORT),
            # Least privilege: the backup role reads, never writes; a restore gets the superuser for its one
            # run from the operations CLI (ops), never from this container's own files.
            "PGUSER": db.backup_user,
            "BACKUP_DB_PASSWORD_FILE": SECRET_BACKUP_DB.path,
        }.items())),
        secrets=(SecretMount(SECRET_BACKUP_DB, POSTGRES_UID),),
        ports=(),
        # Healthy while the last backup attempt succeeded; the first runs at start.
        healthcheck=Healthcheck(test=("CMD", "sh", f"{BACKUP_TARGET}/backup.sh", "health"), interval_s=30,
                                timeout_s=10, retries=2, start_period_s=600, start_interval_ms=START_INTERVAL_MS),
        memory_mb=BACKUP_MEMORY_MB,
        restart=run.restart,
        max_retries=run.max_retries,
        user=f"{POSTGRES_UID}:{POSTGRES_UID}",
        uploads=backup_files(),
        pids_limit=64,
        stop_grace_s=30,
        mounts=(VolumeMount(VOL_BACKUPS, BACKUP_DIR),),
    )


def _app_specs(prefix: str, environment: str, db: _Db, run: _Runtime, bindings: dict[str, PortBinding],
               admin_user: str, pitr: bool = False) -> tuple[ContainerSpec, ...]:
    env_common = (("ENVIRONMENT", environment),)
    db_env = (("DB_HOST", DB_ALIAS), ("DB_NAME", db.name), ("DB_PORT", str(POSTGRES_PORT)),
              ("DB_CREDENTIALS_FILE", APP_CREDENTIALS_FILE))
    return (
        _app_spec(prefix, "api", APP_PORTS["api"], (*env_common, *db_env), (),
                  bindings["api"], run.memory["api"], run.restart, run.max_retries, (NET_BACKEND, NET_FRONTEND)),
        _app_spec(prefix, "frontend", APP_PORTS["frontend"],
                  (*env_common, ("API_URL", f"http://api:{APP_PORTS['api']}")), (),
                  bindings["frontend"], run.memory["frontend"], run.restart, run.max_retries, (NET_FRONTEND,)),
        _app_spec(prefix, "admin", APP_PORTS["admin"],
                  (*env_common, *db_env, ("ADMIN_USER", admin_user), ("ADMIN_PASSWORD_FILE", SECRET_ADMIN.path),
                   ("BACKUP_STATUS_FILE", f"{BACKUP_DIR}/status"),
                   *((("PITR_STATUS_DIR", PITR_STATUS_DIR),) if pitr else ())),
                  (SecretMount(SECRET_ADMIN, APP_UID),),
                  bindings["admin"], run.memory["admin"], run.restart, run.max_retries, (NET_BACKEND,)),
    )


HOST_IP_KEYS = ("postgresHostIp", "apiHostIp", "frontendHostIp", "adminHostIp")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,126}[a-z0-9])?")


def _swarm_settings(r: _Reader, bindings: dict[str, PortBinding], postgres_image: str) -> SwarmSettings:
    mode = r.choice("swarmEndpointMode", ENDPOINT_MODES)
    label = r.parsed("swarmDbNodeLabel", lambda v: v if _LABEL.fullmatch(v) else _raise(),
                     "a node label name: lower-case letters, digits, '.', '_', '-', e.g. stock-analyzer-db")
    # Swarm publishes on every address of every node: a host address cannot be honoured, so one set is
    # refused rather than ignored, and the API (loopback by default) is published only when swarmPublishApi
    # says so. The admin UI and the database are never published (docs/swarm.md: reach them by a tunnel).
    for key in HOST_IP_KEYS:
        # Pulumi hands the project's defaults (loopback) to every stack as set values: only another is refused.
        if r.text(key) != KNOWN_KEYS[key].default:
            raise _fail(key, r.raw[key], f"unset with {PROJECT}:target swarm: Swarm publishes a port on every address "
                        f"of every node and cannot bind one address; publish the API only with {PROJECT}:"
                        "swarmPublishApi true, reach the admin UI by a tunnel (docs/swarm.md)")
    if "postgres" in bindings:
        raise _fail("postgresHostPort", r.text("postgresHostPort"), f"0 with {PROJECT}:target swarm: the database "
                    "is never published on a swarm (it would be open on every node)")
    ports = tuple((svc, bindings[svc].host_port, bindings[svc].container_port) for svc in ("api", "frontend"))
    members = r.parsed("postgresMembers", lambda v: {"1": 1, "3": 3}[v],
                       "1 (one server) or 3 (a Patroni cluster: a quorum needs an odd number, and 5 is not built)")
    if members == 3 and mode != "dnsrr":
        raise _fail("swarmEndpointMode", mode, "dnsrr with postgresMembers 3 (the database router and the members "
                    "are reached by their tasks' addresses)")
    patroni = r.text("patroniImage") and r.image("patroniImage")
    return SwarmSettings(
        endpoint_mode=mode,
        replicas={svc: r.integer(f"{svc}Replicas", 1, PROXY_MAX_TASKS) for svc in ("api", "frontend", "admin")},
        db_node_label=label,
        encrypted=r.boolean("swarmEncryptOverlay"),
        proxy_image=r.image("proxyImage"),
        proxy_ports=ports,
        publish_api=r.boolean("swarmPublishApi"),
        members=members,
        etcd_image=r.image("etcdImage"),
        patroni_image=patroni or f"stock-analyzer-patroni:{postgres_image.split(':')[-1]}",
    )


# Shared by both outputs (Pulumi containers and compose services), so they live in the model.
SECURITY_OPTS = ("no-new-privileges:true",)


def spec_labels(spec: ContainerSpec, settings: StackSettings) -> dict[str, str]:
    """Labels both outputs carry; the policy pack reads role, environment and reviewed exceptions."""
    return {
        "stock-analyzer.environment": settings.environment,
        "stock-analyzer.role": spec.role,
        "stock-analyzer.service": spec.service,
        "stock-analyzer.stack": settings.stack,
        **{f"stock-analyzer.policy-exception.{policy}": reason for policy, reason in spec.policy_exceptions},
    }


def _schema_list(value: str) -> str:
    names = value.split(",") if value else []
    if any(not _IDENT.fullmatch(n) or n.startswith("pg_") or n == "information_schema" for n in names):
        raise ValueError
    if len(set(names)) != len(names):
        raise ValueError
    return value


def is_image_ref(value: str) -> bool:
    """A whole image reference: name, optional tag, optional @sha256 digest."""
    return _IMAGE_REF.fullmatch(value) is not None


def image_major(image: str) -> int:
    """The PostgreSQL major of a validated postgres image reference (its tag starts with it)."""
    m = _IMAGE_REF.fullmatch(image)
    tag = (m["tag"] if m else None) or ""
    major = re.match(r"[0-9]+", tag)
    if not major:
        raise ValueError(f"{image}: no major version in the tag")
    return int(major[0])


def app_role_names(app_user: str) -> tuple[str, str, str]:
    """The roles the provisioning job manages: two login roles that take turns, and their group."""
    return (app_user, f"{app_user}_b", f"{app_user}_rw")


def _app_spec(prefix: str, service: str, port: int, env: tuple[tuple[str, str], ...],
              secrets: tuple[SecretMount, ...], binding: PortBinding, memory_mb: int | None,
              restart: str, max_retries: int | None, networks: tuple[str, ...]) -> ContainerSpec:
    return ContainerSpec(
        service=service,
        container_name=f"{prefix}-{service}",
        command=("python", "-m", "stock_app", service, "--port", str(port)),
        env=tuple(sorted(env)),
        secrets=secrets,
        ports=(binding,),
        healthcheck=_app_healthcheck(port),
        memory_mb=memory_mb,
        restart=restart,
        max_retries=max_retries,
        user=f"{APP_UID}:{APP_UID}",
        aliases=(service,),
        networks=networks,
        mounts=(*((VolumeMount(VOL_APP_CREDENTIALS, APP_CREDENTIALS_DIR, read_only=True),)
                  if any(k == "DB_CREDENTIALS_FILE" for k, _ in env) else ()),
                *((VolumeMount(VOL_BACKUPS, BACKUP_DIR, read_only=True),)
                  if any(k == "BACKUP_STATUS_FILE" for k, _ in env) else ())),
    )
