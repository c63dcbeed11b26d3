"""The swarm target's services, derived from the same settings as the single-host containers.

Pure (no Pulumi): the stack file for `docker stack deploy` (exporters/swarm_stack.py) and the Pulumi
swarm components (components/swarm.py) both serialise this model, so they cannot disagree.

What differs from one host, and why (docs/swarm.md):
- Volumes are local to a node: Postgres, its provisioning job and the backups are pinned to the node
  labelled `swarmDbNodeLabel`; the app reads its role and password from a secret, not from a volume.
- Swarm cannot order services and the provider has no job mode: the job runs as a one-task service that
  provisions, then idles healthy (swarm/provision-service.sh); deploys wait for that health.
- Secrets and configs cannot change: each is named by a hash of its content (see content_name).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from model.settings import (
    APP_CREDENTIALS_FILE,
    APP_UID,
    DB_ALIAS,
    NET_BACKEND,
    NET_DCS,
    PATRONI_API_USER,
    PATRONI_REPLICATION_USER,
    PATRONI_REWIND_USER,
    PATRONI_SECRETS,
    PGDATA,
    POSTGRES_PORT,
    POSTGRES_UID,
    PROVISION_DONE_FILE,
    PROXY_CONFIG_SOURCE,
    PROXY_CONFIG_TARGET,
    PROXY_HEALTHCHECK_SOURCE,
    PROXY_HEALTHCHECK_TARGET,
    PROXY_MAX_TASKS,
    PROXY_UID,
    SECRET_PATRONI_API,
    SECRET_PATRONI_REPLICATION,
    SECRET_PATRONI_REWIND,
    SECRET_POSTGRES_BOOTSTRAP,
    SECRETS_DIR,
    START_INTERVAL_MS,
    SWARM_TARGET,
    VOL_APP_CREDENTIALS,
    VOL_BACKUPS,
    VOL_DATA,
    ContainerSpec,
    Healthcheck,
    StackSettings,
    SwarmSettings,
    app_role_names,
    spec_labels,
    swarm_files,
)

# The app's role and password, one secret read by the job and by every app task (two lines).
APP_CREDENTIALS_SECRET = "app_credentials"  # noqa: S105  # pragma: allowlist secret (a name)
PROXY_SERVICE = "proxy"
# postgresMembers 3 (docs/swarm.md): members postgres-k and etcd-k on the node labelled k, the router `postgres`.
MEMBERS = (1, 2, 3)
PATRONI_SOURCE = Path(__file__).resolve().parent.parent / "patroni"
PATRONI_DIR = "/etc/patroni"
ROUTER_CONFIG_SOURCE = Path(__file__).resolve().parent.parent / "proxy" / "postgres-router.cfg"
# Its own name among the configs (the edge proxy's file has the same path in its container).
PROXY_CONFIG_TARGET_ROUTER = "/usr/local/etc/haproxy/postgres-router.cfg"
ROUTER_REPLICAS = 2
ROUTER_REPLICA_PORT = 5433
PATRONI_API_PORT = 8008
ETCD_CLIENT_PORT, ETCD_PEER_PORT = 2379, 2380
ETCD_DATA = "/etcd-data"  # as in etcd's own container examples
ETCD_MEMORY_MB = 256
VOL_ETCD = "etcd_data"
RETIRE_SERVICE = "db-retire"
PROVISION_WAIT_S = 300
# Update gate: a new task must pass its healthcheck, then stay up this long, before the next one starts.
UPDATE_MONITOR_S = 5
SWARM_NAME_MAX = 64  # secrets and configs: at most 64 of [a-zA-Z0-9-_.]
HASH_CHARS = 12
PROXY_MEMORY_MB = 64
STOP_GRACE_S = 10  # the app finishes in-flight requests on SIGTERM
# Reviewed policy exceptions (policy/rules.py) that hold for every swarm service.
SWARM_EXCEPTIONS = {
    "stock-analyzer.policy-exception.no-new-privileges":
        "Swarm services cannot set no-new-privileges (Docker Engine 26, and no such input in the provider); "
        "capabilities stay dropped and the root filesystem read-only (both checked); docs/swarm.md",
}
ETCD_EXCEPTIONS = {
    "stock-analyzer.policy-exception.container-healthcheck-and-restart":
        "an etcd member answers no health query before a quorum forms, and Swarm's DNS lists only healthy tasks "
        "while the members find each other by DNS: a healthcheck would stop the bootstrap; restart stays any",
}


@dataclass(frozen=True)
class FileRef:
    """A secret or config mounted as a file: `target` is a name under /run/secrets (secrets) or a path."""

    source: str  # logical name (a key of SwarmModel.secrets or .configs)
    target: str
    uid: int
    gid: int
    mode: int


@dataclass(frozen=True)
class Mount:
    type: str  # "volume" or "tmpfs"
    target: str
    source: str = ""  # logical volume name
    read_only: bool = False
    size_bytes: int = 0


@dataclass(frozen=True)
class Port:
    target: int
    published: int
    mode: str  # "ingress" (routing mesh) or "host"


@dataclass(frozen=True)
class UpdatePolicy:
    order: str  # "start-first" or "stop-first"
    failure_action: str
    parallelism: int = 1
    delay_s: int = 0
    monitor_s: int = UPDATE_MONITOR_S


@dataclass(frozen=True)
class RestartPolicy:
    condition: str  # "any" or "on-failure"
    delay_s: int
    max_attempts: int = 0  # 0: unlimited


@dataclass(frozen=True)
class ServiceSpec:
    name: str  # logical service name; the DNS name on the stack's networks
    image: str
    entrypoint: tuple[str, ...] | None
    command: tuple[str, ...]
    user: str | None
    env: tuple[tuple[str, str], ...]
    secrets: tuple[FileRef, ...]
    configs: tuple[FileRef, ...]
    mounts: tuple[Mount, ...]
    networks: tuple[tuple[str, tuple[str, ...]], ...]  # (logical network, aliases)
    healthcheck: Healthcheck | None
    cap_add: tuple[str, ...]
    read_only: bool
    stop_signal: str | None
    stop_grace_s: int
    labels: tuple[tuple[str, str], ...]
    global_mode: bool
    replicas: int
    endpoint_mode: str
    constraints: tuple[str, ...]
    memory_limit_mb: int | None
    memory_reservation_mb: int | None
    pids_limit: int
    restart: RestartPolicy
    update: UpdatePolicy
    ports: tuple[Port, ...] = ()


@dataclass(frozen=True)
class SwarmModel:
    stack_name: str  # the stack (docker stack deploy NAME) and the prefix of every object name
    services: tuple[ServiceSpec, ...]
    secrets: tuple[str, ...]  # logical secret names the services use
    configs: dict[str, tuple[str, str]]  # logical name -> (path in the container, content)
    networks: dict[str, str]  # logical -> engine name
    encrypted: bool
    volumes: dict[str, str]  # logical -> engine name (created on the node a task lands on)
    # The job again, once the apps have rolled onto new credentials: the previous role loses its login.
    # Only a deployment that orders it after the apps (the Pulumi program) runs it as a service.
    retire: ServiceSpec

    def service(self, name: str) -> ServiceSpec:
        return next(svc for svc in self.services if svc.name == name)

    @property
    def dcs(self) -> list[ServiceSpec]:
        """etcd, with a Patroni cluster: started together, before the database."""
        return [svc for svc in self.services if svc.name.startswith("etcd-")]

    @property
    def database(self) -> list[ServiceSpec]:
        """The server or the members, the router, then the job: each converged before the next starts."""
        return [svc for svc in self.services if svc.name == DB_ALIAS or svc.name.startswith("postgres-")
                or svc.name == "db-provision"]


def content_name(prefix: str, name: str, content: str, key: str | None = None) -> str:
    """An immutable Swarm object's name: a new content is a new name, so services roll onto it. Secrets pass
    the stack's name key: a keyed hash (HMAC-SHA256), so a listed name gives no way to test password guesses.
    Configs (scripts, public) hash their content plainly."""
    base = f"{prefix}_{name}"[:SWARM_NAME_MAX - HASH_CHARS - 1].rstrip("-_.")
    digest = (hmac.new(key.encode(), content.encode(), hashlib.sha256) if key is not None
              else hashlib.sha256(content.encode())).hexdigest()
    return f"{base}-{digest[:HASH_CHARS]}"


def credentials_text(role: str, password: str) -> str:
    return f"{role}\n{password}\n"


APP_ROLE_LABEL = "stock-analyzer.app-role"


@dataclass(frozen=True)
class DeployedApp:
    """What the running API service holds: its app secret's name and the role label set beside it."""

    secret_name: str
    role: str | None  # None on a service deployed before the label existed


