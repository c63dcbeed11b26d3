"""The swarm target with postgresMembers 3 (issue 21): Patroni members, etcd and the database router, as the
model, the program and the files the containers read. The lab proves the behaviour
(tests/docker/test_swarm_cluster.py); these check the wiring that behaviour depends on."""

from __future__ import annotations

import importlib.util
import os
import re
import stat
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from model.settings import (
    PATRONI_REPLICATION_USER,
    PATRONI_REWIND_USER,
    ConfigError,
    load_settings,
)
from model.stack_yaml import read_stack_file
from model.swarm import ROUTER_CONFIG_SOURCE, ROUTER_REPLICA_PORT, swarm_model
from tests.pulumi_mocks import ROOT, committed_config, plain, run_program

RAW = {**read_stack_file("swarm"), "postgresMembers": "3"}
PATRONI_YML = yaml.safe_load((ROOT / "patroni" / "patroni.yml").read_text())


def _settings(**changes: str) -> Any:
    return load_settings({**RAW, **changes}, "swarm")


@pytest.mark.parametrize(("changes", "key", "allowed"), [
    ({"postgresMembers": "2"}, "postgresMembers", "1 (one server) or 3"),
    ({"postgresMembers": "03"}, "postgresMembers", "1 (one server) or 3"),
    ({"postgresMembers": "3", "swarmEndpointMode": "vip"}, "swarmEndpointMode", "dnsrr with postgresMembers 3"),
    ({"dbAppUser": PATRONI_REPLICATION_USER}, "dbAppUser", PATRONI_REPLICATION_USER),
    ({"dbBackupUser": PATRONI_REWIND_USER}, "dbBackupUser", PATRONI_REWIND_USER),
])
def test_bad_cluster_settings_are_refused_by_key(changes: dict[str, str], key: str, allowed: str) -> None:
    with pytest.raises(ConfigError) as err:
        _settings(**changes)
    assert f"'stock-analyzer:{key}'" in str(err.value) and allowed in str(err.value)


def test_a_single_host_stack_cannot_ask_for_members() -> None:
    with pytest.raises(ConfigError, match=r"postgresMembers.*1 unless stock-analyzer:target is swarm"):
        load_settings({**read_stack_file("dev"), "postgresMembers": "3"}, "dev")


def test_each_member_and_each_etcd_has_its_own_node_and_volume() -> None:
    m = swarm_model(_settings())
    by = {svc.name: svc for svc in m.services}
    for kind, volume in (("postgres", "postgres_data"), ("etcd", "etcd_data")):
        names = [f"{kind}-{k}" for k in (1, 2, 3)]
        assert [by[n].constraints for n in names] == [(f"node.labels.stock-analyzer-db=={k}",) for k in (1, 2, 3)]
        vols = [[mt.source for mt in by[n].mounts if mt.type == "volume"] for n in names]
        assert vols == [[f"{volume}_{k}"] for k in (1, 2, 3)]
        assert all(m.volumes[f"{volume}_{k}"] == f"stock-analyzer-swarm_{volume}_{k}" for k in (1, 2, 3))
        assert all(by[n].replicas == 1 and by[n].update.order == "stop-first" for n in names)
    assert "postgres_data" not in m.volumes
    # Only the router answers to `postgres`; etcd is on a network the app is not on.
    aliases = {svc.name: {a for _, al in svc.networks for a in (svc.name, *al)} for svc in m.services}
    assert [n for n, a in aliases.items() if "postgres" in a] == ["postgres"]
    assert by["postgres"].image == "haproxy:3.0" and by["postgres"].replicas == 2
    on_dcs = {svc.name for svc in m.services if "dcs" in dict(svc.networks)}
    assert on_dcs == {"etcd-1", "etcd-2", "etcd-3", "postgres-1", "postgres-2", "postgres-3"}


def test_patroni_passwords_are_files_for_the_members_only() -> None:
    m = swarm_model(_settings())
    patroni = {"patroni_replication_password", "patroni_rewind_password", "patroni_api_password"}
    assert patroni <= set(m.secrets)
    for svc in m.services:
        mounted = {r.source for r in svc.secrets}
        if svc.name.startswith("postgres-"):
            assert mounted == {*patroni, "postgres_bootstrap_password"}, svc.name
            assert all(r.uid == 999 and r.mode == 0o400 for r in svc.secrets)
            files = {k: v for k, v in svc.env if "PASSWORD" in k}
            assert files and all(k.endswith("_PASSWORD_FILE") and v.startswith("/run/secrets/")
                                 for k, v in files.items()), files
        else:
            assert not mounted & patroni, svc.name


def test_the_program_starts_etcd_then_the_members_in_turn_then_the_router_and_the_job() -> None:
    cfg = committed_config("swarm")
    cfg["stock-analyzer:postgresMembers"] = "3"
    rec = run_program("swarm", cfg)
    svcs = {r.name: r for r in rec.of_type("docker:index/service:Service")}
    urn = {r.name: r.urn for r in svcs.values()}

    def after(later: str, earlier: str) -> bool:
        return urn[earlier] in svcs[later].dependencies

    for k in (1, 2, 3):
        assert all(after(f"database-postgres-{k}", f"dcs-etcd-{j}") for j in (1, 2, 3))
        assert not any(after(f"dcs-etcd-{k}", f"dcs-etcd-{j}") for j in (1, 2, 3)), "a quorum starts together"
    assert after("database-postgres-2", "database-postgres-1") and after("database-postgres-3", "database-postgres-2")
    assert after("database-postgres", "database-postgres-3") and after("database-db-provision", "database-postgres")
    backup = plain(svcs["app-db-backup"].inputs)["taskSpec"]["containerSpec"]["env"]
    assert backup["PGHOST"] == "postgres" and backup["PGPORT"] == str(ROUTER_REPLICA_PORT)
    member = plain(svcs["database-postgres-2"].inputs)["taskSpec"]["containerSpec"]
    assert member["commands"] == ["python3", "/etc/patroni/start.py"]
    assert {s["fileName"] for s in member["secrets"]} == {
        "postgres_bootstrap_password", "patroni_replication_password", "patroni_rewind_password",
        "patroni_api_password"}
    assert member["env"]["PATRONI_ETCD3_HOSTS"] == "etcd-1:2379,etcd-2:2379,etcd-3:2379"


