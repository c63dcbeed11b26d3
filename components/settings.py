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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

PROJECT = "stock-analyzer"
ENVIRONMENTS = ("dev", "prod")
# Long-running services must come back; "no" is for one-shot jobs only.
SERVICE_RESTART_POLICIES = ("unless-stopped", "always", "on-failure")

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
# The app's database credential (user and password, one file) lives in a volume that the provisioning
# job writes and the app reads on every connection: rotating it needs no app restart.
APP_CREDENTIALS_DIR = "/run/app-credentials"
APP_CREDENTIALS_FILE = f"{APP_CREDENTIALS_DIR}/db"
PROVISION_STATE_DIR = "/var/lib/provision"
TMPFS_OPTS = "rw,noexec,nosuid,nodev,size=16m"
TMP_DIR = "/tmp"  # noqa: S108 (a private tmpfs inside the container, not the host's /tmp)
# Logical volume names (compose keys); the engine names are per stack, see StackSettings.volumes.
VOL_DATA, VOL_APP_CREDENTIALS, VOL_PROVISION_STATE = "postgres_data", "app_credentials", "provision_state"


class ConfigError(ValueError):
    """A stack config value is invalid; the message names the key, the value and what is allowed."""


@dataclass(frozen=True)
class SecretSpec:
    """A generated credential, delivered to containers only as a file."""

    name: str
    config_key: str
    description: str
    length: int = 32

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
SECRETS = (SECRET_POSTGRES, SECRET_APP_DB, SECRET_ADMIN)


@dataclass(frozen=True)
class Healthcheck:
    test: tuple[str, ...]
    interval_s: int
    timeout_s: int
    retries: int
    start_period_s: int
    start_interval_s: int


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
    aliases: tuple[str, ...] = ()
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
    ConfigKey("appImageName", "string", "Repository of the locally built app image; the tag is the stack name.",
              "stock-analyzer-app"),
    ConfigKey("dbName", "string", "Database name.", "stock_analysis"),
    ConfigKey("dbSuperuser", "string", "Database superuser (used only by the provisioning job).", "postgres"),
    ConfigKey("dbAppUser", "string", "Least-privileged login role the app connects as.", "stock_app"),
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
    ConfigKey("adminUser", "string", "Admin UI user name.", "admin"),
    *(ConfigKey(s.config_key, "string", f"Optional own {s.description}, set with --secret; generated when unset.",
                None, secret=True)
      for s in SECRETS),
    *(ConfigKey(s.version_key, "integer", f"Rotation trigger of the {s.description}; increase it to rotate.", "1")
      for s in SECRETS),
)
KNOWN_KEYS = {k.name: k for k in CONFIG_KEYS}

_T = TypeVar("_T")
_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
# Docker reference grammar (distribution/reference), with a mandatory tag or digest.
_NAME_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?/)"
_IMAGE_REF = re.compile(
    rf"^(?P<repo>{_DOMAIN}?{_NAME_COMPONENT}(?:/{_NAME_COMPONENT})*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?(?:@(?P<digest>sha256:[a-f0-9]{64}))?$"
)
_REPO = re.compile(rf"^{_DOMAIN}?{_NAME_COMPONENT}(?:/{_NAME_COMPONENT})*$")
_MEMORY = re.compile(r"^(?P<num>[0-9]+)(?P<unit>|b|k|kb|ki|kib|m|mb|mi|mib|g|gb|gi|gib)$", re.IGNORECASE)
_LOG_SIZE = re.compile(r"^[1-9][0-9]*[kmg]$")
_UNIT_BYTES = {"": 1, "b": 1, "k": 1024, "kb": 1024, "ki": 1024, "kib": 1024, "m": 1024**2, "mb": 1024**2,
               "mi": 1024**2, "mib": 1024**2, "g": 1024**3, "gb": 1024**3, "gi": 1024**3, "gib": 1024**3}