def deployed_app_role(app_user: str, prefix: str, password: str, name_key: str, deployed: DeployedApp | None,
                      version: int) -> str:
    """The Pulumi path's app role, from what runs rather than from a counter: the deployed role while its
    secret still holds this password (its name is the keyed hash of role and password), else the other one
    of the pair, so that tasks not yet rolled keep a working role whatever changed the password."""
    slot_a, slot_b, _ = app_role_names(app_user)
    if deployed is None:
        return slot_a
    for role in (slot_a, slot_b):
        if deployed.secret_name == content_name(prefix, APP_CREDENTIALS_SECRET, credentials_text(role, password),
                                                name_key):
            return role
    if deployed.role in (slot_a, slot_b):
        return slot_b if deployed.role == slot_a else slot_a
    # Deployed before the label: the version rule it was deployed with (one step per rotation).
    return slot_a if version % 2 == 1 else slot_b


def next_app_role(app_user: str, password: str, previous: str | None) -> str:
    """The login role the app secret names: the current one while the password is unchanged; after a
    rotation the other one of the pair, so that tasks not yet updated keep a working role."""
    slot_a, slot_b, _ = app_role_names(app_user)
    if previous:
        lines = previous.splitlines()
        if len(lines) >= 2 and lines[0] in (slot_a, slot_b):
            if lines[1] == password:
                return lines[0]
            return slot_b if lines[0] == slot_a else slot_a
    return slot_a