def test_patroni_settings_never_lose_an_acknowledged_write_and_rewind_an_old_leader() -> None:
    dcs = PATRONI_YML["bootstrap"]["dcs"]
    assert dcs["synchronous_mode"] == "quorum" and dcs["synchronous_node_count"] == 1
    assert dcs["postgresql"]["use_pg_rewind"] is True
    # Patroni's rule: the leader must be able to retry the store within its lock's life.
    assert dcs["loop_wait"] + 2 * dcs["retry_timeout"] <= dcs["ttl"] <= 30
    hba = PATRONI_YML["postgresql"]["pg_hba"]
    assert f"host replication {PATRONI_REPLICATION_USER} all scram-sha-256" in hba
    assert not [line for line in hba if line.startswith("host") and line.split()[-1] != "scram-sha-256"]
    assert "data-checksums" in PATRONI_YML["bootstrap"]["initdb"]
    assert "authentication" not in PATRONI_YML["postgresql"], "passwords come from the secret files only"


def test_the_router_sends_5432_to_the_primary_and_the_replica_port_to_replicas_of_exactly_the_members() -> None:
    text = ROUTER_CONFIG_SOURCE.read_text()
    sections = dict(re.findall(r"^backend (\w+)\n((?:    .*\n)+)", text, re.MULTILINE))
    for backend, path in (("primary", "/primary"), ("replicas", "/replica")):
        body = sections[backend]
        assert f"option httpchk GET {path}\n" in body
        members = [(f"postgres-{k}", f"postgres-{k}") for k in (1, 2, 3)]
        assert re.findall(r"server (\S+) (\S+):5432", body) == members
    assert re.search(r'bind "\*:5432"\n    default_backend primary', text)
    assert re.search(rf'bind "\*:{ROUTER_REPLICA_PORT}"\n    default_backend replicas', text)
    assert re.search(r"default-server .*check port 8008 .*on-marked-down shutdown-sessions", text)


def _start_module() -> Any:
    spec = importlib.util.spec_from_file_location("patroni_start", ROOT / "patroni" / "start.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_member_start_writes_the_passwords_to_a_private_file_not_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    start = _start_module()
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    env = {k: v for k, v in swarm_model(_settings()).service("postgres-1").env}
    values = {}
    for key, path in env.items():
        if key.endswith("_PASSWORD_FILE"):  # the official image's convention: a path under /run/secrets
            name = PurePosixPath(path).name
            assert str(PurePosixPath(path).parent) == "/run/secrets", (key, path)
            values[name] = f"value-of-{name}"
            (secrets / name).write_text(values[name] + "\n")
            env[key] = str(secrets / name)
    assert len(values) == 4 and not [k for k in env if k.endswith("_SECRET")], env
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(start, "BASE", ROOT / "patroni" / "patroni.yml")
    monkeypatch.setattr(start, "SECRETS", secrets)
    monkeypatch.setattr(start, "OUT", tmp_path / "run" / "patroni.yml")
    started: list[list[str]] = []
    monkeypatch.setattr(os, "execvp", lambda f, args: started.append(args))
    start.main([])
    out = tmp_path / "run" / "patroni.yml"
    assert stat.S_IMODE(out.stat().st_mode) == 0o600 and started == [["patroni", str(out)]]
    conf = yaml.safe_load(out.read_text())
    auth = conf["postgresql"]["authentication"]
    assert auth["replication"] == {"username": PATRONI_REPLICATION_USER,
                                   "password": values["patroni_replication_password"]}
    assert auth["rewind"]["username"] == PATRONI_REWIND_USER
    assert auth["superuser"] == {"username": _settings().db_superuser,
                                 "password": values["postgres_bootstrap_password"]}
    assert conf["restapi"]["authentication"]["password"] == values["patroni_api_password"]
    assert conf["bootstrap"] == PATRONI_YML["bootstrap"]
    assert not any(v in os.environ.values() for v in values.values())
    # `start.py ctl ARGS` (ops' one-shot jobs): patronictl with the same file, the REST API's login in `ctl`.
    started.clear()
    start.main(["ctl", "list", "-f", "json"])
    assert started[0] == ["patronictl", "-c", str(out), "list", "-f", "json"]
    assert yaml.safe_load(out.read_text())["ctl"]["authentication"]["password"] == values["patroni_api_password"]
    (secrets / "patroni_rewind_password").write_text("\n")
    with pytest.raises(SystemExit, match="patroni_rewind_password is empty"):
        start.main([])
    monkeypatch.setenv("PATRONI_API_PASSWORD_FILE", str(tmp_path / "elsewhere"))
    with pytest.raises(SystemExit, match=r"PATRONI_API_PASSWORD_FILE=.* is not a file under"):
        start.main([])
