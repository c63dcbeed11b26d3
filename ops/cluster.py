"""Operations on a replicated swarm database (`postgresMembers: 3`), through the manager's API alone.

Patroni's REST API and etcd listen on overlay networks that the operator's machine cannot reach, so each
look or action runs as a one-shot job service built from a member's own spec: its image, secrets, configs
and networks, without its volume, its placement or its healthcheck. Its output is read from the service's
logs, then the job is removed. One job at a time per stack: the fixed job name is the lock.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from typing import Any

import docker
import docker.errors

from model.settings import POSTGRES_PORT, POSTGRES_UID, SECRET_POSTGRES, StackSettings
from model.swarm import ETCD_CLIENT_PORT, MEMBERS, PATRONI_DIR
from ops.doctor import FAIL, OK, WARN, Finding
from ops.engine import OpsError

JOB_LABEL = "stock-analyzer.ops-job"
JOB_TIMEOUT_S = 120
BACKUP_TIMEOUT_S = 3600
BACKUP_SCRIPT = "/backup/backup.sh"
BACKUP_SERVICE, PROVISION_SERVICE = "db-backup", "db-provision"
TERMINAL = ("complete", "failed", "rejected", "shutdown", "orphaned")
SYNC_ROLES = ("Quorum Standby", "Sync Standby")  # patronictl's names in quorum and in plain synchronous mode
MAX_LAG_MB = 1  # patroni.yml's maximum_lag_on_failover (1 MiB): a replica further behind is not promoted


class ClusterOps:
    def __init__(self, s: StackSettings, client: docker.DockerClient,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        assert s.swarm is not None and s.swarm.members == 3
        self.s, self.client, self.clock, self.sleep = s, client, clock, sleep
        self.api: Any = client.api  # the low-level API (the SDK leaves it untyped)

    def _name(self, service: str) -> str:
        return f"{self.s.prefix}_{service}"

    def _spec(self, service: str) -> dict[str, Any]:
        name = self._name(service)
        found = [x for x in self.api.services(filters={"name": name}) if x["Spec"]["Name"] == name]
        if not found:
            raise OpsError(f"service {name} does not exist on this swarm: deploy the stack first (pulumi up)")
        return dict(copy.deepcopy(found[0]["Spec"]))

    def _template(self, service: str, keep_data: bool) -> dict[str, Any]:
        """The task template of a service of the stack, as a job's starting point: with `keep_data` its
        volumes and placement (the backups' volume, on its node), else neither (never a member's data)."""
        tt: dict[str, Any] = self._spec(service)["TaskTemplate"]
        cs = tt["ContainerSpec"]
        cs.pop("Args", None)
        if not keep_data:
            cs["Mounts"] = [m for m in cs.get("Mounts") or [] if m.get("Type") == "tmpfs"]
            tt.pop("Placement", None)
        cs["Healthcheck"] = {"Test": ["NONE"]}
        tt["RestartPolicy"] = {"Condition": "none", "MaxAttempts": 0}
        tt["Networks"] = [{"Target": n["Target"]} for n in tt.get("Networks") or []]
        return tt

    def job(self, service: str, command: list[str], timeout_s: float = JOB_TIMEOUT_S,
            tt: dict[str, Any] | None = None) -> tuple[int, str]:
        """Run `command` once in a copy of `service`'s task without its data (or in `tt`); (exit code, its
        stdout, with its stderr after it when it failed)."""
        tt = tt or self._template(service, keep_data=False)
        tt["ContainerSpec"]["Command"] = command
        name = self._name("ops-job")
        try:
            self.api.create_service(tt, name=name, labels={JOB_LABEL: service},
                                    mode={"ReplicatedJob": {"MaxConcurrent": 1, "TotalCompletions": 1}})
        except docker.errors.APIError as err:
            if err.status_code == 409:
                raise OpsError(f"another cluster command is running (service {name} exists); wait for it, or "
                               f"if none is: docker service rm {name}") from None
            raise
        try:
            code = self._wait(name, timeout_s)
            out = b"".join(self.api.service_logs(name, stdout=True, stderr=False, follow=False))
            if code != 0:
                out += b"".join(self.api.service_logs(name, stdout=False, stderr=True, follow=False))
            return code, out.decode("utf-8", "replace")
        finally:
            self.api.remove_service(name)

    def _wait(self, name: str, timeout_s: float) -> int:
        deadline = self.clock() + timeout_s
        while self.clock() < deadline:
            for task in self.api.tasks(filters={"service": name}):
                status = task.get("Status", {})
                if status.get("State") in TERMINAL:
                    if status["State"] in ("complete", "failed"):
                        return int(status.get("ContainerStatus", {}).get("ExitCode", 1))
                    raise OpsError(f"the job {name} could not run: {status.get('Err') or status['State']}")
            self.sleep(1)
        raise OpsError(f"the job {name} did not finish within {timeout_s:.0f} s (image missing on the node, or "
                       "no node with room for it); see: docker service ps --no-trunc " + name)

    # -- logical backups ----------------------------------------------------------------------------------

    def backup_script(self, args: str, superuser: bool = False) -> tuple[int, str]:
        """backup/backup.sh ARGS in a job beside the scheduled backups (their volume, their node, their lock).
        A restore logs in as the superuser, at the leader (:5432), with the superuser's secret mounted into
        this one job only."""
        tt = self._template(BACKUP_SERVICE, keep_data=True)
        if superuser:
            cs = tt["ContainerSpec"]
            ref = self._secret_ref(PROVISION_SERVICE, SECRET_POSTGRES.name)
            ref["File"].update(UID=str(POSTGRES_UID), GID=str(POSTGRES_UID), Mode=0o400)
            cs["Secrets"] = [*cs.get("Secrets", []), ref]
            env = dict(e.split("=", 1) for e in cs.get("Env") or [])
            env.update(PGUSER=self.s.db_superuser, PGPORT=str(POSTGRES_PORT),
                       RESTORE_PASSWORD_FILE=f"/run/secrets/{SECRET_POSTGRES.name}")
            cs["Env"] = [f"{k}={v}" for k, v in sorted(env.items())]
        # A restore verifies, takes its safety copy and restores: minutes on a large database.
        return self.job(BACKUP_SERVICE, ["sh", BACKUP_SCRIPT, *args.split()], timeout_s=BACKUP_TIMEOUT_S, tt=tt)

    def _secret_ref(self, service: str, target: str) -> dict[str, Any]:
        for ref in self._spec(service)["TaskTemplate"]["ContainerSpec"].get("Secrets") or []:
            if ref.get("File", {}).get("Name") == target:
                return dict(ref)
        raise OpsError(f"service {self._name(service)} mounts no secret {target}: redeploy the stack (pulumi up)")

    # -- Patroni ---------------------------------------------------------------------------------------

    def ctl(self, *args: str) -> tuple[int, str]:
        """patronictl in a job from the first member that exists (start.py ctl writes its configuration)."""
        return self.job("postgres-1", ["python3", f"{PATRONI_DIR}/start.py", "ctl", *args])

    def members(self) -> list[dict[str, Any]]:
        code, out = self.ctl("list", "-f", "json")
        if code != 0:
            raise OpsError(f"patronictl list failed (exit {code}): {_last_line(out)}")
        return _json_list(out, "patronictl list")

    def etcd(self) -> list[dict[str, Any]]:
        """`etcdctl endpoint health` of every member, from a job on the store's own network."""
        endpoints = ",".join(f"http://etcd-{k}:{ETCD_CLIENT_PORT}" for k in MEMBERS)
        _, out = self.job("etcd-1", ["etcdctl", f"--endpoints={endpoints}", "--dial-timeout=3s",
                                     "--command-timeout=5s", "endpoint", "health", "-w", "json"])
        return _json_list(out, "etcdctl endpoint health")

    def switchover(self, to: int | None, timeout_s: float = 90) -> str:
        """A planned move of the leader: to member `to`, or to the synchronous standby Patroni picks."""
        before = self.members()
        leader = _leader(before)
        if leader is None:
            raise OpsError("no running leader: a switchover needs one (ops doctor says why); nothing done")
        if to is not None and f"postgres-{to}" == leader["Member"]:
            return f"postgres-{to} already leads (timeline {leader['TL']}); nothing done"
        candidate = [] if to is None else ["--candidate", f"postgres-{to}"]
        args = ["switchover", "--leader", leader["Member"], *candidate, "--force"]
        started = self.clock()
        code, out = self.ctl(*args)
        # patronictl exits 0 even when Patroni refused (a candidate not yet in the quorum, say): its words say.
        if code != 0 or "Successfully switched over" not in out:
            raise OpsError(f"patronictl switchover refused (exit {code}): {_last_line(out)}; nothing done, "
                           "try again in a few seconds or see python -m ops doctor")
        while self.clock() - started < timeout_s:
            now = self.members()
            new = _leader(now)
            if new and new["Member"] != leader["Member"] and _healthy(now):
                return (f"switchover {leader['Member']} -> {new['Member']} in {self.clock() - started:.1f} s, "
                        f"timeline {leader['TL']} -> {new['TL']}; every member streaming")
            self.sleep(1)
        raise OpsError(f"the switchover did not settle within {timeout_s:.0f} s: see python -m ops doctor "
                       f"--stack {self.s.stack}")

    def doctor(self) -> list[Finding]:
        return [*self._etcd_findings(), *self._member_findings()]

    def _etcd_findings(self) -> list[Finding]:
        try:
            health = self.etcd()
        except OpsError as err:
            return [Finding(FAIL, "etcd", str(err), "docker service ps " + self._name("etcd-1"))]
        up = sorted(h["endpoint"].split("//")[-1].split(":")[0] for h in health if h.get("health"))
        down = sorted(h["endpoint"].split("//")[-1].split(":")[0] for h in health if not h.get("health"))
        detail = f"{len(up)} of {len(MEMBERS)} members healthy" + (f"; down: {', '.join(down)}" if down else "")
        if len(up) * 2 <= len(MEMBERS):
            return [Finding(FAIL, "etcd quorum", detail, "no leader can hold its lock: bring back the members "
                            "(docker service ps; docs/swarm.md, runbook: etcd lost its quorum)")]
        if down:
            return [Finding(WARN, "etcd quorum", detail, "one more loss stops every write: bring it back "
                            "(docs/swarm.md, runbook: an etcd member is lost)")]
        return [Finding(OK, "etcd quorum", detail)]

    def _member_findings(self) -> list[Finding]:
        try:
            ms = self.members()
        except OpsError as err:
            return [Finding(FAIL, "patroni", str(err), "docker service ps " + self._name("postgres-1"))]
        out = []
        leader = _leader(ms)
        if leader is None:
            out.append(Finding(FAIL, "leader", "no member leads: writes are refused",
                               "docs/swarm.md, runbook: no leader"))
        else:
            out.append(Finding(OK, "leader", f"{leader['Member']} on timeline {leader['TL']}"))
        syncs = [m["Member"] for m in ms if m["Role"] in SYNC_ROLES]
        out.append(Finding(OK, "synchronous standbys", ", ".join(syncs)) if syncs else Finding(
            WARN, "synchronous standbys", "none: commits are on the leader alone, and a failover could lose them",
            "bring a replica back (docs/swarm.md, runbook: a replica's node is lost)"))
        for k in MEMBERS:
            name = f"postgres-{k}"
            out.append(_member_finding(name, next((m for m in ms if m["Member"] == name), None), leader,
                                       self._name(name)))
        return out