def config_key(path: str) -> str:
    """Uploaded files have distinct names (provision/, backup/, swarm/, proxy/): the name alone keeps the
    Swarm object's name short."""
    return Path(path).name.replace(".", "_")


def proxy_config() -> str:
    return PROXY_CONFIG_SOURCE.read_text(encoding="utf-8")


_SIZE = re.compile(r"size=([0-9]+)([kmg]?)")


def _tmpfs(path: str, opts: str) -> Mount:
    m = _SIZE.search(opts)
    size = int(m[1]) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[m[2]] if m else 16 * 1024**2
    return Mount("tmpfs", path, size_bytes=size)


def provision_service_spec(s: StackSettings) -> ContainerSpec:
    """The one-shot job as a one-task service that stays up once done (swarm/provision-service.sh)."""
    return replace(
        s.provision,
        # A long-running service here (it idles once done), with a healthcheck and on-failure restarts.
        role="service",
        entrypoint=("sh", f"{SWARM_TARGET}/provision-service.sh"),
        uploads=(*s.provision.uploads, *swarm_files()),
        healthcheck=Healthcheck(test=("CMD", "test", "-f", PROVISION_DONE_FILE), interval_s=10, timeout_s=3,
                                retries=3, start_period_s=PROVISION_WAIT_S + 60, start_interval_ms=START_INTERVAL_MS),
    )


