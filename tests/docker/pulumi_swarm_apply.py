"""Apply the swarm program's inputs (captured under mocks) to a real Swarm manager, with the docker
provider's semantics (terraform-provider-docker v4.5, which pulumi-docker 5.2 wraps; read in its
internal/provider/resource_docker_{service,secret,config,network}*.go):

- secret/config: `data` is base64 and decoded before it is sent; every field forces a replacement, and a
  replacement creates the new object first and deletes the old one after the dependents were updated;
- service: the spec is rebuilt whole from the inputs; an omitted stop grace period is 0, an omitted
  healthcheck is an empty one (the image's), restart-policy fields not given are zero; updates are in
  place (ServiceUpdate with the current version) unless the name, networks/aliases or container labels
  changed; converge_config: the first look after `delay`, then every 5 s, until each slot has a task in
  state running (healthy: Swarm holds a task in `starting` until its healthcheck passes), ignoring down
  nodes; on create a timeout deletes the service; an update ends on UpdateStatus completed, and fails on
  rollback or pause;
- network: created once (no update), options passed through.

Like tests/docker/pulumi_apply.py it knows exactly the inputs this program uses and fails on any other.
The passwords are the values the program saw under mocks (hashes of the inputs): the program derives
secret names and the app's credential secret from them, which a substitution afterwards could not redo.
Lab values only.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from tests.docker.pulumi_apply import _ns, _order, engine, substitute
from tests.pulumi_mocks import Recording, Resource, plain

CONVERGE_POLL_S = 5.0

# The allowed input tree per type: a dict names the fields of an object (or of each item of a list).
_FILE = {"fileName": None, "fileUid": None, "fileGid": None, "fileMode": None}
SCHEMA: dict[str, dict[str, Any]] = {
    "random:index/randomPassword:RandomPassword": {"length": None, "special": None, "keepers": None},
    "docker:index/network:Network": {"name": None, "driver": None, "options": None,
                                     "labels": {"label": None, "value": None}},
    "docker:index/secret:Secret": {"name": None, "data": None, "labels": {"label": None, "value": None}},
    "docker:index/serviceConfig:ServiceConfig": {"name": None, "data": None,
                                                 "labels": {"label": None, "value": None}},
    "docker:index/service:Service": {
        "name": None,
        "labels": {"label": None, "value": None},
        "mode": {"global": None, "replicated": {"replicas": None}},
        "endpointSpec": {"mode": None, "ports": {"targetPort": None, "publishedPort": None, "publishMode": None,
                                                  "protocol": None}},
        "updateConfig": {"parallelism": None, "delay": None, "order": None, "failureAction": None,
                         "monitor": None, "maxFailureRatio": None},
        "rollbackConfig": {"parallelism": None, "delay": None, "order": None, "failureAction": None,
                           "monitor": None, "maxFailureRatio": None},
        "convergeConfig": {"delay": None, "timeout": None},
        "taskSpec": {
            "containerSpec": {
                "image": None, "commands": None, "args": None, "env": None, "user": None, "readOnly": None,
                "capDrops": None, "capAdds": None, "stopSignal": None, "stopGracePeriod": None,
                "labels": {"label": None, "value": None},
                "mounts": {"type": None, "target": None, "source": None, "readOnly": None,
                           "tmpfsOptions": {"sizeBytes": None}},
                "secrets": {"secretId": None, "secretName": None, **_FILE},
                "configs": {"configId": None, "configName": None, **_FILE},
                "healthcheck": {"tests": None, "interval": None, "timeout": None, "startPeriod": None,
                                "retries": None},
            },
            "resources": {"limits": {"memoryBytes": None}, "reservation": {"memoryBytes": None}},
            "restartPolicy": {"condition": None, "delay": None, "maxAttempts": None, "window": None},
            "placement": {"constraints": None},
            "networksAdvanceds": {"id": None, "aliases": None},
            "logDriver": {"name": None, "options": None},
        },
    },
}


def _check(value: Any, schema: dict[str, Any] | None, where: str) -> None:
    if schema is None:
        return
    items = value if isinstance(value, list) else [value]
    for item in items:
        assert isinstance(item, dict), f"harness expects an object at {where}"
        unknown = set(item) - set(schema)
        assert not unknown, f"harness does not understand {where} fields {sorted(unknown)}"
        for key, sub in item.items():
            _check(sub, schema[key], f"{where}.{key}")


@dataclass
class SwarmApplied:
    sock: str
    real: dict[str, str] = field(default_factory=dict)  # mock ID -> real ID
    services: dict[str, str] = field(default_factory=dict)  # resource name -> service ID
    secrets: dict[str, str] = field(default_factory=dict)  # resource name -> secret ID
    configs: dict[str, str] = field(default_factory=dict)
    networks: dict[str, str] = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)  # resource name -> inputs as applied (JSON)
    timings: dict[str, float] = field(default_factory=dict)

    def api(self, method: str, path: str, body: object = None, timeout: float = 60) -> tuple[int, Any]:
        return engine(method, path, body, timeout=timeout, sock=self.sock)

    def resolve(self, value: Any) -> Any:
        return substitute(self.real, value)

    def destroy(self) -> None:
        for sid in reversed(list(self.services.values())):
            self.api("DELETE", f"/services/{sid}")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # secrets in use by tasks that are still stopping cannot go
            left = [sid for sid in self.secrets.values() if self.api("DELETE", f"/secrets/{sid}")[0] not in (204, 404)]
            left += [cid for cid in self.configs.values() if self.api("DELETE", f"/configs/{cid}")[0] not in (204, 404)]
            if not left:
                break
            time.sleep(1)
        for nid in self.networks.values():
            for _ in range(30):
                if self.api("DELETE", f"/networks/{nid}")[0] in (204, 404):
                    break
                time.sleep(1)


def _labels(items: list[dict[str, str]] | None) -> dict[str, str]:
    return {lab["label"]: lab["value"] for lab in items or []}


def _file(ref: dict[str, Any]) -> dict[str, Any]:
    return {"Name": ref["fileName"], "UID": ref.get("fileUid", "0"), "GID": ref.get("fileGid", "0"),
            "Mode": int(ref.get("fileMode", 0o444))}


def service_spec(i: dict[str, Any]) -> dict[str, Any]:
    """The ServiceSpec the provider sends for these inputs (createServiceSpec)."""
    ts, cs = i["taskSpec"], i["taskSpec"]["containerSpec"]
    hc = cs.get("healthcheck")
    container: dict[str, Any] = {
        "Image": cs["image"],
        "Labels": _labels(cs.get("labels")),
        "Env": [f"{k}={v}" for k, v in sorted(cs.get("env", {}).items())],
        "User": cs.get("user", ""),
        "ReadOnly": bool(cs.get("readOnly", False)),
        "CapabilityDrop": cs.get("capDrops"),
        "CapabilityAdd": cs.get("capAdds"),
        "Mounts": [{"Type": m["type"], "Target": m["target"], "Source": m.get("source", ""),
                    "ReadOnly": bool(m.get("readOnly", False)),
                    **({"TmpfsOptions": {"SizeBytes": int(m["tmpfsOptions"]["sizeBytes"]), "Mode": 0}}
                       if "tmpfsOptions" in m else {})} for m in cs.get("mounts", [])],
        "Secrets": [{"SecretID": r["secretId"], "SecretName": r["secretName"], "File": _file(r)}
                    for r in cs.get("secrets", [])],
        "Configs": [{"ConfigID": r["configId"], "ConfigName": r["configName"], "File": _file(r)}
                    for r in cs.get("configs", [])],
        # Omitted: an empty config, which keeps the image's own healthcheck.
        "Healthcheck": {"Test": hc["tests"], "Interval": _ns(hc["interval"]), "Timeout": _ns(hc["timeout"]),
                        "StartPeriod": _ns(hc["startPeriod"]), "Retries": int(hc["retries"])} if hc else {},
        "StopSignal": cs.get("stopSignal", ""),
        # Omitted: 0, i.e. killed at once on every update (the program always sets it).
        "StopGracePeriod": _ns(cs["stopGracePeriod"]) if "stopGracePeriod" in cs else 0,
        "Init": False,
        "Isolation": "default",
        "DNSConfig": {},
    }
    if "commands" in cs:
        container["Command"] = cs["commands"]
    if "args" in cs:
        container["Args"] = cs["args"]
    res, rp = ts.get("resources", {}), ts.get("restartPolicy")
    task: dict[str, Any] = {
        "ContainerSpec": container,
        "Resources": {
            **({"Limits": {"MemoryBytes": int(res["limits"]["memoryBytes"])}} if "limits" in res else {}),
            **({"Reservations": {"MemoryBytes": int(res["reservation"]["memoryBytes"])}} if "reservation" in res
               else {}),
        },
        "RestartPolicy": {"Condition": rp.get("condition", ""), "Delay": _ns(rp.get("delay", "0s")),
                          "MaxAttempts": int(rp.get("maxAttempts", 0)), "Window": _ns(rp.get("window", "0s"))}
        if rp else {},
        "Networks": [{"Target": n["id"], "Aliases": n.get("aliases", [])} for n in ts.get("networksAdvanceds", [])],
        "ForceUpdate": 0,
    }
    if "placement" in ts:
        task["Placement"] = {"Constraints": ts["placement"].get("constraints", [])}
    if "logDriver" in ts:
        task["LogDriver"] = {"Name": ts["logDriver"]["name"], "Options": ts["logDriver"].get("options", {})}
    mode = i.get("mode", {})
    spec: dict[str, Any] = {
        "Name": i["name"],
        "Labels": _labels(i.get("labels")),
        "TaskTemplate": task,
        "Mode": {"Global": {}} if mode.get("global") else
        {"Replicated": {"Replicas": int(mode.get("replicated", {}).get("replicas", 1))}},
        "EndpointSpec": {
            "Mode": i.get("endpointSpec", {}).get("mode", ""),
            "Ports": [{"Protocol": p.get("protocol", "tcp"), "TargetPort": int(p["targetPort"]),
                       "PublishedPort": int(p.get("publishedPort", 0)), "PublishMode": p.get("publishMode", "ingress")}
                      for p in i.get("endpointSpec", {}).get("ports", [])],
        },
    }
    for key, api_key in (("updateConfig", "UpdateConfig"), ("rollbackConfig", "RollbackConfig")):
        if key in i:
            c = i[key]
            spec[api_key] = {"Parallelism": int(c.get("parallelism", 1)), "Delay": _ns(c.get("delay", "0s")),
                             "FailureAction": c.get("failureAction", "pause"), "Monitor": _ns(c.get("monitor", "5s")),
                             "MaxFailureRatio": float(c.get("maxFailureRatio", "0.0")),
                             "Order": c.get("order", "stop-first")}
    return spec


# The provider's ordering of task states (numberedStates); 0 (unknown) tasks are skipped.
NUMBERED = {"new": 1, "allocated": 2, "pending": 3, "assigned": 4, "accepted": 5, "preparing": 6, "ready": 7,
            "starting": 8, "running": 9, "complete": 10, "shutdown": 11, "failed": 12, "rejected": 13}


def _converged(applied: SwarmApplied, sid: str, replicas: int) -> bool:
    """replicatedConsoleLogUpdater.update: one task per slot (the lowest desired, then the lowest observed
    state: during a start-first update the new, still starting task stands for its slot), on active nodes;
    converged when exactly `replicas` of them run."""
    filters = urllib.parse.quote(json.dumps({"service": [sid], "desired-state": ["running"]}))
    _, tasks = applied.api("GET", f"/tasks?filters={filters}")
    _, nodes = applied.api("GET", "/nodes")
    active = {n["ID"] for n in nodes if n["Status"]["State"] != "down"}
    by_slot: dict[int, dict[str, Any]] = {}
    for task in tasks:
        desired, observed = NUMBERED.get(task["DesiredState"], 0), NUMBERED.get(task["Status"]["State"], 0)
        if not desired or not observed:
            continue
        slot = task.get("Slot", 0)
        if slot in by_slot:
            e_desired = NUMBERED[by_slot[slot]["DesiredState"]]
            e_observed = NUMBERED[by_slot[slot]["Status"]["State"]]
            if e_desired < desired or (e_desired == desired and e_observed <= observed):
                continue
        if task.get("NodeID") and task["NodeID"] not in active:
            continue
        by_slot[slot] = task
    running = sum(1 for task in by_slot.values()
                  if NUMBERED[task["DesiredState"]] <= NUMBERED["running"] and task["Status"]["State"] == "running")
    return running == replicas


def converge(applied: SwarmApplied, name: str, i: dict[str, Any], sid: str, creating: bool) -> None:
    """The provider's create/update refresh under retry.StateChangeConf: the first look after the delay
    (create: convergeConfig.delay; update: 7 s), then after 5 s, then every 10 s, until the timeout."""
    cc = i.get("convergeConfig")
    if not cc:
        return
    replicas = int(i["mode"]["replicated"]["replicas"])
    started = time.monotonic()
    deadline = started + _ns(cc.get("timeout", "3m")) / 1e9
    time.sleep(_ns(cc.get("delay", "7s")) / 1e9 if creating else 7.0)
    wait = CONVERGE_POLL_S
    while True:
        rollback = False
        if not creating:
            _, svc = applied.api("GET", f"/services/{sid}")
            status = svc.get("UpdateStatus") or {}
            state = status.get("State", "")
            if state == "completed":
                break
            messages = {"rollback_completed": "service rollback completed", "paused": "service update paused",
                        "rollback_paused": "service rollback paused"}
            assert state not in messages, f"{messages.get(state)}: {status.get('Message')}"
            rollback = state == "rollback_started"
        if _converged(applied, sid, replicas):
            assert not rollback, f"service rollback completed: {i['name']}"
            break
        if time.monotonic() + wait > deadline:
            if creating:
                applied.api("DELETE", f"/services/{sid}")
                applied.services.pop(name, None)
            raise AssertionError(f"Service with ID ({sid}) did not converge after {cc.get('timeout', '3m')}")
        time.sleep(wait)
        wait = min(wait * 2, 10.0)
    applied.timings[i["name"]] = time.monotonic() - started


def _create(r: Resource, applied: SwarmApplied, pending: dict[str, tuple[dict[str, Any], str]] | None = None) -> None:
    """Create `r`. A service is converged at once, or (with `pending`) left to converge beside the others
    created before anything depends on it, as the engine runs independent creates concurrently."""
    assert r.type in SCHEMA, f"harness does not understand resource type {r.type}"
    raw = plain(r.inputs)
    _check(raw, SCHEMA[r.type], r.name)
    i = applied.resolve(raw)
    mock_id = f"{r.name}-id"
    if r.type == "random:index/randomPassword:RandomPassword":
        assert i["special"] is False
    elif r.type == "docker:index/network:Network":
        status, body = applied.api("POST", "/networks/create", {
            "Name": i["name"], "Driver": i["driver"], "Options": i.get("options", {}), "Attachable": False,
            "Internal": False, "Labels": _labels(i.get("labels")), "IPAM": {"Driver": "default"}})
        assert status == 201, f"network {i['name']}: {status} {body}"
        applied.networks[r.name] = applied.real[mock_id] = body["Id"]
    elif r.type in ("docker:index/secret:Secret", "docker:index/serviceConfig:ServiceConfig"):
        kind = "secrets" if r.type.endswith("Secret") else "configs"
        status, body = applied.api("POST", f"/{kind}/create", {
            "Name": i["name"], "Labels": _labels(i.get("labels")), "Data": base64.b64encode(
                base64.b64decode(i["data"], validate=True)).decode()})
        assert status == 201, f"{kind} {i['name']}: {status} {body}"
        getattr(applied, kind)[r.name] = applied.real[mock_id] = body["ID"]
    elif r.type == "docker:index/service:Service":
        status, body = applied.api("POST", "/services/create", service_spec(i))
        assert status == 201, f"service {i['name']}: {status} {body}"
        applied.services[r.name] = applied.real[mock_id] = body["ID"]
        if pending is None:
            converge(applied, r.name, i, body["ID"], creating=True)
        else:
            pending[r.urn] = (i, body["ID"])
    applied.inputs[r.name] = json.dumps(raw, sort_keys=True)


def apply(rec: Recording, sock: str) -> SwarmApplied:
    applied = SwarmApplied(sock=sock)
    pending: dict[str, tuple[dict[str, Any], str]] = {}  # urn -> (inputs, service id), created, not converged
    names = {r.urn: r.name for r in rec.resources}

    def settle(urns: list[str]) -> None:
        for urn in urns:
            i, sid = pending.pop(urn)
            converge(applied, names[urn], i, sid, creating=True)

    try:
        for r in _order(rec):
            settle([d for d in r.dependencies if d in pending])
            _create(r, applied, pending)
        settle(list(pending))
    except BaseException:
        applied.destroy()
        raise
    return applied


_SERVICE_FORCE_NEW = ("name",)


def _forces_new(old: dict[str, Any], new: dict[str, Any]) -> bool:
    def container_labels(i: dict[str, Any]) -> Any:
        return i["taskSpec"]["containerSpec"].get("labels")

    def nets(i: dict[str, Any]) -> Any:
        return i["taskSpec"].get("networksAdvanceds")

    return (any(old.get(k) != new.get(k) for k in _SERVICE_FORCE_NEW) or container_labels(old) != container_labels(new)
            or nets(old) != nets(new) or ("global" in old.get("mode", {})) != ("global" in new.get("mode", {})))


def update(applied: SwarmApplied, after: Recording) -> list[str]:
    """`pulumi up` to `after`: secrets/configs whose inputs changed are replaced (new first), services
    updated in place in dependency order and converged, then the replaced objects deleted. Returns the
    names of the resources that changed."""
    changed: list[str] = []
    retired: list[tuple[str, str]] = []  # (kind, id) deleted at the end
    for r in _order(after):
        raw = plain(r.inputs)
        if applied.inputs.get(r.name) == json.dumps(raw, sort_keys=True):
            continue
        changed.append(r.name)
        if r.type == "random:index/randomPassword:RandomPassword":
            continue
        old_raw = json.loads(applied.inputs[r.name]) if r.name in applied.inputs else None
        if r.type in ("docker:index/secret:Secret", "docker:index/serviceConfig:ServiceConfig"):
            kind = "secrets" if r.type.endswith("Secret") else "configs"
            old_id = getattr(applied, kind).get(r.name)
            _create(r, applied)
            if old_id:
                retired.append((kind, old_id))
        elif r.type == "docker:index/service:Service":
            _check(raw, SCHEMA[r.type], r.name)
            i = applied.resolve(raw)
            if old_raw is None or _forces_new(old_raw, raw):
                assert r.delete_before_replace, f"{r.name}: a replacement would clash on the fixed name"
                if r.name in applied.services:
                    applied.api("DELETE", f"/services/{applied.services.pop(r.name)}")
                _create(r, applied)
                continue
            sid = applied.services[r.name]
            _, current = applied.api("GET", f"/services/{sid}")
            status, body = applied.api("POST", f"/services/{sid}/update?version={current['Version']['Index']}",
                                       service_spec(i))
            assert status == 200, f"update {i['name']}: {status} {body}"
            applied.inputs[r.name] = json.dumps(raw, sort_keys=True)
            converge(applied, r.name, i, sid, creating=False)
        else:
            raise AssertionError(f"harness does not update {r.type} ({r.name})")
    for kind, oid in retired:
        deadline = time.monotonic() + 60
        while applied.api("DELETE", f"/{kind}/{oid}")[0] not in (204, 404):
            assert time.monotonic() < deadline, f"old {kind} {oid} still in use after the update"
            time.sleep(1)
    return changed
