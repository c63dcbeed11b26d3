"""The swarm target without an engine: its settings, the model, the stack-file export, the Pulumi program
under mocks, and that the two outputs agree."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import shutil
import stat
from pathlib import Path
from typing import Any

import pulumi
import pytest
import yaml

from exporters import compose
from exporters.swarm_stack import stack_document
from model.settings import ConfigError, load_settings
from model.stack_yaml import read_stack_file, settings_from_file
from model.swarm import (
    APP_CREDENTIALS_SECRET,
    DeployedApp,
    content_name,
    deployed_app_role,
    next_app_role,
    swarm_model,
)
from tests.docker.pulumi_swarm_apply import SCHEMA, _check, service_spec
from tests.pulumi_mocks import ROOT, DeployedReader, Recording, committed_config, is_secret, plain, run_program

# The one-server layout (postgresMembers 1); the committed three-member cluster is tests/test_swarm_cluster.py's.
SWARM_RAW = {**read_stack_file("swarm"), "postgresMembers": "1"}


def _settings(**overrides: str) -> Any:
    return load_settings({**SWARM_RAW, **overrides}, "swarm")


@pytest.mark.parametrize(("key", "value", "allowed"), [
    ("target", "kubernetes", "one of single, swarm"),
    ("swarmEndpointMode", "ingress", "one of vip, dnsrr"),
    ("apiReplicas", "0", "an integer from 1 to 10"),
    ("apiReplicas", "11", "an integer from 1 to 10"),
    ("swarmDbNodeLabel", "Bad Label", "a node label name"),
    ("swarmDbNodeLabel", "db-", "a node label name"),
    ("proxyImage", "haproxy:latest", "pinned by tag or digest"),
    ("appImageTag", "v1 ", "an image tag"),
    ("swarmEncryptOverlay", "yes", "true or false"),
    ("swarmPublishApi", "1", "true or false"),
    # Swarm publishes on every address of every node: a host address would be ignored, so it is refused.
    ("apiHostIp", "10.0.0.5", "unset with stock-analyzer:target swarm"),
    ("frontendHostIp", "0.0.0.0", "unset with stock-analyzer:target swarm"),
    ("adminHostIp", "127.0.0.2", "unset with stock-analyzer:target swarm"),
    ("postgresHostPort", "5446", "the database is never published on a swarm"),
])
def test_bad_swarm_values_fail_naming_key_value_and_what_is_allowed(key: str, value: str, allowed: str) -> None:
    with pytest.raises(ConfigError) as err:
        _settings(**{key: value})
    assert f"'stock-analyzer:{key}'" in str(err.value) and repr(value) in str(err.value)
    assert allowed in str(err.value)


def test_single_host_stacks_have_no_swarm_settings() -> None:
    s = settings_from_file("dev")
    assert s.target == "single" and s.swarm is None
    with pytest.raises(ValueError, match="not swarm"):
        swarm_model(s)


def test_the_database_its_job_and_backups_are_pinned_and_never_overlap() -> None:
    m = swarm_model(_settings())
    for name in ("postgres", "db-provision", "db-backup"):
        svc = m.service(name)
        assert svc.constraints == ("node.labels.stock-analyzer-db==true",), name
        assert svc.update.order == "stop-first" and svc.replicas == 1, name
    assert m.retire.constraints == m.service("postgres").constraints
    pg = m.service("postgres")
    assert pg.stop_grace_s == 60 and pg.stop_signal == "SIGINT"
    assert [mt.source for mt in pg.mounts if mt.type == "volume"] == ["postgres_data"]


def test_app_services_roll_start_first_gated_by_health_and_read_their_login_from_a_secret() -> None:
    s = _settings(apiReplicas="3")
    m = swarm_model(s)
    for name in ("api", "frontend", "admin"):
        svc = m.service(name)
        assert svc.update.order == "start-first" and svc.update.failure_action == "rollback"
        assert svc.healthcheck is not None and not svc.constraints
        assert all(mt.source != "app_credentials" for mt in svc.mounts), "volumes are node-local"
        assert svc.stop_grace_s > 0, "the provider would send 0 for an unset grace period"
        assert svc.memory_limit_mb and svc.memory_reservation_mb == svc.memory_limit_mb // 2
    assert m.service("api").replicas == 3
    for name in ("api", "admin"):
        env = dict(m.service(name).env)
        assert env["DB_CREDENTIALS_FILE"] == f"/run/secrets/{APP_CREDENTIALS_SECRET}"
        assert [r.source for r in m.service(name).secrets if r.source == APP_CREDENTIALS_SECRET]
    assert not [r for r in m.service("frontend").secrets if r.source == APP_CREDENTIALS_SECRET]
    assert "BACKUP_STATUS_FILE" not in dict(m.service("admin").env)


def test_endpoint_modes_publish_through_the_proxy_or_the_routing_mesh() -> None:
    dnsrr = swarm_model(_settings(swarmEndpointMode="dnsrr"))
    proxy = dnsrr.service("proxy")
    assert proxy.global_mode and {(p.published, p.mode) for p in proxy.ports} == {(5000, "host"), (8000, "host")}
    assert proxy.networks == (("frontend", ()),), "the edge never joins the backend"
    assert not dnsrr.service("api").ports
    vip = swarm_model(_settings(swarmEndpointMode="vip"))
    assert "proxy" not in {svc.name for svc in vip.services}
    assert [(p.published, p.mode) for p in vip.service("api").ports] == [(5000, "ingress")]
    assert not vip.service("admin").ports, "the admin UI is never published on a swarm"


def test_content_names_change_with_content_and_fit_swarm_limits() -> None:
    a, b = content_name("p", "x", "one"), content_name("p", "x", "two")
    assert a != b and a == content_name("p", "x", "one")
    long = content_name("stock-analyzer-" + "s" * 60, "postgres_bootstrap_password", "v")
    assert len(long) <= 64 and re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*[a-zA-Z0-9]", long)



def test_secret_names_carry_a_keyed_hash_that_gives_no_way_to_test_a_password() -> None:
    """Before: sha256(password)[:12] in every secret's name, testable offline by anyone who can list secrets."""
    plain_hash = hashlib.sha256(b"guess").hexdigest()[:12]
    keyed = content_name("p", "app_db_password", "guess", "stack-key")
    assert keyed == "p_app_db_password-" + hmac.new(b"stack-key", b"guess", hashlib.sha256).hexdigest()[:12]
    assert not keyed.endswith(plain_hash)
    assert keyed != content_name("p", "app_db_password", "guess", "another-stack-key")