def _service(spec: ContainerSpec, s: StackSettings, sw: SwarmSettings, image: str, *, replicas: int = 1,
             pinned: bool = False, order: str = "start-first", env: dict[str, str] | None = None,
             drop_mounts: tuple[str, ...] = (), extra_secrets: tuple[FileRef, ...] = (),
             ports: tuple[Port, ...] = (), restart: RestartPolicy | None = None) -> ServiceSpec:
    return ServiceSpec(
        name=spec.service,
        image=image,
        entrypoint=spec.entrypoint,
        command=spec.command,
        user=spec.user,
        env=tuple(sorted((env if env is not None else dict(spec.env)).items())),
        secrets=(*(FileRef(m.secret.name, m.secret.name, m.owner_uid, m.owner_uid, 0o400) for m in spec.secrets),
                 *extra_secrets),
        # Scripts, readable by whichever uid runs them.
        configs=tuple(FileRef(config_key(path), path, 0, 0, 0o444) for path, _ in spec.uploads),
        mounts=(*(Mount("volume", m.target, m.volume, m.read_only) for m in spec.mounts
                  if m.volume not in drop_mounts),
                *(_tmpfs(path, opts) for path, opts in spec.tmpfs)),
        networks=tuple((net, spec.aliases) for net in spec.networks),
        healthcheck=spec.healthcheck,
        cap_add=spec.cap_add,
        read_only=spec.read_only,
        stop_signal=spec.stop_signal,
        # Always said: the provider sends 0 (kill at once) for an unset grace period, the CLI 10 s.
        stop_grace_s=spec.stop_grace_s or STOP_GRACE_S,
        labels=tuple(sorted({**spec_labels(spec, s), **SWARM_EXCEPTIONS}.items())),
        global_mode=False,
        replicas=replicas,
        endpoint_mode=sw.endpoint_mode,
        constraints=(sw.db_constraint,) if pinned else (),
        memory_limit_mb=spec.memory_mb,
        # Reserve half: the scheduler places a task only where that much is free; the rest is headroom.
        memory_reservation_mb=max(spec.memory_mb // 2, 6) if spec.memory_mb else None,
        pids_limit=spec.pids_limit,
        restart=restart or RestartPolicy("any", 2),
        update=UpdatePolicy(order, "rollback"),
        ports=ports,
    )


def swarm_model(s: StackSettings) -> SwarmModel:
    sw = s.swarm
    if sw is None:
        raise ValueError(f"stack {s.stack} has target {s.target}, not swarm")
    creds_path = f"{SECRETS_DIR}/{APP_CREDENTIALS_SECRET}"
    creds_app = FileRef(APP_CREDENTIALS_SECRET, APP_CREDENTIALS_SECRET, APP_UID, APP_UID, 0o400)

    def app_env(spec: ContainerSpec) -> dict[str, str]:
        env = dict(spec.env)
        if env.get("DB_CREDENTIALS_FILE") == APP_CREDENTIALS_FILE:
            env["DB_CREDENTIALS_FILE"] = creds_path
        # The backups live on the database node; the admin UI may run anywhere (docs/swarm.md).
        env.pop("BACKUP_STATUS_FILE", None)
        return env

    job = provision_service_spec(s)
    job_env = {**dict(job.env), "APP_CREDENTIALS_FILE": creds_path, "PROVISION_MODE": "swarm",
               "PROVISION_WAIT_S": str(PROVISION_WAIT_S), "PROVISION_DONE_FILE": PROVISION_DONE_FILE}
    job_args: dict[str, Any] = {
        "pinned": True, "order": "stop-first", "env": job_env, "drop_mounts": (VOL_APP_CREDENTIALS,),
        "extra_secrets": (FileRef(APP_CREDENTIALS_SECRET, APP_CREDENTIALS_SECRET, 0, 0, 0o400),),
        "restart": RestartPolicy("on-failure", 5, 3)}
    database = ([*etcd_services(s, sw), *member_services(s, sw), router_service(s, sw)] if sw.members == 3 else [
        # Never two servers on one data directory: stop the old task before starting the new one.
        _service(s.postgres, s, sw, s.postgres_image, pinned=True, order="stop-first")])
    services = [*database, _service(job, s, sw, s.postgres_image, **job_args)]
    retire = _service(replace(job, service=RETIRE_SERVICE), s, sw, s.postgres_image, **job_args)
    publish = {svc: (pub, target) for svc, pub, target in sw.proxy_ports}
    for spec in s.apps:
        ports: tuple[Port, ...] = ()
        if sw.endpoint_mode == "vip" and spec.service in publish and sw.published(spec.service):
            pub, target = publish[spec.service]
            ports = (Port(target, pub, "ingress"),)
        uses_db = "DB_CREDENTIALS_FILE" in dict(spec.env)
        services.append(_service(spec, s, sw, s.app_image, replicas=sw.replicas[spec.service], env=app_env(spec),
                                 drop_mounts=(VOL_APP_CREDENTIALS, VOL_BACKUPS),
                                 extra_secrets=(creds_app,) if uses_db else (), ports=ports))
    # With a cluster the dumps are read from a replica (the router's second port): none of the leader's work.
    backup_env = {**dict(s.backup.env), "PGPORT": str(ROUTER_REPLICA_PORT)} if sw.members == 3 else None
    services.append(_service(s.backup, s, sw, s.postgres_image, pinned=True, order="stop-first", env=backup_env))
    configs = {config_key(path): (path, content) for c in (*s.containers, job) for path, content in c.uploads}
    if sw.members == 3:
        configs.update({config_key(path): (path, content) for path, content in cluster_files()})
    if sw.endpoint_mode == "dnsrr":
        services.append(_proxy_service(s, sw))
        configs[config_key(PROXY_CONFIG_TARGET)] = (PROXY_CONFIG_TARGET, proxy_config())
        configs[config_key(PROXY_HEALTHCHECK_TARGET)] = (
            PROXY_HEALTHCHECK_TARGET, PROXY_HEALTHCHECK_SOURCE.read_text(encoding="utf-8"))
    return SwarmModel(
        stack_name=s.prefix,
        services=tuple(services),
        secrets=tuple(sorted({r.source for svc in services for r in svc.secrets})),
        configs=dict(sorted(configs.items())),
        networks=dict(s.networks),
        encrypted=sw.encrypted,
        volumes=_volumes(s, sw),
        retire=retire,
    )


def _volumes(s: StackSettings, sw: SwarmSettings) -> dict[str, str]:
    volumes = {k: v for k, v in s.volumes.items() if k != VOL_APP_CREDENTIALS}
    if sw.members == 3:
        del volumes[VOL_DATA]
        for k in MEMBERS:
            volumes[f"{VOL_DATA}_{k}"] = f"{s.prefix}_{VOL_DATA}_{k}"
            volumes[f"{VOL_ETCD}_{k}"] = f"{s.prefix}_{VOL_ETCD}_{k}"
    return volumes


def cluster_files() -> tuple[tuple[str, str], ...]:
    """What the members and the router read: Patroni's settings and scripts, the router's configuration."""
    return (*((f"{PATRONI_DIR}/{p.name}", p.read_text(encoding="utf-8"))
              for p in sorted(PATRONI_SOURCE.iterdir()) if p.suffix in (".yml", ".py", ".sh", ".sql")),
            (PROXY_CONFIG_TARGET_ROUTER, ROUTER_CONFIG_SOURCE.read_text(encoding="utf-8")))


def _service_labels(s: StackSettings, service: str,
                    exceptions: dict[str, str] | None = None) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"stock-analyzer.environment": s.environment, "stock-analyzer.role": "service",
                         "stock-analyzer.service": service, "stock-analyzer.stack": s.stack,
                         **SWARM_EXCEPTIONS, **(exceptions or {})}.items()))


