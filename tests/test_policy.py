"""The policy pack: each policy passes a compliant resource and fails a violating one; the program and
the compose export comply with all of them."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from pulumi_policy import PolicyCustomTimeouts, PolicyResourceOptions, ResourceValidationArgs

from exporters.compose import compose_text
from model.stack_yaml import settings_from_file
from policy.pack import POLICIES
from policy.rules import check_compose
from tests.pulumi_mocks import Recording, committed_config, plain, run_program

POLICY = {p.name: p for p in POLICIES}
Props = dict[str, Any]


def violations(policy: str, resource_type: str, props: Props, protect: bool = False, name: str = "r") -> list[str]:
    opts = PolicyResourceOptions(protect, [], True, [], PolicyCustomTimeouts(0, 0, 0), [])
    args = ResourceValidationArgs(resource_type, props, f"urn:pulumi:s::p::{resource_type}::{name}", name, opts, None)
    found: list[str] = []
    POLICY[policy].validate(args, _collector(found))
    return found


def _collector(found: list[str]) -> Callable[[str, str | None], None]:
    def report(message: str, urn: str | None) -> None:
        found.append(message)

    return report


@pytest.fixture(scope="module")
def prod() -> Recording:
    return run_program("prod")


def _container(rec: Recording, service: str) -> Props:
    return copy.deepcopy(plain(rec.containers()[service].inputs))


def _set(props: Props, **changes: Any) -> Props:
    out = copy.deepcopy(props)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def _label(props: Props, label: str, value: str) -> Props:
    out = copy.deepcopy(props)
    out["labels"] = [*[x for x in out["labels"] if x["label"] != label], {"label": label, "value": value}]
    return out


CONTAINER = "docker:index/container:Container"
CASES: list[tuple[str, str, Callable[[Props], Props]]] = [
    # (policy, service of the compliant base, how to break it)
    ("container-healthcheck-and-restart", "api", lambda p: _set(p, healthcheck=None)),
    ("container-healthcheck-and-restart", "api", lambda p: _set(p, restart="no")),
    ("container-healthcheck-and-restart", "db-provision", lambda p: _set(p, restart="always")),
    ("no-plaintext-secret-env", "api", lambda p: _set(p, envs=[*p["envs"], "DB_PASSWORD=in-plain-text"])),
    ("no-plaintext-secret-env", "admin", lambda p: _set(p, envs=[*p["envs"], "STRIPE_API_KEY=in-plain-text"])),
    ("no-plaintext-secret-env", "postgres", lambda p: _set(p, envs=[*p["envs"], "POSTGRES_PASSWORD=x"])),
    ("no-database-port-on-all-interfaces", "postgres",
     lambda p: _set(p, ports=[{"internal": 5432, "external": 5446, "ip": "0.0.0.0", "protocol": "tcp"}])),
    ("no-database-port-on-all-interfaces", "postgres",
     lambda p: _set(p, ports=[{"internal": 5432, "external": 5446, "ip": "::", "protocol": "tcp"}])),
    ("pinned-images", "postgres", lambda p: _set(p, image="postgres:latest")),
    ("pinned-images", "api", lambda p: _set(p, image="stock-analyzer-app")),
    ("prod-memory-limit", "api", lambda p: _set(p, memory=None)),
    ("prod-non-root", "api", lambda p: _set(p, user="0")),
    ("prod-non-root", "postgres", lambda p: _set(p, user=None)),
    ("drop-all-capabilities", "api", lambda p: _set(p, capabilities=None)),
    ("no-new-privileges", "frontend", lambda p: _set(p, securityOpts=None)),
    ("no-new-privileges", "frontend", lambda p: _set(p, securityOpts=["no-new-privileges:false"])),
    ("read-only-root-filesystem", "api", lambda p: _set(p, readOnly=False)),
    ("known-policy-exceptions", "api",
     lambda p: _label(p, "stock-analyzer.policy-exception.container-hardening", "the old, too broad name")),
    ("known-policy-exceptions", "api",
     lambda p: _label(p, "stock-analyzer.policy-exception.read-only-root-filesystem", "  ")),
]


@pytest.mark.parametrize(("policy", "service", "breaks"), CASES,
                         ids=[f"{c[0]}-{c[1]}-{i}" for i, c in enumerate(CASES)])
def test_container_policy_passes_compliant_and_fails_violating(prod: Recording, policy: str, service: str,
                                                               breaks: Callable[[Props], Props]) -> None:
    good = _container(prod, service)
    assert violations(policy, CONTAINER, good) == []
    found = violations(policy, CONTAINER, breaks(good))
    assert found and all(f.startswith("r: ") for f in found)


def test_prod_rules_apply_to_prod_only_and_honour_reviewed_exceptions(prod: Recording) -> None:
    api = _set(_container(prod, "api"), memory=None)
    assert violations("prod-memory-limit", CONTAINER, api)
    assert violations("prod-memory-limit", CONTAINER, _label(api, "stock-analyzer.environment", "dev")) == []
    excepted = _label(api, "stock-analyzer.policy-exception.prod-memory-limit", "reviewed in PR #12")
    assert violations("prod-memory-limit", CONTAINER, excepted) == []
    empty_reason = _label(api, "stock-analyzer.policy-exception.prod-memory-limit", " ")
    assert violations("prod-memory-limit", CONTAINER, empty_reason)


EXCEPTIONS = ["read-only-root-filesystem", "drop-all-capabilities", "no-new-privileges", "prod-memory-limit",
              "prod-non-root"]


@pytest.mark.parametrize("excepted", EXCEPTIONS)
def test_an_exception_turns_off_exactly_the_check_it_names(prod: Recording, excepted: str) -> None:
    """Everything broken at once, one exception: only that check goes quiet, every other still fires."""
    broken = _set(_container(prod, "api"), readOnly=False, capabilities=None, securityOpts=None, memory=None,
                  user="0")
    broken = _label(broken, f"stock-analyzer.policy-exception.{excepted}", "reviewed in PR #12")
    for policy in EXCEPTIONS:
        found = violations(policy, CONTAINER, broken)
        assert (found == []) == (policy == excepted), (policy, found)
    assert violations("known-policy-exceptions", CONTAINER, broken) == []


SECRET_NAMES = ["PGPASSWORD", "DB_PASS", "DBPASS", "DB_PW", "MYSQL_PWD", "MYSQL_ROOT_PASSWORD", "GITHUB_TOKEN",
                "AWS_SECRET_ACCESS_KEY", "API_KEY", "STRIPE_APIKEY", "GPG_PASSPHRASE", "SMTP_CREDENTIALS",
                "db_password", "RedisPassword"]
PLAIN_NAMES = ["DB_HOST", "ENVIRONMENT", "PGDATA", "PGUSER", "API_URL", "PROXY_BYPASS", "KEYBOARD_LAYOUT"]


@pytest.mark.parametrize("name", SECRET_NAMES)
def test_secret_looking_names_are_caught(prod: Recording, name: str) -> None:
    api = _container(prod, "api")
    assert violations("no-plaintext-secret-env", CONTAINER, _set(api, envs=[*api["envs"], f"{name}=x"]))
    assert violations("no-plaintext-secret-env", CONTAINER,
                      _set(api, envs=[*api["envs"], f"{name}_FILE=/run/secrets/x"])) == []


@pytest.mark.parametrize("name", PLAIN_NAMES)
def test_plain_names_pass(prod: Recording, name: str) -> None:
    api = _container(prod, "api")
    assert violations("no-plaintext-secret-env", CONTAINER, _set(api, envs=[*api["envs"], f"{name}=x"])) == []


@pytest.mark.parametrize(("value", "caught"), [
    ("postgres://app:s3cret@postgres:5432/db", True),  # pragma: allowlist secret (test values)
    ("postgresql://app:s3cret@postgres/db?sslmode=require", True),  # pragma: allowlist secret (test values)
    ("redis://:s3cret@cache:6379/0", True),  # pragma: allowlist secret (test values)
    ("https://user:tok@hooks.example/x", True),  # pragma: allowlist secret (test values)
    ("http://api:5000", False),
    ("postgres://app@postgres:5432/db", False),
    ("https://hooks.example/path?user=a:b@c", False),
])
def test_urls_with_credentials_are_caught_whatever_the_name(prod: Recording, value: str, caught: bool) -> None:
    api = _container(prod, "api")
    found = violations("no-plaintext-secret-env", CONTAINER, _set(api, envs=[*api["envs"], f"UPSTREAM={value}"]))
    assert bool(found) is caught, found
    assert all("s3cret" not in f and "tok@" not in f for f in found)


def test_pinned_image_references() -> None:
    for ref in ("postgres:17.6-trixie", "postgres@sha256:" + "a" * 64, "registry.example:5000/team/app:1.2"):
        assert violations("pinned-image-references", "docker:index/remoteImage:RemoteImage", {"name": ref}) == []
    for ref in ("postgres", "postgres:latest"):
        assert violations("pinned-image-references", "docker:index/remoteImage:RemoteImage", {"name": ref})
    assert violations("pinned-image-references", "docker:index/image:Image", {"imageName": "app:latest"})
    assert violations("pinned-image-references", "docker:index/image:Image", {"imageName": "app:dev"}) == []


def test_prod_data_volumes_protected() -> None:
    prod_volume = {"name": "v", "labels": [{"label": "stock-analyzer.environment", "value": "prod"}]}
    dev_volume = {"name": "v", "labels": [{"label": "stock-analyzer.environment", "value": "dev"}]}
    volume = "docker:index/volume:Volume"
    assert violations("prod-data-volumes-protected", volume, prod_volume, protect=True) == []
    assert violations("prod-data-volumes-protected", volume, prod_volume, protect=False)
    assert violations("prod-data-volumes-protected", volume, dev_volume, protect=False) == []


@pytest.mark.parametrize("stack", ["dev", "prod", "swarm"])
def test_program_complies_with_every_policy(stack: str) -> None:
    rec = run_program(stack)
    for r in rec.resources:
        if not r.custom:
            continue
        for policy in POLICIES:
            opts = PolicyResourceOptions(r.protect, [], r.delete_before_replace, [], PolicyCustomTimeouts(0, 0, 0), [])
            args = ResourceValidationArgs(r.type, plain(r.inputs), r.urn, r.name, opts, None)
            found: list[str] = []
            policy.validate(args, _collector(found))
            assert found == [], (policy.name, r.name)


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_compose_export_complies_with_the_same_rules(stack: str) -> None:
    doc = yaml.safe_load(compose_text(settings_from_file(stack)))
    assert check_compose(doc) == []
    broken = copy.deepcopy(doc)
    broken["services"]["postgres"]["ports"] = ["5446:5432"]
    broken["services"]["api"]["environment"]["DB_PASSWORD"] = "plaintext"  # pragma: allowlist secret
    broken["services"]["frontend"].pop("read_only")
    found = check_compose(broken)
    assert any("postgres: database port" in f for f in found)
    assert any("api: env DB_PASSWORD" in f for f in found)
    assert any("frontend: root filesystem is writable" in f for f in found)
    # The compose export carries no exception at all.
    assert not any(k.startswith("stock-analyzer.policy-exception.read-only")
                   for svc in doc["services"].values() for k in svc["labels"])


SERVICE = "docker:index/service:Service"


def _swarm_service(rec: Recording, name: str) -> Props:
    (r,) = [r for r in rec.of_type(SERVICE) if plain(r.inputs)["name"].endswith(f"_{name}")]
    return copy.deepcopy(plain(r.inputs))


def _cs(props: Props, **changes: Any) -> Props:
    out = copy.deepcopy(props)
    out["taskSpec"]["containerSpec"] = _set(out["taskSpec"]["containerSpec"], **changes)
    return out


def test_swarm_services_are_held_to_the_container_rules() -> None:
    cfg = committed_config("swarm")
    cfg["stock-analyzer:environment"] = "prod"
    cfg["stock-analyzer:protectData"] = "true"
    cfg.pop("stock-analyzer:postgresHostPort", None)
    rec = run_program("swarm", cfg)
    api = _swarm_service(rec, "api")
    for policy in POLICY:
        assert violations(policy, SERVICE, api) == [], policy
    broken = {
        "drop-all-capabilities": _cs(api, capDrops=None),
        "read-only-root-filesystem": _cs(api, readOnly=False),
        "prod-non-root": _cs(api, user=None),
        "no-plaintext-secret-env": _cs(api, env={**api["taskSpec"]["containerSpec"]["env"], "DB_PASSWORD": "x"}),
        "container-healthcheck-and-restart": _cs(api, healthcheck=None),
        "pinned-images": _cs(api, image="stock-analyzer-app:latest"),
    }
    for policy, props in broken.items():
        assert violations(policy, SERVICE, props), policy
    no_limit = copy.deepcopy(api)
    no_limit["taskSpec"]["resources"] = {}
    assert violations("prod-memory-limit", SERVICE, no_limit)
    # The one reviewed swarm exception: no-new-privileges, which services cannot set; without it, flagged.
    labels = api["taskSpec"]["containerSpec"]["labels"]
    assert violations("no-new-privileges", SERVICE, _cs(api, labels=[
        x for x in labels if x["label"] != "stock-analyzer.policy-exception.no-new-privileges"]))


def test_the_swarm_stack_file_complies_with_the_same_rules(tmp_path: Any) -> None:
    from exporters import compose

    compose.export("swarm", tmp_path / "out", target="swarm")
    doc = yaml.safe_load((tmp_path / "out" / "compose.yaml").read_text())
    assert check_compose(doc) == []
    broken = copy.deepcopy(doc)
    broken["services"]["api"]["deploy"]["restart_policy"]["condition"] = "none"
    broken["services"]["frontend"]["read_only"] = False
    found = check_compose(broken)
    assert any(f.startswith("api: restart policy") for f in found), found
    assert any(f.startswith("frontend: root filesystem is writable") for f in found), found


def test_etcds_reviewed_healthcheck_exception_waives_the_healthcheck_only() -> None:
    """etcd answers no health query before its quorum forms, and Swarm's DNS lists only healthy tasks while
    the members find each other by DNS: its exception is reviewed; a restart policy is still required."""
    etcd = _swarm_service(run_program("swarm"), "etcd-1")
    assert violations("container-healthcheck-and-restart", SERVICE, etcd) == []
    labels = etcd["taskSpec"]["containerSpec"]["labels"]
    unexcepted = _cs(etcd, labels=[x for x in labels if not x["label"].endswith(".container-healthcheck-and-restart")])
    assert any("no healthcheck" in v for v in violations("container-healthcheck-and-restart", SERVICE, unexcepted))
    no_restart = copy.deepcopy(etcd)
    no_restart["taskSpec"]["restartPolicy"]["condition"] = "none"
    found = violations("container-healthcheck-and-restart", SERVICE, no_restart)
    assert found and all("restart policy" in v for v in found), found