def test_the_app_moves_to_the_other_role_on_each_new_password() -> None:
    assert next_app_role("app", "p1", None) == "app"
    assert next_app_role("app", "p1", "app\np1\n") == "app"
    assert next_app_role("app", "p2", "app\np1\n") == "app_b"
    assert next_app_role("app", "p3", "app_b\np2\n") == "app"
    assert next_app_role("app", "p1", "someone_else\np1\n") == "app"


def _running(rec: Recording) -> DeployedReader:
    """The engine's answer after `rec` was applied: the API service's app secret name and its role label."""
    api = plain(rec.named("app-api").inputs)
    labels = {lab["label"]: lab["value"] for lab in api.get("labels", [])}
    (name,) = [s["secretName"] for s in api["taskSpec"]["containerSpec"]["secrets"]
               if s["fileName"] == "app_credentials"]

    def read(host: str | None, service: str, target: str) -> DeployedApp:
        assert (service, target) == ("stock-analyzer-swarm_api", "app_credentials")
        return DeployedApp(name, labels.get("stock-analyzer.app-role"))
    return read


def _app_role(rec: Recording) -> str:
    data = plain(rec.named("files-app-credentials").inputs["data"])
    return str(base64.b64decode(data).decode().splitlines()[0])


def _swarm_cfg(**changes: str) -> dict[str, str]:
    cfg = committed_config("swarm")
    cfg.update({f"stock-analyzer:{k}": v for k, v in changes.items()})
    return cfg