def etcd_services(s: StackSettings, sw: SwarmSettings) -> list[ServiceSpec]:
    """Patroni's configuration store: three etcd members, one beside each database member, on a network of
    their own. A quorum is two: losing one changes nothing; losing two stops every leader (docs/swarm.md).
    Patroni's members, started after these, are what waits for the store to answer."""
    cluster = ",".join(f"etcd-{k}=http://etcd-{k}:{ETCD_PEER_PORT}" for k in MEMBERS)
    out = []
    for k in MEMBERS:
        name = f"etcd-{k}"
        out.append(ServiceSpec(
            name=name, image=sw.etcd_image, entrypoint=("/usr/local/bin/etcd",),
            command=(f"--name={name}", f"--data-dir={ETCD_DATA}/member",
                     f"--listen-peer-urls=http://0.0.0.0:{ETCD_PEER_PORT}",
                     f"--listen-client-urls=http://0.0.0.0:{ETCD_CLIENT_PORT}",
                     f"--advertise-client-urls=http://{name}:{ETCD_CLIENT_PORT}",
                     f"--initial-advertise-peer-urls=http://{name}:{ETCD_PEER_PORT}",
                     f"--initial-cluster={cluster}", "--initial-cluster-state=new",
                     f"--initial-cluster-token={s.prefix}", "--quota-backend-bytes=268435456",
                     "--auto-compaction-retention=1"),
            # The official image runs etcd as root; here with every capability dropped and a read-only root.
            user=None, env=(), secrets=(), configs=(),
            mounts=(Mount("volume", ETCD_DATA, f"{VOL_ETCD}_{k}"),),
            networks=((NET_DCS, ()),),
            # None: an etcd member answers nothing, not even its own status, until a quorum has formed, and
            # Swarm's DNS lists a task only once healthy, while the members find each other by DNS.
            healthcheck=None,
            cap_add=(), read_only=True, stop_signal=None, stop_grace_s=STOP_GRACE_S,
            labels=_service_labels(s, name, ETCD_EXCEPTIONS), global_mode=False, replicas=1, endpoint_mode="dnsrr",
            constraints=(sw.member_constraint(k),), memory_limit_mb=ETCD_MEMORY_MB,
            memory_reservation_mb=ETCD_MEMORY_MB // 2, pids_limit=256, restart=RestartPolicy("any", 2),
            update=UpdatePolicy("stop-first", "rollback"),
        ))
    return out


