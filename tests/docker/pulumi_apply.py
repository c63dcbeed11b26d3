"""Apply the resource inputs a Pulumi program registered (captured under mocks) to a real Docker engine,
with the docker provider's semantics. Test code, not a provider: it knows exactly the inputs this
program uses and fails on any other, so no property is silently skipped.

Computed outputs seen by the program under mocks (image digests, generated passwords) are replaced by
the real values as the resources they come from are created.
"""

from __future__ import annotations

import http.client
import io
import json
import re
import secrets
import socket
import string
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.docker.support import sh
from tests.pulumi_mocks import ROOT, Recording, Resource, plain

DOCKER_SOCK = "/var/run/docker.sock"
KNOWN: dict[str, set[str]] = {
    "random:index/randomPassword:RandomPassword": {"length", "special", "keepers"},
    "docker:index/network:Network": {"name", "driver", "labels"},  # labels: a list of {label, value}
    "docker:index/volume:Volume": {"name", "labels", "driverOpts"},
    "docker:index/remoteImage:RemoteImage": {"name", "keepLocally"},
    "docker:index/image:Image": {"imageName", "build", "skipPush", "buildOnPreview"},
    "docker:index/container:Container": {
        "name", "image", "entrypoints", "command", "envs", "user", "labels", "ports", "networksAdvanced",
        "volumes", "healthcheck", "wait", "waitTimeout", "mustRun", "attach", "logs", "restart", "memory",
        "logDriver", "logOpts", "stopSignal", "stopTimeout", "destroyGraceSeconds", "uploads",
        "maxRetryCount", "capabilities", "securityOpts", "readOnly", "tmpfs",
    },
}
NESTED: dict[str, set[str]] = {
    "build": {"context", "dockerfile", "args", "builderVersion"},
    "healthcheck": {"tests", "interval", "timeout", "retries", "startPeriod", "startInterval"},
    "ports": {"internal", "external", "ip", "protocol"},
    "networksAdvanced": {"name", "aliases"},
    "volumes": {"volumeName", "containerPath", "readOnly"},
    "uploads": {"file", "content", "owner", "group", "permissions"},
    "labels": {"label", "value"},
    "capabilities": {"adds", "drops"},
}


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, timeout: float, path: str) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def engine(method: str, path: str, body: object = None, raw: bytes | None = None,
           timeout: float = 120, sock: str = DOCKER_SOCK) -> tuple[int, Any]:
    """The Docker Engine API, as the provider uses it (the CLI cannot express exec-form healthchecks)."""
    conn = _UnixConnection(timeout, sock)
    payload = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    headers = {"Content-Type": "application/x-tar" if raw is not None else "application/json"}
    conn.request(method, path, body=payload, headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    try:
        return resp.status, json.loads(data) if data else None
    except ValueError:
        return resp.status, data.decode(errors="replace")


def substitute(real: dict[str, str], value: Any) -> Any:
    """`value` with every string that is a mock output replaced by the real one it stands for."""
    if isinstance(value, dict):
        return {k: substitute(real, v) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(real, v) for v in value]
    if isinstance(value, str):
        return real.get(value, value)
    return value


def _ns(duration: str) -> int:
    m = re.fullmatch(r"(\d+)(ms|s|m|h)", duration)
    assert m, f"duration {duration!r} not understood"
    return int(m[1]) * {"ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}[m[2]]


def _check_known(r: Resource) -> None:
    inputs = plain(r.inputs)
    unknown = set(inputs) - KNOWN.get(r.type, set())
    assert r.type in KNOWN, f"harness does not understand resource type {r.type}"
    assert not unknown, f"harness does not understand {r.type} inputs {sorted(unknown)} of {r.name}"
    for key, allowed in NESTED.items():
        value = inputs.get(key)
        items = value if isinstance(value, list) else [value] if isinstance(value, dict) else []
        for item in items:
            extra = set(item) - allowed
            assert not extra, f"harness does not understand {key} fields {sorted(extra)} of {r.name}"


class JobFailedError(AssertionError):
    """A one-shot container (attach) exited non-zero. The provider records it as created, with its exit
    code; the program's check of that code then fails the update before the app containers."""

    def __init__(self, resource: str, container: str, code: int) -> None:
        self.resource, self.container, self.code = resource, container, code
        logs = sh("docker", "logs", container, check=False)
        super().__init__(f"{container} exited {code}: {(logs.stdout + logs.stderr)[-2000:]}")


@dataclass
class Applied:
    """What was created, for the scenario and for teardown."""

    real: dict[str, str] = field(default_factory=dict)  # mock output value -> real value
    containers: list[tuple[str, int]] = field(default_factory=list)  # (name, destroy grace seconds)
    networks: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    passwords: dict[str, str] = field(default_factory=dict)  # resource name -> generated value
    exit_codes: dict[str, int] = field(default_factory=dict)  # resource name -> exit code of a finished job
    timings: dict[str, float] = field(default_factory=dict)

    def resolve(self, value: Any) -> Any:
        return substitute(self.real, plain(value))

    def destroy(self) -> None:
        for name, grace in reversed(self.containers):
            if grace:
                engine("POST", f"/containers/{name}/stop?t={grace}", timeout=grace + 30)
            engine("DELETE", f"/containers/{name}?force=true&v=true")
        for net in self.networks:
            engine("DELETE", f"/networks/{net}")
        for vol in self.volumes:
            engine("DELETE", f"/volumes/{vol}")


def _order(rec: Recording) -> list[Resource]:
    """Custom resources in dependency order (dependencies include the parent components' children)."""
    custom = [r for r in rec.resources if r.custom]
    done: set[str] = set()
    ordered: list[Resource] = []
    components = {r.urn for r in rec.resources if not r.custom}
    children: dict[str, set[str]] = {}
    for r in custom:
        children.setdefault(r.parent, set()).add(r.urn)

    def deps(r: Resource) -> set[str]:
        out: set[str] = set()
        for d in r.dependencies:
            out |= children.get(d, set()) if d in components else {d}
        return out - {r.urn}

    for _ in range(len(custom)):
        for r in custom:
            if r.urn not in done and deps(r) <= done:
                ordered.append(r)
                done.add(r.urn)
    assert len(ordered) == len(custom), "dependency cycle"
    return ordered


def _tar(uploads: list[dict[str, Any]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        dirs: set[str] = set()
        for u in uploads:
            parts = Path(u["file"]).parent.parts[1:]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d not in dirs:
                    info = tarfile.TarInfo(d)
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
                    dirs.add(d)
            data = u["content"].encode()
            info = tarfile.TarInfo(u["file"].lstrip("/"))
            info.size = len(data)
            info.mode = int(u.get("permissions", "0644"), 8)
            info.uid = int(u.get("owner", "0"))
            info.gid = int(u.get("group", u.get("owner", "0")))
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _container(i: dict[str, Any], applied: Applied) -> int | None:
    """Create and start as the provider does; returns the exit code of an attached (one-shot) container."""
    name = i["name"]
    nets = i.get("networksAdvanced", [])
    assert nets, "harness expects networksAdvanced on every container"
    entry = i.get("entrypoints")
    hc = i.get("healthcheck")
    config: dict[str, Any] = {
        "Image": i["image"],
        "Env": i.get("envs", []),
        "User": i.get("user", ""),
        "Labels": {lab["label"]: lab["value"] for lab in i.get("labels", [])},
        "ExposedPorts": {f"{int(p['internal'])}/{p.get('protocol', 'tcp')}": {} for p in i.get("ports", [])},
        "HostConfig": {
            "PortBindings": {
                f"{int(p['internal'])}/{p.get('protocol', 'tcp')}": [
                    {"HostIp": p.get("ip", "0.0.0.0"), "HostPort": str(int(p["external"]))}]
                for p in i.get("ports", [])
            },
            "RestartPolicy": {"Name": i.get("restart", "no"), "MaximumRetryCount": int(i.get("maxRetryCount", 0))},
            "CapDrop": i.get("capabilities", {}).get("drops", []),
            "CapAdd": i.get("capabilities", {}).get("adds", []),
            "SecurityOpt": i.get("securityOpts", []),
            "ReadonlyRootfs": bool(i.get("readOnly", False)),
            "Tmpfs": i.get("tmpfs", {}),
            "LogConfig": {"Type": i.get("logDriver", "json-file"), "Config": i.get("logOpts", {})},
            "Binds": [f"{v['volumeName']}:{v['containerPath']}" + (":ro" if v.get("readOnly") else "")
                      for v in i.get("volumes", [])],
        },
    }
    if entry:
        config["Entrypoint"] = entry
    if i.get("command"):
        config["Cmd"] = i["command"]
    if "memory" in i:
        config["HostConfig"]["Memory"] = int(i["memory"]) * 1024 * 1024
    if "stopSignal" in i:
        config["StopSignal"] = i["stopSignal"]
    if "stopTimeout" in i:
        config["StopTimeout"] = int(i["stopTimeout"])
    if hc:
        config["Healthcheck"] = {
            "Test": hc["tests"], "Interval": _ns(hc["interval"]), "Timeout": _ns(hc["timeout"]),
            "Retries": int(hc["retries"]), "StartPeriod": _ns(hc["startPeriod"]),
            "StartInterval": _ns(hc["startInterval"]),
        }
    status, body = engine("POST", f"/containers/create?name={name}", config)
    assert status == 201, f"create {name}: {status} {body}"
    applied.containers.append((name, int(i.get("destroyGraceSeconds", 0))))
    # As the provider: created on the default bridge, then disconnected from it and connected to each of
    # networks_advanced with its aliases, all before the start.
    status, body = engine("POST", "/networks/bridge/disconnect", {"Container": name})
    assert status == 200 or "is not connected" in str(body), f"disconnect {name} from bridge: {status} {body}"
    for net in nets:
        status, body = engine("POST", f"/networks/{net['name']}/connect",
                              {"Container": name, "EndpointConfig": {"Aliases": net.get("aliases", [])}})
        assert status == 200, f"connect {name} to {net['name']}: {status} {body}"
    if i.get("uploads"):
        # As the provider: default copy options, ownership and mode from the tar headers (copyUIDGID would
        # instead chown to the container user, and fails for a numeric user without a passwd entry).
        status, body = engine("PUT", f"/containers/{name}/archive?path=/", raw=_tar(i["uploads"]))
        assert status == 200, f"upload to {name}: {status} {body}"
    status, body = engine("POST", f"/containers/{name}/start")
    assert status == 204, f"start {name}: {status} {body}"
    started = time.monotonic()
    exit_code = None
    if i.get("attach"):
        # As the provider: wait for the exit and record the code; a non-zero code does not fail the create.
        status, body = engine("POST", f"/containers/{name}/wait", timeout=300)
        assert status == 200, f"wait {name}: {status} {body}"
        exit_code = int(body["StatusCode"])
    if i.get("wait"):
        deadline = started + int(i.get("waitTimeout", 60))
        while True:
            _, info = engine("GET", f"/containers/{name}/json")
            health = info["State"].get("Health", {}).get("Status")
            if health == "healthy":
                break
            assert info["State"]["Running"], f"{name} stopped: {sh('docker', 'logs', name, check=False).stderr}"
            assert time.monotonic() < deadline, f"{name} not healthy within waitTimeout"
            time.sleep(0.2)
    applied.timings[name] = time.monotonic() - started
    return exit_code


def _remove_container(applied: Applied, name: str) -> None:
    """Delete as the provider does: stop with the grace period when one is set, then remove."""
    grace = dict(applied.containers).get(name, 0)
    if grace:
        engine("POST", f"/containers/{name}/stop?t={grace}", timeout=grace + 30)
    # v=true: anonymous volumes go with the container (the provider's remove_volumes default).
    status, body = engine("DELETE", f"/containers/{name}?force=true&v=true")
    assert status in (204, 404), f"remove {name}: {status} {body}"
    applied.containers = [(n, g) for n, g in applied.containers if n != name]


def update(applied: Applied, before: Recording, after: Recording, ca_bundle: Path | None = None,
           replace: tuple[str, ...] = ()) -> list[str]:
    """`pulumi up [--replace URN ...]` from `before` to `after`: replace each resource whose inputs changed
    or whose URN is in `replace` (containers delete-before-replace, as the program asks), in dependency
    order. Returns the replaced names; raises `JobFailedError` where the program's check would stop the update."""
    old = {r.name: json.dumps(plain(r.inputs), sort_keys=True) for r in before.resources if r.custom}
    known_urns = {r.urn for r in after.resources}
    assert set(replace) <= known_urns, f"--replace names no resource: {set(replace) - known_urns}"
    replaced = []
    for r in _order(after):
        if old.get(r.name) == json.dumps(plain(r.inputs), sort_keys=True) and r.urn not in replace:
            continue
        assert r.type in ("random:index/randomPassword:RandomPassword", "docker:index/container:Container"), (
            f"harness does not update {r.type} ({r.name})")
        assert r.delete_before_replace or r.type != "docker:index/container:Container"
        if r.type == "docker:index/container:Container":
            _remove_container(applied, applied.resolve(r.inputs)["name"])
        replaced.append(r.name)
        _create(r, applied, ca_bundle)
    return replaced


def _create(r: Resource, applied: Applied, ca_bundle: Path | None) -> None:
    _check_known(r)
    i = applied.resolve(r.inputs)
    alphabet = string.ascii_letters + string.digits
    if r.type == "random:index/randomPassword:RandomPassword":
        assert i["special"] is False
        value = "".join(secrets.choice(alphabet) for _ in range(int(i["length"])))
        applied.real[plain(r.state["result"])] = value
        applied.passwords[r.name] = value
    elif r.type == "docker:index/network:Network":
        labels = [f"--label={lab['label']}={lab['value']}" for lab in i.get("labels", [])]
        sh("docker", "network", "create", "--driver", i["driver"], *labels, i["name"])
        applied.networks.append(i["name"])
    elif r.type == "docker:index/volume:Volume":
        labels = [f"--label={lab['label']}={lab['value']}" for lab in i.get("labels", [])]
        opts = [f"--opt={k}={v}" for k, v in sorted(i.get("driverOpts", {}).items())]
        sh("docker", "volume", "create", *labels, *opts, i["name"])
        applied.volumes.append(i["name"])
    elif r.type == "docker:index/remoteImage:RemoteImage":
        if sh("docker", "image", "inspect", i["name"], check=False).returncode != 0:
            sh("docker", "pull", i["name"], timeout=600)
        image_id = sh("docker", "image", "inspect", "-f", "{{.Id}}", i["name"]).stdout.strip()
        applied.real[r.state["imageId"]] = image_id
    elif r.type == "docker:index/image:Image":
        assert i["skipPush"] is True, "harness builds local images only"
        b = i["build"]
        assert b.get("builderVersion") == "BuilderBuildKit"
        args = [f"--build-arg={k}={v}" for k, v in sorted(b.get("args", {}).items())]
        extra = ["--secret", f"id=ca,src={ca_bundle}"] if ca_bundle else []
        started = time.monotonic()
        sh("docker", "buildx", "build", "--load", *args, *extra, "-t", i["imageName"],
           "-f", str(ROOT / b["dockerfile"]), str(ROOT / b["context"]), timeout=900)
        applied.timings[f"image build {i['imageName']}"] = time.monotonic() - started
        image_id = sh("docker", "image", "inspect", "-f", "{{.Id}}", i["imageName"]).stdout.strip()
        applied.real[r.state["repoDigest"]] = image_id
    elif r.type == "docker:index/container:Container":
        code = _container(i, applied)
        if code is not None:
            applied.exit_codes[r.name] = code
        if code:
            raise JobFailedError(r.name, i["name"], code)


def apply(rec: Recording, ca_bundle: Path | None = None) -> Applied:
    applied = Applied()
    try:
        for r in _order(rec):
            _create(r, applied, ca_bundle)
    except BaseException:
        applied.destroy()
        raise
    return applied