@dataclass(frozen=True)
class StackSettings:
    project: str
    stack: str
    environment: str
    network_name: str
    volumes: dict[str, str]  # logical name -> engine name
    postgres_image: str
    python_base_image: str
    app_image: str
    app_build_args: tuple[tuple[str, str], ...]
    db_name: str
    db_superuser: str
    db_app_user: str
    admin_user: str
    protect_data: bool
    log_max_size: str
    log_max_file: int
    postgres: ContainerSpec
    provision: ContainerSpec
    apps: tuple[ContainerSpec, ...]
    secret_versions: dict[str, int] = field(default_factory=dict)  # secret name -> rotation version

    @property
    def volume_name(self) -> str:
        """The data volume: the one that matters for backups and protection."""
        return self.volumes[VOL_DATA]

    @property
    def prefix(self) -> str:
        return f"{self.project}-{self.stack}"

    @property
    def containers(self) -> tuple[ContainerSpec, ...]:
        return (self.postgres, self.provision, *self.apps)

    @property
    def log_opts(self) -> dict[str, str]:
        return {"max-file": str(self.log_max_file), "max-size": self.log_max_size}

    def app(self, service: str) -> ContainerSpec:
        return next(a for a in self.apps if a.service == service)


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
            n = int(v.strip())
            if not lo <= n <= hi:
                raise ValueError
            return n

        return self.parsed(key, parse, f"an integer from {lo} to {hi}")

    def boolean(self, key: str) -> bool:
        table = {"true": True, "false": False}
        return self.parsed(key, lambda v: table[v.strip().lower()], "true or false")

    def choice(self, key: str, allowed: tuple[str, ...]) -> str:
        return self.parsed(key, lambda v: v if v in allowed else _raise(), "one of " + ", ".join(allowed))

    def ident(self, key: str) -> str:
        return self.parsed(key, lambda v: v if _IDENT.match(v) else _raise(),
                           "a lower-case SQL identifier: [a-z_][a-z0-9_]*, at most 63 characters")

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
            if v.strip() == "":
                return None
            m = _MEMORY.match(v.strip())
            if not m:
                raise ValueError
            mb = int(m["num"]) * _UNIT_BYTES[m["unit"].lower()] // 1024**2
            if mb < 6:  # Docker's own minimum is 6 MiB.
                raise ValueError
            return mb

        return self.parsed(key, parse, "a size of at least 6Mi such as 256Mi, 512m or 1Gi, or empty for no limit")

    def image(self, key: str, postgres: bool = False) -> str:
        def parse(v: str) -> str:
            m = _IMAGE_REF.match(v)
            if not m or not (m["tag"] or m["digest"]) or m["tag"] == "latest":
                raise ValueError
            if postgres:
                major = re.match(r"^(\d+)", m["tag"] or "")
                if not major or int(major[1]) not in SUPPORTED_POSTGRES_MAJORS:
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


def _app_healthcheck(port: int) -> Healthcheck:
    # start_interval probes every second while starting, so the app is seen healthy within ~1 s of
    # being ready instead of after the legacy 30 s interval.
    return Healthcheck(
        test=("CMD", "python", "-m", "stock_app.healthcheck", f"http://127.0.0.1:{port}/health"),
        interval_s=10, timeout_s=3, retries=3, start_period_s=30, start_interval_s=1,
    )


