"""ops on a replicated swarm database (ops/cluster.py) against a fake manager API: the job built from a
member's spec, the lock its fixed name gives, its bounded wait, and what switchover and doctor conclude from
what patronictl and etcdctl said. The lab runs the real thing (tests/docker/test_swarm_cluster.py)."""

from __future__ import annotations

import json
from typing import Any

import docker.errors
import pytest

from model.settings import StackSettings
from ops.cluster import ClusterOps
from ops.engine import OpsError
from tests.pulumi_mocks import committed_config, settings_of

PREFIX = "stock-analyzer:"


def _settings() -> StackSettings:
    return settings_of("swarm", {**committed_config("swarm"), f"{PREFIX}postgresMembers": "3"})


# Names of Swarm secret objects the fake services mount (references to secrets, not secret values).
BACKUP_REF = "backup-secret-ref-1"  # pragma: allowlist secret
APP_REF = "app-secret-ref-1"  # pragma: allowlist secret
SUPERUSER_REF = "superuser-secret-ref-7"  # pragma: allowlist secret


MEMBER_SPEC = {
    "Name": "", "TaskTemplate": {
        "ContainerSpec": {"Image": "patroni:1", "Command": ["python3", "/etc/patroni/start.py"], "Args": ["x"],
                          "Mounts": [{"Type": "volume", "Source": "data_1", "Target": "/var/lib/postgresql/data"},
                                     {"Type": "tmpfs", "Target": "/tmp"}],
                          "Healthcheck": {"Test": ["CMD", "true"]}, "Secrets": [{"SecretName": "s"}]},
        "Placement": {"Constraints": ["node.labels.db==1"]},
        "Networks": [{"Target": "net-backend", "Aliases": ["postgres-1"]}, {"Target": "net-dcs"}],
        "RestartPolicy": {"Condition": "any"},
    }}


BACKUP_SPEC = {
    "Name": "", "TaskTemplate": {
        "ContainerSpec": {"Image": "postgres:17", "Command": ["sh", "/backup/backup.sh", "loop"],
                          "Env": ["PGHOST=postgres", "PGPORT=5433", "PGUSER=stock_backup"],
                          "Mounts": [{"Type": "volume", "Source": "backups", "Target": "/var/lib/backups"}],
                          "Secrets": [{"SecretName": BACKUP_REF, "SecretID": "b1",
                                       "File": {"Name": "backup_db_password"}}]},
        "Placement": {"Constraints": ["node.labels.db==1"]},
        "Networks": [{"Target": "net-backend"}]}}
PROVISION_SPEC = {
    "Name": "", "TaskTemplate": {
        "ContainerSpec": {"Image": "postgres:17", "Secrets": [
            {"SecretName": APP_REF, "SecretID": "a1", "File": {"Name": "app_db_password", "UID": "0"}},
            {"SecretName": SUPERUSER_REF, "SecretID": "p7", "File": {"Name": "postgres_password", "UID": "0",
                                                                   "GID": "0", "Mode": 256}}]},
        "Networks": []}}


def _member(name: str, role: str, state: str = "streaming", tl: int = 2, lag: Any = 0) -> dict[str, Any]:
    return {"Member": name, "Role": role, "State": state, "TL": tl, "Lag in MB": lag}


HEALTHY = [_member("postgres-1", "Leader", "running"), _member("postgres-2", "Quorum Standby"),
           _member("postgres-3", "Quorum Standby")]


class FakeApi:
    """The manager: each job's output comes from `answer(command)`; jobs finish on the first look."""

    def __init__(self, answer: Any, state: str = "complete") -> None:
        self.answer, self.state = answer, state
        self.created: list[tuple[dict[str, Any], str, Any]] = []
        self.removed: list[str] = []
        self.exists: set[str] = set()
        self.code = 0

    def services(self, filters: dict[str, str]) -> list[dict[str, Any]]:
        spec = json.loads(json.dumps(BACKUP_SPEC if filters["name"].endswith("_db-backup") else
                                     PROVISION_SPEC if filters["name"].endswith("_db-provision") else MEMBER_SPEC))
        spec["Name"] = filters["name"]
        return [{"Spec": spec}]

    def create_service(self, tt: dict[str, Any], name: str, labels: dict[str, str], mode: Any) -> None:
        if name in self.exists:
            raise docker.errors.APIError("conflict", response=type("R", (), {"status_code": 409})())
        self.created.append((tt, name, mode))
        self.code, self.out = self.answer(tt["ContainerSpec"]["Command"])

    def tasks(self, filters: dict[str, str]) -> list[dict[str, Any]]:
        return [{"Status": {"State": self.state, "ContainerStatus": {"ExitCode": self.code}}}]

    def service_logs(self, name: str, **kw: Any) -> list[bytes]:
        return [f"some log line\n{self.out}\n".encode()]

    def remove_service(self, name: str) -> None:
        self.removed.append(name)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s