def test_the_app_role_follows_the_deployed_secret_not_a_version_counter() -> None:
    """Before: role = version % 2, so a skipped version or a supplied password kept the role of the tasks
    still running, and the provisioning job changed that role's password under them."""
    first = run_program("swarm")
    assert _app_role(first) == "stock_app"
    same = run_program("swarm", deployed=_running(first))
    assert _app_role(same) == "stock_app"
    assert plain(same.named("files-app-credentials").inputs) == plain(first.named("files-app-credentials").inputs)
    skipped = run_program("swarm", _swarm_cfg(appDbPasswordVersion="3"), deployed=_running(first))
    assert _app_role(skipped) == "stock_app_b"
    # A value made here, never a literal: only its difference from the generated one matters.
    supplied = run_program("swarm", _swarm_cfg(appDbPassword=hashlib.sha256(b"supplied").hexdigest()),
                           secret_keys=("appDbPassword",), deployed=_running(first))
    assert _app_role(supplied) == "stock_app_b"
    back = run_program("swarm", _swarm_cfg(appDbPasswordVersion="4"), deployed=_running(skipped))
    assert _app_role(back) == "stock_app"
    api = plain(back.named("app-api").inputs)
    assert {"label": "stock-analyzer.app-role", "value": "stock_app"} in api["labels"]
    assert "stock-analyzer.app-role" not in {lab["label"] for lab in api["taskSpec"]["containerSpec"]["labels"]}


def test_a_role_is_kept_only_while_the_deployed_secret_holds_this_password() -> None:
    key, pw = "k", "p1"
    a = content_name("s", "app_credentials", "app\np1\n", key)
    b = content_name("s", "app_credentials", "app_b\np1\n", key)
    assert deployed_app_role("app", "s", pw, key, None, 7) == "app"
    assert deployed_app_role("app", "s", pw, key, DeployedApp(a, "app"), 2) == "app"
    assert deployed_app_role("app", "s", pw, key, DeployedApp(b, "app_b"), 1) == "app_b"
    assert deployed_app_role("app", "s", "p2", key, DeployedApp(a, "app"), 1) == "app_b"
    assert deployed_app_role("app", "s", "p2", key, DeployedApp(b, "app_b"), 2) == "app"
    assert deployed_app_role("app", "s", pw, "other-key", DeployedApp(a, "app"), 1) == "app_b"
    # Deployed before the label: an unchanged password still matches by name; otherwise the version rule.
    assert deployed_app_role("app", "s", pw, key, DeployedApp(b, None), 1) == "app_b"
    assert deployed_app_role("app", "s", "p2", key, DeployedApp(a, None), 2) == "app_b"


def test_an_unreadable_manager_fails_the_program_in_one_line_before_any_resource() -> None:
    def down(host: str | None, service: str, target: str) -> None:
        raise RuntimeError("cannot read service stock-analyzer-swarm_api from the Docker engine at x: refused")
    with pytest.raises(pulumi.RunError) as err:
        run_program("swarm", deployed=down)
    assert "\n" not in str(err.value) and "refused" in str(err.value) and "pulumi up" in str(err.value)


def test_the_stack_file_holds_no_single_host_keys_and_names_objects_by_content(tmp_path: Path) -> None:
    out = tmp_path / "out"
    compose.export("swarm", out, target="swarm")
    doc = yaml.safe_load((out / "compose.yaml").read_text())
    for name, svc in doc["services"].items():
        assert not {"container_name", "depends_on", "restart", "security_opt", "build", "tmpfs"} & set(svc), name
        assert svc["cap_drop"] == ["ALL"] and svc["read_only"] is True, name
    creds = out / "secrets" / APP_CREDENTIALS_SECRET
    assert stat.S_IMODE(creds.stat().st_mode) == 0o400
    role, password = creds.read_text().splitlines()
    assert role == "stock_app" and password == (out / "secrets" / "app_db_password").read_text()
    key = (out / "secrets" / "swarm_name_key").read_text()
    assert len(key) == 64 and stat.S_IMODE((out / "secrets" / "swarm_name_key").stat().st_mode) == 0o444
    assert "swarm_name_key" not in doc["secrets"], "the names' key is never mounted"
    for logical, secret in doc["secrets"].items():
        value = (out / secret["file"]).read_text()
        assert secret["name"] == content_name("stock-analyzer-swarm", logical, value, key)
        assert not secret["name"].endswith(hashlib.sha256(value.encode()).hexdigest()[:12])
    compose.export("swarm", out, target="swarm")  # a second export keeps the key, so the names stay
    assert (out / "secrets" / "swarm_name_key").read_text() == key
    assert yaml.safe_load((out / "compose.yaml").read_text())["secrets"] == doc["secrets"]
    for logical, config in doc["configs"].items():
        assert (out / config["file"]).is_file(), logical
    before = doc["secrets"][APP_CREDENTIALS_SECRET]["name"]
    # Unchanged on a second export; a rotation is a new object and the other role.
    compose.export("swarm", out, target="swarm")
    assert yaml.safe_load((out / "compose.yaml").read_text())["secrets"][APP_CREDENTIALS_SECRET]["name"] == before
    compose.rotate(out, "app_db_password")
    compose.export("swarm", out, target="swarm")
    after = yaml.safe_load((out / "compose.yaml").read_text())["secrets"][APP_CREDENTIALS_SECRET]["name"]
    assert after != before and creds.read_text().splitlines()[0] == "stock_app_b"