def load_settings(raw_config: Mapping[str, str], stack: str, project: str = PROJECT) -> StackSettings:
    """Validate raw project config (keys without the namespace) and derive every container's spec.

    Password keys are only checked for presence here: their values travel as Pulumi secrets and are
    never part of the settings.
    """
    _check_unknown_keys(raw_config)
    r = _Reader(raw_config)
    environment = r.choice("environment", ENVIRONMENTS)
    prod = environment == "prod"

    db_name, superuser, app_user = r.ident("dbName"), r.ident("dbSuperuser"), r.ident("dbAppUser")
    if app_user == superuser:
        raise _fail("dbAppUser", app_user, f"a role other than the superuser '{superuser}'")
    if len(app_user) > 60:  # room for the _b (second login role) and _rw (group) suffixes
        raise _fail("dbAppUser", app_user, "at most 60 characters")
    restart = r.choice("restartPolicy", SERVICE_RESTART_POLICIES)
    max_retries = r.integer("restartMaxRetries", 1, 100) if restart == "on-failure" else None
    admin_user = r.parsed("adminUser", lambda v: v if re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", v) else _raise(),
                          "1-64 characters from A-Z a-z 0-9 _ . -")
    app_repo = r.parsed("appImageName", lambda v: v if _REPO.match(v) else _raise(),
                        "an image repository name without tag, e.g. stock-analyzer-app")

    memory = {key: r.memory_mb(f"{key}Memory") for key in ("postgres", "api", "frontend", "admin")}
    pg_host_port = r.integer("postgresHostPort", 0, 65535)
    pg_host_ip = r.ip("postgresHostIp", loopback_only=True)
    protect = r.boolean("protectData")

    if prod:
        if pg_host_port:
            raise _fail("postgresHostPort", pg_host_port, "0 in prod: prod publishes no database port")
        if not protect:
            raise _fail("protectData", raw_config.get("protectData", "false"), "true in prod")
        for key, mb in memory.items():
            if mb is None:
                raise _fail(f"{key}Memory", raw_config.get(f"{key}Memory", ""),
                            "a memory limit such as 512Mi: prod sets one on every container")

    # Host ports: one service per host port.
    app_ports = {"api": 5000, "frontend": 8000, "admin": 8001}
    bindings: dict[str, PortBinding] = {}
    for svc, container_port in app_ports.items():
        bindings[svc] = PortBinding(r.ip(f"{svc}HostIp"), r.integer(f"{svc}HostPort", 1, 65535), container_port)
    if pg_host_port:
        bindings["postgres"] = PortBinding(pg_host_ip, pg_host_port, POSTGRES_PORT)
    seen: dict[int, str] = {}
    for svc, b in bindings.items():
        if b.host_port in seen:
            raise _fail(f"{svc}HostPort", b.host_port,
                        f"a host port not already used by {seen[b.host_port]} ({PROJECT}:{seen[b.host_port]}HostPort)")
        seen[b.host_port] = svc

    prefix = f"{project}-{stack}"
    python_base_image = r.image("pythonBaseImage")
    postgres_image = r.image("postgresImage", postgres=True)
    db_env = (("DB_HOST", DB_ALIAS), ("DB_NAME", db_name), ("DB_PORT", str(POSTGRES_PORT)))
    env_common = (("ENVIRONMENT", environment),)

    postgres = ContainerSpec(
        service="postgres",
        container_name=f"{prefix}-postgres",
        command=(),
        env=tuple(sorted({
            "PGDATA": PGDATA,
            "POSTGRES_DB": db_name,
            "POSTGRES_PASSWORD_FILE": SECRET_POSTGRES.path,
            "POSTGRES_USER": superuser,
        }.items())),
        secrets=(SecretMount(SECRET_POSTGRES, POSTGRES_UID),),
        ports=(bindings["postgres"],) if "postgres" in bindings else (),
        # TCP to 127.0.0.1, not the socket: the temporary server run during initdb listens on the
        # socket only, so it never counts as healthy.
        healthcheck=Healthcheck(
            test=("CMD", "pg_isready", "-h", "127.0.0.1", "-p", str(POSTGRES_PORT), "-U", superuser, "-d", db_name),
            interval_s=10, timeout_s=5, retries=5, start_period_s=60, start_interval_s=1,
        ),
        memory_mb=memory["postgres"],
        restart=restart,
        max_retries=max_retries,
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
    provision = ContainerSpec(
        service="db-provision",
        container_name=f"{prefix}-db-provision",
        entrypoint=("sh", "/provision/provision.sh"),
        command=(),
        env=tuple(sorted({
            "APP_CREDENTIALS_FILE": APP_CREDENTIALS_FILE,
            "APP_DB_PASSWORD_FILE": SECRET_APP_DB.path,
            "APP_DB_USER": app_user,
            "APP_UID": str(APP_UID),
            "PGDATABASE": db_name,
            "PGHOST": DB_ALIAS,
            "PGPORT": str(POSTGRES_PORT),
            "PGUSER": superuser,
            "POSTGRES_PASSWORD_FILE": SECRET_POSTGRES.path,
            "PROVISION_STATE_DIR": PROVISION_STATE_DIR,
        }.items())),
        secrets=(SecretMount(SECRET_POSTGRES, 0), SecretMount(SECRET_APP_DB, 0)),
        pids_limit=64,
        ports=(),
        healthcheck=None,
        memory_mb=PROVISION_MEMORY_MB,
        restart="no",
        # root, with CHOWN as its only capability: it hands the credential file to the app's uid.
        user="0",
        cap_add=("CHOWN",),
        role="job",
        policy_exceptions=(("prod-limits-and-non-root", "one-shot job: chowns the app's credential file to "
                            "the app uid; all capabilities but CHOWN dropped, read-only root, no-new-privileges"),),
        uploads=(("/provision/provision.sh", PROVISION_SCRIPT), ("/provision/provision.sql", PROVISION_SQL)),
        mounts=(VolumeMount(VOL_APP_CREDENTIALS, APP_CREDENTIALS_DIR),
                VolumeMount(VOL_PROVISION_STATE, PROVISION_STATE_DIR)),
    )
    app_db_env = (*db_env, ("DB_CREDENTIALS_FILE", APP_CREDENTIALS_FILE))
    apps = (
        _app_spec(prefix, "api", app_ports["api"], (*env_common, *app_db_env), (),
                  bindings["api"], memory["api"], restart, max_retries),
        _app_spec(prefix, "frontend", app_ports["frontend"],
                  (*env_common, ("API_URL", f"http://api:{app_ports['api']}")), (),
                  bindings["frontend"], memory["frontend"], restart, max_retries),
        _app_spec(prefix, "admin", app_ports["admin"],
                  (*env_common, *app_db_env, ("ADMIN_USER", admin_user), ("ADMIN_PASSWORD_FILE", SECRET_ADMIN.path)),
                  (SecretMount(SECRET_ADMIN, APP_UID),),
                  bindings["admin"], memory["admin"], restart, max_retries),
    )
    return StackSettings(
        project=project,
        stack=stack,
        environment=environment,
        network_name=f"{prefix}_net",
        volumes={v: f"{prefix}_{v}" for v in (VOL_DATA, VOL_APP_CREDENTIALS, VOL_PROVISION_STATE)},
        postgres_image=postgres_image,
        python_base_image=python_base_image,
        app_image=f"{app_repo}:{stack}",
        app_build_args=(("APP_UID", str(APP_UID)), ("BASE_IMAGE", python_base_image)),
        db_name=db_name,
        db_superuser=superuser,
        db_app_user=app_user,
        admin_user=admin_user,
        protect_data=protect,
        log_max_size=r.parsed("logMaxSize", lambda v: v if _LOG_SIZE.match(v) else _raise(),
                              "a size with unit k, m or g, e.g. 10m"),
        log_max_file=r.integer("logMaxFile", 1, 100),
        postgres=postgres,
        provision=provision,
        apps=apps,
        secret_versions={spec.name: r.integer(spec.version_key, 1, 1_000_000) for spec in SECRETS},
    )


def _app_spec(prefix: str, service: str, port: int, env: tuple[tuple[str, str], ...],
              secrets: tuple[SecretMount, ...], binding: PortBinding, memory_mb: int | None,
              restart: str, max_retries: int | None) -> ContainerSpec:
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
        mounts=(VolumeMount(VOL_APP_CREDENTIALS, APP_CREDENTIALS_DIR, read_only=True),)
        if any(k == "DB_CREDENTIALS_FILE" for k, _ in env) else (),
    )