def _ops(api: FakeApi, clock: Clock | None = None) -> ClusterOps:
    clock = clock or Clock()
    client = type("Client", (), {"api": api})()
    return ClusterOps(_settings(), client, clock=clock, sleep=clock.sleep)


def test_a_job_is_the_members_task_without_its_volume_placement_or_healthcheck() -> None:
    api = FakeApi(lambda cmd: (0, json.dumps(HEALTHY)))
    assert _ops(api).members() == HEALTHY
    ((tt, name, mode),) = api.created
    cs = tt["ContainerSpec"]
    assert name == "stock-analyzer-swarm_ops-job" and api.removed == [name]
    assert cs["Command"] == ["python3", "/etc/patroni/start.py", "ctl", "list", "-f", "json"] and "Args" not in cs
    assert cs["Mounts"] == [{"Type": "tmpfs", "Target": "/tmp"}], "a job must never mount a member's data"
    assert cs["Healthcheck"] == {"Test": ["NONE"]} and cs["Secrets"] == [{"SecretName": "s"}]
    assert "Placement" not in tt and tt["RestartPolicy"]["Condition"] == "none"
    assert tt["Networks"] == [{"Target": "net-backend"}, {"Target": "net-dcs"}]
    assert mode == {"ReplicatedJob": {"MaxConcurrent": 1, "TotalCompletions": 1}}


def test_a_second_command_at_once_is_refused_with_the_way_out() -> None:
    api = FakeApi(lambda cmd: (0, "[]"))
    api.exists.add("stock-analyzer-swarm_ops-job")
    with pytest.raises(OpsError, match=r"another cluster command is running .*docker service rm "
                                       r"stock-analyzer-swarm_ops-job"):
        _ops(api).members()
    assert api.removed == [], "the other command's job is not ours to remove"


def test_a_job_that_never_finishes_is_bounded_and_removed() -> None:
    api = FakeApi(lambda cmd: (0, "[]"), state="pending")
    clock = Clock()
    with pytest.raises(OpsError, match="did not finish within 120 s"):
        _ops(api, clock).members()
    assert api.removed == ["stock-analyzer-swarm_ops-job"] and 120 <= clock.now <= 122


def test_switchover_names_the_candidate_and_waits_for_every_member_to_stream() -> None:
    after = [_member("postgres-1", "Replica", "running", tl=3), _member("postgres-2", "Leader", "running", tl=3),
             _member("postgres-3", "Quorum Standby", tl=3)]
    settled = [_member("postgres-1", "Replica", tl=3), *after[1:]]
    lists = iter([HEALTHY, after, settled])
    commands: list[list[str]] = []

    def answer(cmd: list[str]) -> tuple[int, str]:
        commands.append(cmd[3:])
        if cmd[3] == "switchover":
            return 0, "Successfully switched over to \"postgres-2\""
        return 0, json.dumps(next(lists))

    said = _ops(FakeApi(answer)).switchover(2)
    assert ["switchover", "--leader", "postgres-1", "--candidate", "postgres-2", "--force"] in commands
    assert said.startswith("switchover postgres-1 -> postgres-2 in ") and "timeline 2 -> 3" in said
    assert commands.count(["list", "-f", "json"]) == 3, "a member still starting is not settled"


def test_switchover_to_the_leader_does_nothing_and_without_a_leader_refuses() -> None:
    commands: list[list[str]] = []

    def answer(cmd: list[str]) -> tuple[int, str]:
        commands.append(cmd[3:])
        return 0, json.dumps(HEALTHY)

    assert "nothing done" in _ops(FakeApi(answer)).switchover(1)
    assert all(c[0] == "list" for c in commands)
    leaderless = [_member(m["Member"], "Replica") for m in HEALTHY]
    with pytest.raises(OpsError, match="no running leader"):
        _ops(FakeApi(lambda cmd: (0, json.dumps(leaderless)))).switchover(2)


def _health(*up: bool) -> str:
    return json.dumps([{"endpoint": f"http://etcd-{k}:2379", "health": h} for k, h in enumerate(up, 1)])