def member_services(s: StackSettings, sw: SwarmSettings) -> list[ServiceSpec]:
    """The database as Patroni members, each on its own node with its own volume (patroni/). Only the router
    answers to `postgres`; the members are reached by name by each other, the router and ops."""
    secrets = (SECRET_POSTGRES_BOOTSTRAP, *PATRONI_SECRETS)
    out = []
    for k in MEMBERS:
        name = f"postgres-{k}"
        env = {
            "PATRONI_NAME": name, "PATRONI_SCOPE": s.prefix,
            "PATRONI_ETCD3_HOSTS": ",".join(f"etcd-{j}:{ETCD_CLIENT_PORT}" for j in MEMBERS),
            "PATRONI_RESTAPI_CONNECT_ADDRESS": f"{name}:{PATRONI_API_PORT}",
            "PATRONI_POSTGRESQL_CONNECT_ADDRESS": f"{name}:{POSTGRES_PORT}",
            "PATRONI_API_USER": PATRONI_API_USER,
            "PATRONI_API_PASSWORD_FILE": f"{SECRETS_DIR}/{SECRET_PATRONI_API.name}",
            "PATRONI_REPLICATION_USER": PATRONI_REPLICATION_USER,
            "PATRONI_REPLICATION_PASSWORD_FILE": f"{SECRETS_DIR}/{SECRET_PATRONI_REPLICATION.name}",
            "PATRONI_REWIND_USER": PATRONI_REWIND_USER,
            "PATRONI_REWIND_PASSWORD_FILE": f"{SECRETS_DIR}/{SECRET_PATRONI_REWIND.name}",
            "POSTGRES_USER": s.db_superuser,
            "POSTGRES_PASSWORD_FILE": f"{SECRETS_DIR}/{SECRET_POSTGRES_BOOTSTRAP.name}",
            "POSTGRES_DB": s.db_name, "PGDATA": f"{PGDATA}/pgdata",
        }
        spec = _service(replace(s.postgres, service=name, aliases=(), networks=(NET_BACKEND, NET_DCS),
                                env=tuple(sorted(env.items())), uploads=(), entrypoint=None, command=(),
                                mounts=(), secrets=()),
                        s, sw, sw.patroni_image, order="stop-first")
        out.append(replace(
            spec,
            entrypoint=("python3", f"{PATRONI_DIR}/start.py"),
            secrets=tuple(FileRef(x.name, x.name, POSTGRES_UID, POSTGRES_UID, 0o400) for x in secrets),
            configs=tuple(FileRef(config_key(path), path, 0, 0, 0o444)
                          for path, _ in cluster_files() if path.startswith(PATRONI_DIR)),
            mounts=(Mount("volume", PGDATA, f"{VOL_DATA}_{k}"),
                    *(mt for mt in spec.mounts if mt.type == "tmpfs")),
            # Healthy while its PostgreSQL runs, leader or replica (Patroni's /health).
            healthcheck=Healthcheck(test=("CMD", "python3", "-c", "import urllib.request as u; u.urlopen("
                                          f"'http://127.0.0.1:{PATRONI_API_PORT}/health', timeout=3)"),
                                    interval_s=5, timeout_s=4, retries=3, start_period_s=PROVISION_WAIT_S,
                                    start_interval_ms=START_INTERVAL_MS),
            # Patroni stops PostgreSQL (fast) and gives up the leader lock on SIGTERM, so a replica takes over at
            # once instead of after the lock's ttl.
            stop_signal="SIGTERM",
            constraints=(sw.member_constraint(k),),
            labels=_service_labels(s, name),
        ))
    return out


