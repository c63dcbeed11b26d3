"""Each component on its own, with settings built in the test rather than read from a stack file."""

from __future__ import annotations

import pulumi
import yaml

from components.app import App, AppArgs
from components.credentials import Credentials, CredentialsArgs
from components.database import Database, DatabaseArgs
from components.network import Network, NetworkArgs
from model.settings import CONFIG_KEYS, SECRETS, load_settings
from tests.pulumi_mocks import ROOT, is_secret, plain, run

SETTINGS = load_settings({"environment": "dev", "apiHostPort": "15000", "apiHostIp": "127.0.0.2"}, "t1")


NETS = {"backend": "n1", "frontend": "n2"}


def _passwords() -> dict[str, pulumi.Output[str]]:
    return {s.name: pulumi.Output.secret(f"pw-{s.name}-0123456789abcdef0123456789") for s in SECRETS}


def test_network_alone() -> None:
    rec = run(lambda: Network("net", NetworkArgs(names={"backend": "n1", "frontend": "n2"}, stack="t1")), "t1", {})
    nets = {r.name: r for r in rec.of_type("docker:index/network:Network")}
    assert sorted(nets) == ["net-backend", "net-frontend"]
    assert nets["net-backend"].inputs["name"] == "n1" and nets["net-frontend"].inputs["name"] == "n2"
    for bridge in nets.values():
        assert bridge.inputs["driver"] == "bridge"
        assert rec.by_urn(bridge.parent).type == "stock-analyzer:network:Network"


def test_credentials_alone_generates_only_what_is_not_provided() -> None:
    def body() -> pulumi.Output[dict[str, str]]:
        creds = Credentials("c", CredentialsArgs(secrets=SECRETS,
                                                 provided={"admin_password": pulumi.Output.secret("given")}))
        return pulumi.Output.all(**{k: v.is_secret() for k, v in creds.passwords.items()}).apply(
            lambda flags: checks.update(flags) or {})

    checks: dict[str, bool] = {}
    rec = run(body, "t1", {})
    assert sorted(r.name for r in rec.of_type("random:index/randomPassword:RandomPassword")) == [
        "c-app-db-password", "c-backup-db-password", "c-postgres-bootstrap-password", "c-postgres-password"]
    assert checks == {s.name: True for s in SECRETS}


def test_database_alone() -> None:
    rec = run(lambda: Database("db", DatabaseArgs(settings=SETTINGS, network_names=NETS, passwords=_passwords())),
              "t1", {})
    assert sorted(r.name for r in rec.of_type("docker:index/volume:Volume")) == [
        "db-app-credentials", "db-backups", "db-data", "db-provision-state"]
    containers = rec.containers()
    assert set(containers) == {"postgres", "db-provision"}
    env = dict(e.split("=", 1) for e in containers["postgres"].inputs["envs"])
    # The server knows only the bootstrap password: a superuser rotation never touches it.
    assert env["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres_bootstrap_password"
    assert "POSTGRES_PASSWORD" not in env
    assert is_secret(containers["postgres"].inputs["uploads"])
    assert containers["postgres"].inputs["networksAdvanced"] == [{"name": "n1", "aliases": ["postgres"]}]
    assert rec.named("db-data").protect is False


def test_app_alone_uses_settings_ports() -> None:
    rec = run(lambda: App("web", AppArgs(settings=SETTINGS, context="app", network_names=NETS,
                                          passwords=_passwords(),
                                          volume_names={"app_credentials": "creds-vol",
                                                        "backups": "backups-vol"})), "t1", {})
    containers = rec.containers()
    assert set(containers) == {"api", "frontend", "admin"}
    assert containers["api"].inputs["ports"] == [{"internal": 5000, "external": 15000, "ip": "127.0.0.2",
                                                  "protocol": "tcp"}]
    files = {u["file"] for u in plain(containers["admin"].inputs["uploads"])}
    assert files == {"/run/secrets/admin_password"}
    creds = {"volumeName": "creds-vol", "containerPath": "/run/app-credentials", "readOnly": True}
    assert containers["api"].inputs["volumes"] == [creds]
    assert containers["admin"].inputs["volumes"] == [
        creds, {"volumeName": "backups-vol", "containerPath": "/var/lib/backups", "readOnly": True}]
    assert plain(containers["frontend"].inputs.get("uploads", [])) == []
    assert "volumes" not in containers["frontend"].inputs
    nets = {svc: sorted(n["name"] for n in c.inputs["networksAdvanced"]) for svc, c in containers.items()}
    assert nets == {"api": ["n1", "n2"], "admin": ["n1"], "frontend": ["n2"]}


def test_pulumi_yaml_declares_every_key_with_type_description_default() -> None:
    declared = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"]
    assert set(declared) == {k.name for k in CONFIG_KEYS}
    for key in CONFIG_KEYS:
        spec = declared[key.name]
        assert spec["type"] == key.type and spec["description"] == key.description, key.name
        if key.default is None and not key.secret:
            assert "default" not in spec, f"{key.name} is required, so it has no default"
        else:
            assert str(spec["default"]).lower() == (key.default or "").lower(), key.name
        assert "secret" not in spec  # secretness is enforced by the program (test_validation)


def test_stack_files_use_only_known_keys() -> None:
    for stack in ("dev", "prod"):
        config = yaml.safe_load((ROOT / f"Pulumi.{stack}.yaml").read_text())["config"]
        for key in config:
            assert key.split(":", 1)[1] in {k.name for k in CONFIG_KEYS}, key


def test_readme_config_table_lists_every_key() -> None:
    readme = (ROOT / "docs" / "configuration.md").read_text()
    for key in CONFIG_KEYS:
        assert f"| `{key.name}` |" in readme, f"docs/configuration.md config reference lacks {key.name}"
