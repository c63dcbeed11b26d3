"""`python -m ops doctor --stack STACK`: the legacy troubleshooting flowcharts (image builds,
containers that do not start, network problems) as checks against the live engine and the stack's
settings. One line per check: ok, warn or fail, and for each problem the fix in one sentence."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import docker.errors
from docker.models.containers import Container

from model.settings import APP_CREDENTIALS_FILE, ContainerSpec, StackSettings
from model.stack_yaml import PROJECT_DIR
from ops.engine import Engine, OpsError

OK, WARN, FAIL = "ok", "warn", "fail"
# Free space on the engine's disk below which builds and Postgres fail (fail) or soon will (warn).
MIN_FREE_GB, WARN_FREE_GB = 2.0, 10.0
MAX_CONTEXT_MB = 50


@dataclass(frozen=True)
class Finding:
    status: str
    check: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        return f"{self.status:<4}  {self.check:<34} {self.detail}" + (f" -> {self.fix}" if self.fix else "")


# -- ports: who holds one ------------------------------------------------------------------------------

def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(fields[9])
    return inodes


def port_holder(port: int) -> str | None:
    """The local process listening on `port`, as 'pid N (name)', or None (remote engine, or nobody)."""
    inodes = _listening_inodes(port)
    if not inodes:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    name = (proc / "comm").read_text().strip()
                    return f"pid {proc.name} ({name})"
        except OSError:
            continue
    return "a process this user cannot see"


# -- the checks ----------------------------------------------------------------------------------------

class Doctor:
    def __init__(self, s: StackSettings, engine_factory: Callable[[], Engine] = Engine,
                 min_free_gb: float = MIN_FREE_GB, warn_free_gb: float = WARN_FREE_GB,
                 project_dir: Path = PROJECT_DIR) -> None:
        self.s, self.engine_factory = s, engine_factory
        self.min_free_gb, self.warn_free_gb, self.project_dir = min_free_gb, warn_free_gb, project_dir

    def run(self) -> list[Finding]:
        findings = list(self._build_inputs())
        try:
            engine = self.engine_factory()
        except OpsError as err:
            findings.append(Finding(FAIL, "engine", str(err), "start Docker (systemctl start docker) or set "
                                                              "DOCKER_HOST to the engine the stack runs on"))
            return findings
        self.engine = engine
        for check in (self._engine, self._disk, self._images, self._containers, self._ports, self._networks,
                      self._reachability, self._credentials, self._pitr):
            findings.extend(check())
        return findings

    # build: the flowchart "image build failures" (files, context size; network/cache show in `up`)
    def _build_inputs(self) -> Iterator[Finding]:
        app = self.project_dir / "app"
        missing = [p for p in ("Dockerfile", "requirements.txt", "stock_app/__main__.py", ".dockerignore")
                   if not (app / p).is_file()]
        if missing:
            yield Finding(FAIL, "build: files", f"missing in app/: {', '.join(missing)}",
                          "restore them from git (git checkout -- app/)")
        else:
            yield Finding(OK, "build: files", "Dockerfile, requirements.txt, source, .dockerignore")
        size = sum(f.stat().st_size for f in app.rglob("*") if f.is_file()) / 2**20 if app.is_dir() else 0
        if size > MAX_CONTEXT_MB:
            yield Finding(WARN, "build: context size", f"app/ holds {size:.0f} MB",
                          "move data and caches out of app/ or list them in app/.dockerignore")
        else:
            yield Finding(OK, "build: context size", f"{size:.2f} MB")

    def _engine(self) -> Iterator[Finding]:
        v = self.engine.client.version()
        where = os.environ.get("DOCKER_HOST") or "the local socket"
        yield Finding(OK, "engine", f"Docker {v.get('Version')} at {where}")

    def _disk(self) -> Iterator[Finding]:
        root = str(self.engine.client.info().get("DockerRootDir") or "/var/lib/docker")
        if not Path(root).exists():
            yield Finding(WARN, "disk", f"cannot see {root} from here (remote engine)",
                          "check free space on the engine's host with df")
            return
        free = shutil.disk_usage(root).free / 2**30
        if free < self.min_free_gb:
            yield Finding(FAIL, "disk", f"{free:.1f} GB free under {root} (need {self.min_free_gb:g})",
                          "free space: docker system prune (unused images, build cache), or grow the disk")
        elif free < self.warn_free_gb:
            yield Finding(WARN, "disk", f"{free:.1f} GB free under {root}",
                          "docker builder prune and docker image prune free the build cache and old images")
        else:
            yield Finding(OK, "disk", f"{free:.1f} GB free under {root}")

    def _images(self) -> Iterator[Finding]:
        for image, fix in ((self.s.postgres_image, "docker pull it, or check the registry and postgresImage"),
                           (self.s.app_image, "the next deploy builds it (./deploy.sh)")):
            try:
                self.engine.client.images.get(image)
                yield Finding(OK, f"image {image}", "present")
            except docker.errors.ImageNotFound:
                yield Finding(WARN if image == self.s.app_image else FAIL, f"image {image}", "not on the engine", fix)

    def _container(self, spec: ContainerSpec) -> Container | None:
        return self.engine.container(spec.container_name)

    def _containers(self) -> Iterator[Finding]:
        for spec in self.s.containers:
            c = self._container(spec)
            check = f"container {spec.service}"
            if c is None:
                yield Finding(FAIL, check, f"{spec.container_name} does not exist", "deploy the stack (./deploy.sh)")
                continue
            state = c.attrs["State"]
            if spec.role == "job":
                code = state.get("ExitCode")
                if state.get("Status") == "exited" and code != 0:
                    yield Finding(FAIL, check, f"exited with code {code}",
                                  f"read docker logs {spec.container_name}, fix the cause, deploy again")
                else:
                    yield Finding(OK, check, f"{state.get('Status')} (exit code {code})")
                continue
            if state.get("OOMKilled"):
                yield Finding(FAIL, check, "killed for memory", f"raise {spec.service}Memory in the stack config")
            elif state.get("Status") != "running":
                yield Finding(FAIL, check, f"{state.get('Status')} (exit code {state.get('ExitCode')})",
                              f"docker start {spec.container_name}, then read docker logs {spec.container_name}")
            else:
                health = (state.get("Health") or {}).get("Status", "no healthcheck")
                restarts = c.attrs.get("RestartCount", 0)
                status = (OK if health == "healthy" and not restarts
                          else WARN if health in ("healthy", "starting") else FAIL)
                yield Finding(status, check, f"running, {health}" + (f", {restarts} restarts" if restarts else ""),
                              "" if status == OK else f"read docker logs {spec.container_name}")

    def _pitr(self) -> Iterator[Finding]:
        """Point-in-time recovery: each repository's last base backup, the WAL queue, the last drill."""
        if self.s.pitr is None or self.s.pitr_runner is None:
            return
        c = self._container(self.s.pitr_runner)
        if c is None or c.status != "running":
            return  # the container check above says so
        _, out = self.engine.sh(c, "sh /pitr/pitr.sh status", user="", check=False, stdout_only=True)
        yield from pitr_findings(dict(line.split("=", 1) for line in out.splitlines() if "=" in line),
                                 self.s.pitr.repos, self.s.stack, self.s.wal_receiver)

    def _ports(self) -> Iterator[Finding]:
        for spec in self.s.containers:
            c = self._container(spec)
            running = c is not None and c.attrs["State"].get("Status") == "running"
            for p in spec.ports:
                check = f"port {p.host_ip}:{p.host_port}"
                if running:
                    yield Finding(OK, check, f"published by {spec.service}")
                    continue
                others = [o.name for o in self.engine.client.containers.list(filters={"publish": str(p.host_port)})]
                # Local processes only tell for a local engine (this machine's /proc).
                local = os.environ.get("DOCKER_HOST", "unix://").startswith("unix://")
                holder = f"container {others[0]}" if others else port_holder(p.host_port) if local else None
                if holder:
                    yield Finding(FAIL, check, f"taken by {holder}; {spec.service} cannot start",
                                  f"stop {holder}, or set {spec.service}HostPort to a free port")
                else:
                    yield Finding(OK, check, f"free for {spec.service}")

    def _networks(self) -> Iterator[Finding]:
        for spec in self.s.containers:
            c = self._container(spec)
            if c is None or spec.role == "job":
                continue
            attached = set(c.attrs["NetworkSettings"]["Networks"])
            expected = {self.s.networks[n] for n in spec.networks}
            missing = expected - attached
            if missing:
                yield Finding(FAIL, f"network {spec.service}", f"not on {', '.join(sorted(missing))}",
                              f"docker network connect --alias {spec.service} {sorted(missing)[0]} "
                              f"{spec.container_name}, or deploy again")
            else:
                yield Finding(OK, f"network {spec.service}", f"on {', '.join(sorted(expected))}")

    def _probe(self, container: str, host: str, port: int) -> str:
        c = self.engine.container(container)
        if c is None or c.status != "running":
            return "skip"
        code, out = c.exec_run(["python", "-c", CONNECT_PROBE, host, str(port)])
        return out.decode().strip() if code == 0 and isinstance(out, bytes) else "skip"

    def _reachability(self) -> Iterator[Finding]:
        for service, host, port in (("api", "postgres", 5432), ("admin", "postgres", 5432), ("frontend", "api", 5000)):
            result = self._probe(self.s.app(service).container_name, host, port)
            check = f"reach {service} -> {host}:{port}"
            if result == "ok":
                yield Finding(OK, check, "connects")
            elif result == "skip":
                yield Finding(WARN, check, f"{service} is not running; not checked")
            elif result == "no-name":
                target = self.engine.container(f"{self.s.prefix}-{host}")
                if target is not None and target.status != "running":
                    yield Finding(FAIL, check, f"'{host}' does not resolve: {target.name} is {target.status}",
                                  f"docker start {target.name}")
                else:
                    yield Finding(FAIL, check, f"'{host}' does not resolve inside {service}",
                                  f"both must share a network with the alias {host}: deploy again")
            else:
                yield Finding(FAIL, check, f"'{host}' resolves but {result}",
                              f"start {host} (docker start {self.s.prefix}-{host}) and check its logs")

    def _credentials(self) -> Iterator[Finding]:
        api = self.engine.container(self.s.app("api").container_name)
        if api is None or api.status != "running":
            yield Finding(WARN, "database login", "api is not running; not checked")
            return
        code, out = api.exec_run(["python", "-c", _LOGIN_PROBE, APP_CREDENTIALS_FILE])
        text = out.decode().strip() if isinstance(out, bytes) else ""
        if code == 0 and text.startswith("ok"):
            yield Finding(OK, "database login", f"the app's role {text[3:]} logs in")
        elif "password authentication failed" in text:
            yield Finding(FAIL, "database login", "the database refuses the app's credentials",
                          "run the provisioning job again (pulumi up --replace its URN, or docker compose up -d "
                          "--force-recreate db-provision)")
        elif any(w in text for w in ("could not", "refused", "timeout", "resolve")):
            yield Finding(FAIL, "database login", f"no database: {text.splitlines()[-1][:120]}",
                          f"start Postgres: docker start {self.s.postgres.container_name}")
        else:
            yield Finding(FAIL, "database login", text.splitlines()[-1][:160] if text else f"exit {code}",
                          "check the credential file and the provisioning job's log")