def test_the_export_refuses_a_target_the_stack_does_not_have(tmp_path: Path) -> None:
    with pytest.raises(compose.ExportError, match="stack dev has target single"):
        compose.export("dev", tmp_path / "out", target="swarm")
    assert compose.main(["--stack", "dev", "--out", str(tmp_path / "o"), "--target", "swarm"]) == 1
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def recording() -> Any:
    return run_program("swarm")


def test_the_program_deploys_services_not_containers(recording: Any) -> None:
    types = {r.type for r in recording.resources if r.custom}
    assert types == {"random:index/randomPassword:RandomPassword", "docker:index/network:Network",
                     "docker:index/secret:Secret", "docker:index/serviceConfig:ServiceConfig",
                     "docker:index/service:Service"}
    for net in recording.of_type("docker:index/network:Network"):
        assert plain(net.inputs)["driver"] == "overlay"


def _services(rec: Any) -> dict[str, Any]:
    return {plain(r.inputs)["name"].split("_", 1)[1]: r for r in rec.of_type("docker:index/service:Service")}


def test_services_wait_for_each_other_in_order(recording: Any) -> None:
    svcs = _services(recording)
    urn = {name: r.urn for name, r in svcs.items()}

    def after(later: str, earlier: str) -> bool:
        return urn[earlier] in svcs[later].dependencies

    assert after("db-provision", "postgres")
    for app in ("api", "frontend", "admin", "db-backup"):
        assert after(app, "db-provision") and after(app, "postgres"), app
    for app in ("api", "frontend", "admin"):
        assert after("db-retire", app) and after("proxy", app)
    for name, r in svcs.items():
        assert r.delete_before_replace, name
        converge = plain(r.inputs).get("convergeConfig")
        assert (converge is None) == (name == "proxy"), name


def test_secrets_travel_as_secrets_and_are_named_by_content(recording: Any) -> None:
    key = plain(recording.named("credentials-swarm-name-key").state["result"])
    for r in recording.of_type("docker:index/secret:Secret"):
        assert is_secret(r.inputs["data"]), r.name
        assert not is_secret(r.inputs["name"]), r.name
        value = base64.b64decode(plain(r.inputs["data"])).decode()
        logical = r.name.removeprefix("files-").replace("-", "_")
        assert plain(r.inputs["name"]) == content_name("stock-analyzer-swarm", logical, value, key)
    assert "files-swarm-name-key" not in {r.name for r in recording.of_type("docker:index/secret:Secret")}
    creds = recording.named("files-app-credentials")
    assert base64.b64decode(plain(creds.inputs["data"])).decode().splitlines()[0] == "stock_app"