def router_service(s: StackSettings, sw: SwarmSettings) -> ServiceSpec:
    """`postgres` for everyone else: HAProxy sends :5432 to the member whose Patroni says /primary and :5433
    to those saying /replica, and cuts a member's sessions the moment it stops being what it was."""
    return ServiceSpec(
        name=DB_ALIAS, image=sw.proxy_image, entrypoint=None, command=(), user=f"{PROXY_UID}:{PROXY_UID}",
        env=(), secrets=(),
        configs=(FileRef(config_key(PROXY_CONFIG_TARGET_ROUTER), PROXY_CONFIG_TARGET, PROXY_UID, PROXY_UID, 0o444),),
        mounts=(), networks=((NET_BACKEND, ()),),
        healthcheck=Healthcheck(test=("CMD", "bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{POSTGRES_PORT}"),
                                interval_s=10, timeout_s=3, retries=3, start_period_s=30,
                                start_interval_ms=START_INTERVAL_MS),
        cap_add=(), read_only=True, stop_signal=None, stop_grace_s=STOP_GRACE_S,
        labels=_service_labels(s, DB_ALIAS), global_mode=False, replicas=ROUTER_REPLICAS, endpoint_mode="dnsrr",
        constraints=(), memory_limit_mb=PROXY_MEMORY_MB, memory_reservation_mb=PROXY_MEMORY_MB // 4,
        pids_limit=256, restart=RestartPolicy("any", 2), update=UpdatePolicy("start-first", "rollback"),
    )


def _proxy_service(s: StackSettings, sw: SwarmSettings) -> ServiceSpec:
    env = {"API_SERVICE": "api", "FRONTEND_SERVICE": "frontend", "PROXY_MAX_TASKS": str(PROXY_MAX_TASKS)}
    ports = []
    for svc, pub, target in sw.proxy_ports:
        env[f"{svc.upper()}_PORT"] = str(target)
        if sw.published(svc):  # the API's frontend listens on the overlay only unless swarmPublishApi
            ports.append(Port(target, pub, "host"))
    return ServiceSpec(
        name=PROXY_SERVICE,
        image=sw.proxy_image,
        entrypoint=None,
        command=(),
        user=f"{PROXY_UID}:{PROXY_UID}",
        env=tuple(sorted(env.items())),
        secrets=(),
        configs=tuple(FileRef(config_key(path), path, PROXY_UID, PROXY_UID, 0o444)
                      for path in (PROXY_CONFIG_TARGET, PROXY_HEALTHCHECK_TARGET)),
        mounts=(),
        networks=(("frontend", ()),),
        healthcheck=Healthcheck(test=("CMD", "bash", PROXY_HEALTHCHECK_TARGET), interval_s=10, timeout_s=3,
                                retries=3, start_period_s=30, start_interval_ms=START_INTERVAL_MS),
        cap_add=(),
        read_only=True,
        stop_signal=None,
        stop_grace_s=STOP_GRACE_S,
        labels=_service_labels(s, PROXY_SERVICE),
        # One per node, published on the node's own address: whichever node a client (or the DNS name in
        # front of the cluster) reaches answers.
        global_mode=True,
        replicas=0,
        endpoint_mode="dnsrr",
        constraints=(),
        memory_limit_mb=PROXY_MEMORY_MB,
        memory_reservation_mb=PROXY_MEMORY_MB // 4,
        pids_limit=256,
        restart=RestartPolicy("any", 2),
        # Host ports: a new task cannot start beside the old one on the same node.
        update=UpdatePolicy("stop-first", "rollback"),
        ports=tuple(ports),
    )
