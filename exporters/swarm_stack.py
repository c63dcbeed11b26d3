"""The swarm model as a stack file for `docker stack deploy` (docs/swarm.md).

Keys Swarm ignores (container_name, depends_on, restart, security_opt) are not written; secrets and
configs are named by content (model/swarm.py), so a new password or script is a new object
and the services that use it roll onto it.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

from model.settings import PROXY_CONFIG_TARGET, SWARM_TARGET, Healthcheck, StackSettings
from model.swarm import ServiceSpec, SwarmModel, content_name, swarm_model


def _duration(seconds: int) -> str:
    return f"{seconds}s"


def compose_healthcheck(hc: Healthcheck) -> dict[str, Any]:
    """A healthcheck as compose and stack files spell it (both exports use this)."""
    return {"test": list(hc.test), "interval": _duration(hc.interval_s), "timeout": _duration(hc.timeout_s),
            "retries": hc.retries, "start_period": _duration(hc.start_period_s),
            "start_interval": f"{hc.start_interval_ms}ms"}


def process_fields(entrypoint: tuple[str, ...] | None, command: tuple[str, ...], user: str | None,
                   env: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    """What runs and as whom, as compose and stack files spell it (both exports use this)."""
    out: dict[str, Any] = {}
    if entrypoint is not None:
        out["entrypoint"] = list(entrypoint)
    if command:
        out["command"] = list(command)
    if user:
        out["user"] = user
    out["environment"] = dict(env)
    return out


def _service(svc: ServiceSpec, log_opts: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {"image": svc.image, **process_fields(svc.entrypoint, svc.command, svc.user, svc.env)}
    if svc.secrets:
        out["secrets"] = [{"source": r.source, "target": r.target, "uid": str(r.uid), "gid": str(r.gid),
                           "mode": r.mode} for r in svc.secrets]
    if svc.configs:
        out["configs"] = [{"source": r.source, "target": r.target, "uid": str(r.uid), "gid": str(r.gid),
                           "mode": r.mode} for r in svc.configs]
    volumes: list[dict[str, Any]] = []
    for m in svc.mounts:
        if m.type == "volume":
            volumes.append({"type": "volume", "source": m.source, "target": m.target,
                            **({"read_only": True} if m.read_only else {})})
        else:
            volumes.append({"type": "tmpfs", "target": m.target, "tmpfs": {"size": m.size_bytes}})
    if volumes:
        out["volumes"] = volumes
    if svc.ports:
        out["ports"] = [{"target": p.target, "published": p.published, "protocol": "tcp", "mode": p.mode}
                        for p in svc.ports]
    out["networks"] = {net: {"aliases": list(aliases)} if aliases else {} for net, aliases in svc.networks}
    if svc.healthcheck:
        out["healthcheck"] = compose_healthcheck(svc.healthcheck)
    out["cap_drop"] = ["ALL"]
    if svc.cap_add:
        out["cap_add"] = list(svc.cap_add)
    out["read_only"] = svc.read_only
    if svc.stop_signal:
        out["stop_signal"] = svc.stop_signal
    out["stop_grace_period"] = _duration(svc.stop_grace_s)
    out["logging"] = {"driver": "json-file", "options": log_opts}
    out["labels"] = dict(svc.labels)
    limits: dict[str, Any] = {"pids": svc.pids_limit}
    if svc.memory_limit_mb:
        limits["memory"] = f"{svc.memory_limit_mb}M"
    resources: dict[str, Any] = {"limits": limits}
    if svc.memory_reservation_mb:
        resources["reservations"] = {"memory": f"{svc.memory_reservation_mb}M"}
    deploy: dict[str, Any] = {"mode": "global" if svc.global_mode else "replicated"}
    if not svc.global_mode:
        deploy["replicas"] = svc.replicas
    deploy["endpoint_mode"] = svc.endpoint_mode
    deploy["labels"] = dict(svc.labels)
    deploy["resources"] = resources
    restart: dict[str, Any] = {"condition": svc.restart.condition, "delay": _duration(svc.restart.delay_s)}
    if svc.restart.max_attempts:
        restart["max_attempts"] = svc.restart.max_attempts
    deploy["restart_policy"] = restart
    if svc.constraints:
        deploy["placement"] = {"constraints": list(svc.constraints)}
    u = svc.update
    deploy["update_config"] = {"parallelism": u.parallelism, "delay": _duration(u.delay_s), "order": u.order,
                               "failure_action": u.failure_action, "monitor": _duration(u.monitor_s),
                               "max_failure_ratio": 0}
    deploy["rollback_config"] = {"parallelism": u.parallelism, "order": u.order, "failure_action": "pause",
                                 "monitor": _duration(u.monitor_s)}
    out["deploy"] = deploy
    return out


def config_dir(path: str) -> str:
    """Where the export writes an uploaded file, next to the stack file."""
    if path.startswith(str(PurePosixPath(PROXY_CONFIG_TARGET).parent) + "/"):
        return "proxy"
    return "swarm" if path.startswith(f"{SWARM_TARGET}/") else "provision"


def stack_document(s: StackSettings, secret_text: dict[str, str], name_key: str,
                   model: SwarmModel | None = None) -> dict[str, Any]:
    """`secret_text`: logical secret name -> content, and `name_key` the stack's key of their names' hashes,
    for the content names only (the files hold the values)."""
    m = model or swarm_model(s)
    net_opts = {"driver_opts": {"encrypted": ""}} if m.encrypted else {}
    return {
        "services": {svc.name: _service(svc, s.log_opts) for svc in m.services},
        "networks": {logical: {"name": name, "driver": "overlay", "attachable": False, **net_opts}
                     for logical, name in m.networks.items()},
        "volumes": {logical: {"name": name} for logical, name in m.volumes.items()},
        "secrets": {name: {"file": f"./secrets/{name}",
                           "name": content_name(m.stack_name, name, secret_text[name], name_key)}
                    for name in m.secrets},
        "configs": {key: {"file": f"./{config_dir(path)}/{Path(path).name}",
                          "name": content_name(m.stack_name, key, content)}
                    for key, (path, content) in m.configs.items()},
    }