def test_a_rotation_changes_exactly_the_app_secret_and_moves_to_the_other_role() -> None:
    before = run_program("swarm")
    cfg = committed_config("swarm")
    cfg["stock-analyzer:appDbPasswordVersion"] = "2"
    after = run_program("swarm", cfg, deployed=_running(before))
    secrets_before = {r.name: plain(r.inputs) for r in before.of_type("docker:index/secret:Secret")}
    changed = {r.name for r in after.of_type("docker:index/secret:Secret") if plain(r.inputs) != secrets_before[r.name]}
    assert changed == {"files-app-credentials", "files-app-db-password"}
    data = plain(after.named("files-app-credentials").inputs["data"])
    assert base64.b64decode(data).decode().splitlines()[0] == "stock_app_b"


def test_the_program_and_the_stack_file_deploy_the_same_services(recording: Any, tmp_path: Path) -> None:
    s = settings_from_file("swarm")
    doc = stack_document(s, {name: "x" for name in swarm_model(s).secrets}, "key")
    svcs = _services(recording)
    assert set(doc["services"]) | {"db-retire"} == set(svcs)
    for name, svc in doc["services"].items():
        spec = service_spec(plain(svcs[name].inputs))
        cs = spec["TaskTemplate"]["ContainerSpec"]
        assert cs["Image"] == svc["image"], name
        assert dict(e.split("=", 1) for e in cs["Env"]) == svc["environment"], name
        assert cs.get("Command") == svc.get("entrypoint") and cs.get("Args") == svc.get("command"), name
        assert [s_["File"]["Name"] for s_ in cs["Secrets"]] == [x["target"] for x in svc.get("secrets", [])], name
        assert [c["File"]["Name"] for c in cs["Configs"]] == [x["target"] for x in svc.get("configs", [])], name
        assert spec["Mode"] == ({"Global": {}} if svc["deploy"]["mode"] == "global"
                                else {"Replicated": {"Replicas": svc["deploy"]["replicas"]}}), name
        assert spec["EndpointSpec"]["Mode"] == svc["deploy"]["endpoint_mode"], name
        assert spec["UpdateConfig"]["Order"] == svc["deploy"]["update_config"]["order"], name
        assert cs["StopGracePeriod"] == int(svc["stop_grace_period"].rstrip("s")) * 10**9, name
        assert (spec["TaskTemplate"].get("Placement", {}).get("Constraints", [])
                == svc["deploy"].get("placement", {}).get("constraints", [])), name


def test_the_harness_refuses_inputs_it_does_not_know(recording: Any) -> None:
    svc = plain(recording.of_type("docker:index/service:Service")[0].inputs)
    _check(svc, SCHEMA["docker:index/service:Service"], "svc")
    svc["taskSpec"]["containerSpec"]["privileges"] = {}
    with pytest.raises(AssertionError, match="privileges"):
        _check(svc, SCHEMA["docker:index/service:Service"], "svc")