@pytest.mark.parametrize(("etcd", "members", "expect"), [
    (_health(True, True, True), HEALTHY, {"etcd": "ok", "leader": "ok", "synchronous": "ok", "postgres-3": "ok"}),
    (_health(True, False, True), HEALTHY, {"etcd": "warn"}),
    (_health(True, False, False), [_member(m["Member"], "Replica", "running") for m in HEALTHY],
     {"etcd": "fail", "leader": "fail", "synchronous": "warn"}),
    (_health(True, True, True), [*HEALTHY[:2], _member("postgres-3", "Replica", "streaming", lag=40)],
     {"postgres-3": "warn"}),
    (_health(True, True, True), HEALTHY[:2], {"postgres-3": "fail"}),
    (_health(True, True, True), [*HEALTHY[:2], _member("postgres-3", "Replica", "streaming", tl=1)],
     {"postgres-3": "warn"}),
])
def test_doctor_judges_the_store_and_each_member(etcd: str, members: list[dict[str, Any]],
                                                 expect: dict[str, str]) -> None:
    ops = _ops(FakeApi(lambda cmd: (0, etcd if cmd[0] == "etcdctl" else json.dumps(members))))
    found = {f.check.split()[0]: f for f in ops.doctor()}
    assert {k: found[k].status for k in expect} == expect
    assert all(f.fix for f in found.values() if f.status != "ok"), "every warning or failure names its fix"
    if expect.get("postgres-3") == "fail":
        assert found["postgres-3"].fix.startswith("docker service ps stock-analyzer-swarm_postgres-3;")


def test_a_backup_job_runs_beside_the_scheduled_backups_with_the_backup_role() -> None:
    api = FakeApi(lambda cmd: (0, "stock_analysis-20261203T120000Z"))
    code, out = _ops(api).backup_script("now on-demand")
    ((tt, _, _),) = api.created
    cs = tt["ContainerSpec"]
    assert (code, out.split()[-1]) == (0, "stock_analysis-20261203T120000Z")
    assert cs["Command"] == ["sh", "/backup/backup.sh", "now", "on-demand"]
    assert cs["Mounts"] == BACKUP_SPEC["TaskTemplate"]["ContainerSpec"]["Mounts"]  # type: ignore[index]
    assert tt["Placement"] == {"Constraints": ["node.labels.db==1"]}, "the backups' volume is on one node"
    assert [r["SecretName"] for r in cs["Secrets"]] == [BACKUP_REF] and "PGPORT=5433" in cs["Env"]


def test_a_restore_job_alone_gets_the_superusers_secret_and_goes_to_the_leader() -> None:
    api = FakeApi(lambda cmd: (0, "stock_analysis-20261203T120500Z"))
    _ops(api).backup_script("restore stock_analysis-20261203T120000Z", superuser=True)
    ((tt, _, _),) = api.created
    cs = tt["ContainerSpec"]
    assert [r["SecretName"] for r in cs["Secrets"]] == [BACKUP_REF, SUPERUSER_REF]
    assert cs["Secrets"][1]["File"] == {"Name": "postgres_password", "UID": "999", "GID": "999", "Mode": 0o400}
    assert {"PGPORT=5432", "PGUSER=postgres", "RESTORE_PASSWORD_FILE=/run/secrets/postgres_password"} <= set(cs["Env"])
    assert not any("PGPASSWORD=" in e for e in cs["Env"]), "the password travels as a file, never in the spec"
    assert BACKUP_SPEC["TaskTemplate"]["ContainerSpec"]["Env"] == [  # type: ignore[index]
        "PGHOST=postgres", "PGPORT=5433", "PGUSER=stock_backup"], "the service's own spec is not touched"


def test_a_failed_job_reports_its_stderr_last() -> None:
    class Failing(FakeApi):
        def service_logs(self, name: str, **kw: Any) -> list[bytes]:
            return [b"partial\n"] if kw["stdout"] else [b"backup: error: no space left on device\n"]

    code, out = _ops(Failing(lambda cmd: (1, ""))).backup_script("now on-demand")
    assert code == 1 and out.splitlines()[-1] == "backup: error: no space left on device"


def test_a_switchover_patroni_refused_is_reported_though_patronictl_exits_0() -> None:
    def answer(cmd: list[str]) -> tuple[int, str]:
        if cmd[3] == "switchover":
            return 0, "Switchover failed, details: 412, candidate name does not match with sync_standby"
        return 0, json.dumps(HEALTHY)

    with pytest.raises(OpsError, match=r"refused .*candidate name does not match.*nothing done"):
        _ops(FakeApi(answer)).switchover(3)