# Run with the container's own Python: prints ok, no-name, or refused and the error.
CONNECT_PROBE = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()
    print("ok")
except socket.gaierror:
    print("no-name")
except OSError as err:
    print("refused", err)
"""

_LOGIN_PROBE = """
import os, sys
import psycopg
user, password = open(sys.argv[1]).read().splitlines()[:2]
try:
    psycopg.connect(host=os.environ["DB_HOST"], port=os.environ.get("DB_PORT", "5432"), dbname=os.environ["DB_NAME"],
                    user=user, password=password, connect_timeout=3).close()
    print("ok", user)
except Exception as err:
    print(str(err).strip())
"""


ARCHIVE_LAG_WARN_S = 300


def pitr_findings(st: dict[str, str], repos: tuple[int, ...], stack: str,
                  receiver: ContainerSpec | None = None) -> Iterator[Finding]:
    for repo in repos:
        k = f"backup-repo{repo}"
        result, label = st.get(f"{k}.result"), st.get(f"{k}.label") or "none"
        if result == "failed":
            yield Finding(FAIL, f"base backup repo{repo}", f"the last one failed (newest good: {label})",
                          f"python -m ops basebackup --stack {stack} shows why")
        elif result is None:
            yield Finding(WARN, f"base backup repo{repo}", "none yet", "db-pitr takes the first at start")
        else:
            yield Finding(OK, f"base backup repo{repo}", label)
    lag = int(st.get("archive.lag_seconds", "0") or 0)
    ready = st.get("archive.ready", "?")
    yield Finding(WARN if lag > ARCHIVE_LAG_WARN_S else OK, "WAL archive",
                  f"{ready} segment(s) waiting, oldest {lag} s",
                  "" if lag <= ARCHIVE_LAG_WARN_S else "read the server's docker logs: archive_command fails")
    if receiver is not None:
        state = st.get("archive.receiver", "unknown")
        yield (Finding(OK, "WAL receiver", "synchronous: a commit returns once its WAL is on the receiver's disk")
               if state == "sync" else
               Finding(FAIL, "WAL receiver", f"{state}, not synchronous: commits wait until it streams again",
                       f"docker logs {receiver.container_name}; docker start {receiver.container_name}"))
    drill = st.get("drill.result")
    if drill == "failed":
        yield Finding(FAIL, "restore drill", f"failed: {st.get('drill.detail', '')}",
                      f"python -m ops basebackup --stack {stack} --type full, then python -m ops drill --stack {stack}")
    else:
        yield Finding(OK if drill == "ok" else WARN, "restore drill", drill or "none yet")


def report(findings: list[Finding]) -> tuple[str, int]:
    fails = sum(f.status == FAIL for f in findings)
    warns = sum(f.status == WARN for f in findings)
    lines = [f.line() for f in findings]
    lines.append(f"{len(findings)} checks: {fails} failed, {warns} warnings")
    return "\n".join(lines), 1 if fails else 0