@pytest.mark.parametrize("command", [["backups"], ["backup"], ["doctor"], ["restore", "x-20260101T000000Z"]])
def test_the_ops_tool_refuses_a_swarm_stack_in_one_line(command: list[str], capsys: pytest.CaptureFixture[str],
                                                        tmp_path: Path) -> None:
    """A one-server swarm stack: the single-host commands cannot find its tasks (three members have their own)."""
    from ops.__main__ import main

    shutil.copy(ROOT / "Pulumi.yaml", tmp_path / "Pulumi.yaml")
    text = (ROOT / "Pulumi.swarm.yaml").read_text().replace("postgresMembers: 3", "postgresMembers: 1")
    (tmp_path / "Pulumi.swarm.yaml").write_text(text)
    assert main([*command, "--stack", "swarm", "--project", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "targets a Swarm cluster" in err[0] and "docs/swarm.md" in err[0]


def test_the_swarm_program_and_stack_file_are_deterministic(tmp_path: Path) -> None:
    """Same config, same inputs: a preview shows no noise (no timestamps, ordered env, content names)."""
    import json

    def snapshot(rec: Any) -> str:
        return json.dumps(sorted([r.type, r.name, plain(r.inputs), r.dependencies] for r in rec.resources),
                          sort_keys=True, default=str)

    assert snapshot(run_program("swarm")) == snapshot(run_program("swarm"))
    out = tmp_path / "out"
    compose.export("swarm", out, target="swarm")
    first = (out / "compose.yaml").read_text()
    compose.export("swarm", out, target="swarm")
    assert (out / "compose.yaml").read_text() == first


def test_the_edge_proxy_logs_which_task_answered_and_never_tells_the_client() -> None:
    """A response header naming the task (X-Served-By) handed internal addresses to every client."""
    cfg = (ROOT / "proxy" / "haproxy.cfg").read_text()
    directives = [line.strip() for line in cfg.splitlines() if line.strip() and not line.strip().startswith("#")]
    assert not [d for d in directives if d.startswith("http-response") or "served-by" in d.lower()]
    assert "option dontlog-normal" not in directives  # every request is logged ...
    (fmt,) = [d for d in directives if d.startswith("log-format")]
    assert "%b/%s" in fmt and "%si" in fmt and "%ST" in fmt  # ... with the backend, task and address


def test_the_edge_checks_the_apis_liveness_not_the_shared_database() -> None:
    """Before: /health asks the database, so a two-second switchover marked every API task down at once and
    the edge answered 503 to requests the tasks would have served after a retry."""
    cfg = (ROOT / "proxy" / "haproxy.cfg").read_text()
    api = cfg.split("\nbackend api\n", 1)[1].split("\nbackend ", 1)[0]
    checks = [line.strip() for line in api.splitlines() if line.strip().startswith("option httpchk")]
    assert checks == ["option httpchk GET /live"]


@pytest.mark.parametrize("mode", ["vip", "dnsrr"])
def test_the_api_is_published_on_a_swarm_only_when_swarm_publish_api_asks(mode: str) -> None:
    """Before: an API kept on loopback (every profile's default apiHostIp) was published on every node."""
    for publish, expected in (("false", {8000}), ("true", {5000, 8000})):
        m = swarm_model(_settings(swarmEndpointMode=mode, swarmPublishApi=publish))
        published = {p.published for svc in m.services for p in svc.ports}
        assert published == expected, (mode, publish, published)
        if mode == "dnsrr":  # the proxy's API frontend still listens on the overlay (its config needs the port)
            assert ("API_PORT", "5000") in m.service("proxy").env


class _FakeService:
    def __init__(self, name: str, attrs: dict[str, Any]) -> None:
        self.name, self.attrs = name, attrs


def test_the_deployed_app_is_read_from_the_exact_service_and_the_secret_at_the_app_target(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import docker.errors

    from ops import swarm_state

    spec = {"Spec": {"Labels": {"stock-analyzer.app-role": "app_b"}, "TaskTemplate": {"ContainerSpec": {"Secrets": [
        # Secret object names, no values.
        {"SecretName": "s_admin_password-1", "File": {"Name": "admin_password"}},  # pragma: allowlist secret
        {"SecretName": "s_app_credentials-2", "File": {"Name": "app_credentials"}}]}}}}  # pragma: allowlist secret
    listed: list[_FakeService] = []

    class Client:
        class services:  # noqa: N801 (the SDK's attribute)
            @staticmethod
            def list(filters: dict[str, str]) -> list[_FakeService]:
                return listed

    monkeypatch.setattr(swarm_state, "engine_client", lambda host: Client())
    assert swarm_state.deployed_app(None, "s_api", "app_credentials") is None
    listed[:] = [_FakeService("s_api2", spec)]  # the name filter matches prefixes: only the exact name counts
    assert swarm_state.deployed_app(None, "s_api", "app_credentials") is None
    listed.append(_FakeService("s_api", spec))
    assert swarm_state.deployed_app(None, "s_api", "app_credentials") == DeployedApp("s_app_credentials-2", "app_b")
    assert swarm_state.deployed_app(None, "s_api", "nothing_there") is None

    def refused(host: str | None) -> Any:
        raise docker.errors.DockerException("Error while fetching server API version: connection refused\nmore")
    monkeypatch.setattr(swarm_state, "engine_client", refused)
    with pytest.raises(RuntimeError) as err:
        swarm_state.deployed_app("tcp://manager:2376", "s_api", "app_credentials")
    assert str(err.value) == ("cannot read service s_api from the Docker engine at tcp://manager:2376: "
                              "Error while fetching server API version: connection refused")