def _member_finding(name: str, m: dict[str, Any] | None, leader: dict[str, Any] | None, service: str) -> Finding:
    if m is None:
        return Finding(FAIL, name, "not in the cluster (its task is down or its node is cut)",
                       f"docker service ps {service}; docs/swarm.md, runbook per failure")
    detail = f"{m['Role']}, {m['State']}, timeline {m.get('TL', '?')}, lag {m.get('Lag in MB', 0) or 0} MB"
    if m["Role"] == "Leader":
        return Finding(OK, name, detail)
    lag = m.get("Lag in MB")
    behind = isinstance(lag, int | float) and lag > MAX_LAG_MB
    if m["State"] != "streaming" or behind or (leader and m.get("TL") != leader.get("TL")):
        return Finding(WARN, name, detail, "it should catch up by itself within a minute; if not: "
                       "patronictl reinit (docs/swarm.md, runbook: a member does not stream)")
    return Finding(OK, name, detail)


def _leader(ms: list[dict[str, Any]]) -> dict[str, Any] | None:
    leaders = [m for m in ms if m["Role"] == "Leader" and m["State"] == "running"]
    return leaders[0] if len(leaders) == 1 else None


def _healthy(ms: list[dict[str, Any]]) -> bool:
    leader = _leader(ms)
    return leader is not None and len(ms) == len(MEMBERS) and all(
        m is leader or (m["State"] == "streaming" and m.get("TL") == leader.get("TL")) for m in ms)


def _json_list(out: str, what: str) -> list[dict[str, Any]]:
    """The JSON array in a job's output (the log may carry other lines before it)."""
    for line in reversed(out.splitlines()):
        line = line.strip()
        if line.startswith("["):
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                break
            if isinstance(value, list):
                return value
    raise OpsError(f"{what} said no JSON: {_last_line(out)}")


def _last_line(out: str) -> str:
    lines = [x for x in out.splitlines() if x.strip()]
    return lines[-1].strip() if lines else "(no output)"