# The provisioning job: idempotent, run as root in the Postgres image after Postgres is healthy and before
# any app container starts, and again whenever a password it carries changes. It owns the schema (the
# app roles get no DDL rights) and applies rotations to the running database:
# - superuser: logs in with the current password, else with the previous one (kept in a volume only
#   this job mounts) and moves the role to the current one;
# - app role: two login roles take turns (APP_DB_USER and APP_DB_USER_b). The new password goes to the
#   idle one, the credential file the app reads on every connection is swapped atomically, and the
#   old role loses its login once its sessions have ended. The API never sees a refused login.
PROVISION_SCRIPT = """\
#!/bin/sh
set -eu
umask 077
log() { echo "provision: $*"; }
sessions_of() {
  psql -X -At -v r="$1" <<'SQL'
SELECT count(*) FROM pg_stat_activity WHERE usename = :'r';
SQL
}
state="$PROVISION_STATE_DIR/postgres_password"

PGPASSWORD="$(cat "$POSTGRES_PASSWORD_FILE")"
export PGPASSWORD
if ! err=$(psql -X -q -c 'SELECT 1' 2>&1 >/dev/null); then
  case "$err" in
    *"password authentication failed"*) ;;
    *) echo "$err" >&2; exit 1 ;;
  esac
  if [ ! -s "$state" ]; then
    echo "provision: the superuser password was refused and no previous password is recorded" >&2
    exit 1
  fi
  PGPASSWORD="$(cat "$state")" psql -X -q -v ON_ERROR_STOP=1 -v su="$PGUSER" <<'SQL'
\\set pw `cat "$POSTGRES_PASSWORD_FILE"`
ALTER ROLE :"su" PASSWORD :'pw';
SQL
  log "superuser password rotated"
fi
cp "$POSTGRES_PASSWORD_FILE" "$state.tmp" && mv -f "$state.tmp" "$state"

creds="$APP_CREDENTIALS_FILE"
app_state="$PROVISION_STATE_DIR/app_credentials"
slot_a="$APP_DB_USER"
slot_b="${APP_DB_USER}_b"
new_pw="$(cat "$APP_DB_PASSWORD_FILE")"
old_user=""
old_pw=""
if [ -s "$app_state" ]; then
  old_user=$(sed -n 1p "$app_state")
  old_pw=$(sed -n 2p "$app_state")
fi
if [ -z "$old_user" ]; then active="$slot_a"
elif [ "$old_pw" = "$new_pw" ]; then active="$old_user"
elif [ "$old_user" = "$slot_a" ]; then active="$slot_b"
else active="$slot_a"
fi
if [ "$active" = "$slot_a" ]; then inactive="$slot_b"; else inactive="$slot_a"; fi

psql -X -q -v ON_ERROR_STOP=1 -v active="$active" -v inactive="$inactive" -v app_group="${APP_DB_USER}_rw" \\
  -f /provision/provision.sql

printf '%s\\n%s\\n' "$active" "$new_pw" > "$app_state.tmp"
mv -f "$app_state.tmp" "$app_state"
rm -f "$creds.tmp"
cp "$app_state" "$creds.tmp"
chmod 0400 "$creds.tmp"
chown "$APP_UID:$APP_UID" "$creds.tmp"
mv -f "$creds.tmp" "$creds"

if [ -n "$old_user" ] && [ "$old_user" != "$active" ]; then
  log "app role moves from $old_user to $active; waiting for $old_user sessions to end"
  sleep 3
  i=0
  while [ "$i" -lt 60 ] && [ "$(sessions_of "$old_user")" != "0" ]; do
    i=$((i + 1))
    sleep 0.5
  done
fi
psql -X -q -v ON_ERROR_STOP=1 -v r="$inactive" <<'SQL' >/dev/null
ALTER ROLE :"r" NOLOGIN PASSWORD NULL;
SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = :'r';
SQL
log "done; the app connects as $active"
"""

PROVISION_SQL = """\
\\set app_password `cat "$APP_DB_PASSWORD_FILE"`
SELECT format('CREATE ROLE %I NOLOGIN', :'app_group')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'app_group') \\gexec
SELECT format('CREATE ROLE %I NOLOGIN', r) FROM (VALUES (:'active'), (:'inactive')) AS v(r)
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = r) \\gexec
ALTER ROLE :"active" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'app_password';
GRANT :"app_group" TO :"active";
GRANT :"app_group" TO :"inactive";
REVOKE ALL ON DATABASE :"DBNAME" FROM PUBLIC;
GRANT CONNECT ON DATABASE :"DBNAME" TO :"app_group";
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO :"app_group";
CREATE TABLE IF NOT EXISTS stock_prices (
    id bigserial PRIMARY KEY,
    symbol text NOT NULL CHECK (symbol ~ '^[A-Z0-9.]{1,12}$'),
    day date NOT NULL,
    close numeric(14, 4) NOT NULL CHECK (close >= 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (symbol, day)
);
GRANT SELECT, INSERT, UPDATE ON stock_prices TO :"app_group";
GRANT USAGE ON SEQUENCE stock_prices_id_seq TO :"app_group";
"""
