"""The whole program under mocks, for Pulumi.dev.yaml and Pulumi.prod.yaml exactly as committed."""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any

import pytest

from tests.pulumi_mocks import PROJECT, Recording, Resource, committed_config, is_secret, plain, run_program

STACKS = ("dev", "prod")
CONTAINER = "docker:index/container:Container"
APP_PORTS = {"api": 5000, "frontend": 8000, "admin": 8001}  # the system's contract (issue #2)
LONG_RUNNING = ("postgres", "api", "frontend", "admin")


@pytest.fixture(scope="module", params=STACKS)
def stack(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def rec(stack: str) -> Recording:
    return run_program(stack)


@pytest.fixture(scope="module")
def cfg(stack: str) -> dict[str, str]:
    return {k.split(":", 1)[1]: v for k, v in committed_config(stack).items()}


def named_mounts(r: Resource) -> list[dict[str, Any]]:
    """Volume mounts of named volumes (anonymous ones only hold uploaded files)."""
    return [v for v in r.inputs.get("volumes", []) if "volumeName" in v]


def env_of(r: Resource) -> dict[str, str]:
    return dict(e.split("=", 1) for e in plain(r.inputs["envs"]))


def test_resource_graph(rec: Recording, stack: str) -> None:
    names = sorted((r.type, r.name) for r in rec.resources)
    assert names == sorted([
        ("stock-analyzer:credentials:Credentials", "credentials"),
        *(("random:index/randomPassword:RandomPassword", f"credentials-{n}")
          for n in ("postgres-password", "app-db-password", "admin-password", "backup-db-password",
                    "postgres-bootstrap-password")),
        ("stock-analyzer:network:Network", "network"),
        ("docker:index/network:Network", "network-backend"),
        ("docker:index/network:Network", "network-frontend"),
        ("stock-analyzer:database:Database", "database"),
        ("docker:index/remoteImage:RemoteImage", "database-image"),
        ("docker:index/volume:Volume", "database-data"),
        ("docker:index/volume:Volume", "database-app-credentials"),
        ("docker:index/volume:Volume", "database-provision-state"),
        ("docker:index/volume:Volume", "database-backups"),
        ("stock-analyzer:backup:Backup", "backup"),
        (CONTAINER, "backup-runner"),
        (CONTAINER, "database-server"),
        (CONTAINER, "database-provision"),
        ("stock-analyzer:app:App", "app"),
        ("docker:index/image:Image", "app-image"),
        (CONTAINER, "app-api"), (CONTAINER, "app-frontend"), (CONTAINER, "app-admin"),
    ])
    # Every custom resource lives under the component named by its prefix.
    for r in rec.resources:
        if r.custom:
            parent = rec.by_urn(r.parent)
            assert r.name.startswith(parent.name + "-"), (r.name, parent.name)
            assert parent.type.startswith("stock-analyzer:")


def test_names_are_per_stack(rec: Recording, stack: str) -> None:
    volume = rec.named("database-data").inputs["name"]
    assert volume.endswith("postgres_data") and stack in volume
    for net in ("backend", "frontend"):
        assert rec.named(f"network-{net}").inputs["name"] == f"{PROJECT}-{stack}_{net}"
    for c in rec.of_type(CONTAINER):
        assert c.inputs["name"].startswith(f"{PROJECT}-{stack}-")


def test_images(rec: Recording, cfg: dict[str, str]) -> None:
    remote = rec.named("database-image")
    assert remote.inputs["name"] == cfg["postgresImage"]
    assert cfg["postgresImage"].split(":")[1].split(".")[0] == "17"
    assert remote.inputs["keepLocally"] is True
    image = rec.named("app-image")
    assert image.inputs["skipPush"] is True
    assert image.inputs["imageName"].endswith(":" + rec.outputs["environment"]) or ":" in image.inputs["imageName"]
    build = image.inputs["build"]
    assert build["context"] == "app" and build["dockerfile"] == "app/Dockerfile"
    assert build["args"]["BASE_IMAGE"] == cfg["pythonBaseImage"]
    assert build["builderVersion"] == "BuilderBuildKit"
    containers = rec.containers()
    # Containers reference the built image by digest, so a rebuild rolls them.
    for svc in APP_PORTS:
        assert containers[svc].inputs["image"] == rec.outputs["app_image"]
        assert containers[svc].inputs["image"].startswith("sha256:")
        assert image.urn in containers[svc].dependencies
    for svc in ("postgres", "db-provision"):
        assert containers[svc].inputs["image"].startswith("sha256:")
        assert remote.urn in containers[svc].dependencies


def test_app_ports_and_interfaces(rec: Recording, cfg: dict[str, str]) -> None:
    containers = rec.containers()
    for svc, internal in APP_PORTS.items():
        (port,) = containers[svc].inputs["ports"]
        assert port["internal"] == internal
        assert port["external"] == int(cfg[f"{svc}HostPort"])
        assert port["ip"] == cfg.get(f"{svc}HostIp", "127.0.0.1")
        assert port["protocol"] == "tcp"


def test_nothing_on_all_interfaces_unless_configured(rec: Recording, cfg: dict[str, str]) -> None:
    for c in rec.of_type(CONTAINER):
        for port in c.inputs.get("ports", []):
            ip = ipaddress.ip_address(port["ip"])
            if not ip.is_loopback:
                svc = c.inputs["name"].rsplit("-", 1)[1]
                assert cfg.get(f"{svc}HostIp") == port["ip"], f"{c.name} binds {ip} without config saying so"


def test_database_port(rec: Recording, stack: str, cfg: dict[str, str]) -> None:
    ports = rec.containers()["postgres"].inputs.get("ports", [])
    if stack == "prod":
        assert ports == []
    else:
        assert ports == [{"internal": 5432, "external": int(cfg["postgresHostPort"]), "ip": "127.0.0.1",
                          "protocol": "tcp"}]


def test_healthchecks_and_wait(rec: Recording) -> None:
    containers = rec.containers()
    for svc in LONG_RUNNING:
        c = containers[svc].inputs
        hc = c["healthcheck"]
        assert hc["tests"][0] == "CMD"
        assert c["wait"] is True and c["waitTimeout"] > 0
        assert hc["startInterval"] == "200ms"
        assert int(hc["interval"].rstrip("s")) < 30, "legacy 30 s interval delayed first healthy by 30 s"
        assert c["restart"] in ("always", "unless-stopped")
        assert c["mustRun"] is True
    pg = containers["postgres"].inputs["healthcheck"]["tests"]
    # TCP on 127.0.0.1 (not the socket): the init-time server does not count as healthy.
    assert pg[:2] == ["CMD", "pg_isready"] and pg[pg.index("-h") + 1] == "127.0.0.1"
    for svc, port in APP_PORTS.items():
        assert containers[svc].inputs["healthcheck"]["tests"][-1] == f"http://127.0.0.1:{port}/health"


def test_db_host_matches_network_alias(rec: Recording) -> None:
    containers = rec.containers()
    backend = rec.named("network-backend").inputs["name"]
    frontend = rec.named("network-frontend").inputs["name"]
    assert backend != frontend
    nets = {svc: {n["name"]: n["aliases"] for n in c.inputs["networksAdvanced"]} for svc, c in containers.items()}
    # Whoever talks to Postgres shares the backend with it; the frontend shares only the API's network.
    assert set(nets["postgres"]) == set(nets["db-provision"]) == set(nets["admin"]) == {backend}
    assert set(nets["api"]) == {backend, frontend}
    assert set(nets["frontend"]) == {frontend}
    for svc in ("api", "admin"):
        env = env_of(containers[svc])
        assert env["DB_HOST"] in nets["postgres"][backend]
        assert env["DB_PORT"] == "5432"
    assert env_of(containers["db-provision"])["PGHOST"] in nets["postgres"][backend]
    frontend_env = env_of(containers["frontend"])
    assert frontend_env["API_URL"].split("//")[1].split(":")[0] in nets["api"][frontend]


def test_env_is_sorted_and_secret_free(rec: Recording) -> None:
    for c in rec.of_type(CONTAINER):
        envs = c.inputs["envs"]
        assert not is_secret(envs), f"{c.name}: a secret in envs masks the whole list in previews"
        assert envs == sorted(envs)
        for name, value in (e.split("=", 1) for e in envs):
            if any(w in name for w in ("PASSWORD", "SECRET", "TOKEN")):
                assert name.endswith("_FILE") and value.startswith("/run/secrets/"), name


def test_app_connects_as_least_privileged_role(rec: Recording, cfg: dict[str, str]) -> None:
    containers = rec.containers()
    superuser = env_of(containers["postgres"])["POSTGRES_USER"]
    job = env_of(containers["db-provision"])
    assert job["APP_DB_USER"] == cfg["dbAppUser"] and job["APP_DB_USER"] != superuser
    creds_volume = rec.named("database-app-credentials").inputs["name"]
    for svc in ("api", "admin"):
        env = env_of(containers[svc])
        # The app's credential comes from the file the provisioning job writes, never the superuser's.
        assert "DB_USER" not in env and "POSTGRES_PASSWORD_FILE" not in env
        assert env["DB_CREDENTIALS_FILE"] == job["APP_CREDENTIALS_FILE"]
        mounts = named_mounts(containers[svc])
        assert mounts[0] == {"volumeName": creds_volume,
                             "containerPath": env["DB_CREDENTIALS_FILE"].rsplit("/", 1)[0], "readOnly": True}
        # Besides, only the admin UI reads the backups' status, read-only.
        backups = rec.named("database-backups").inputs["name"]
        assert mounts[1:] == ([{"volumeName": backups, "containerPath": "/var/lib/backups", "readOnly": True}]
                              if svc == "admin" else [])
        files = {u["file"] for u in plain(containers[svc].inputs.get("uploads", []))}
        assert "/run/secrets/postgres_password" not in files
    assert "ADMIN_PASSWORD_FILE" not in env_of(containers["api"])


def test_secret_files_match_env_and_owner(rec: Recording) -> None:
    containers = rec.containers()
    for svc, c in containers.items():
        uploads = c.inputs.get("uploads")
        env = env_of(c)
        if uploads is None:
            assert not any(k.endswith("PASSWORD_FILE") for k in env), svc
            continue
        files = {u["file"]: u for u in plain(uploads)}
        for key, path in env.items():
            if key.endswith("PASSWORD_FILE"):
                assert path in files, f"{svc}: {key} points at {path}, which is not uploaded"
                assert files[path]["permissions"] == "0400"
                owner = files[path]["owner"]
                expected = c.inputs.get("user", "999").split(":")[0]
                assert owner == expected, f"{svc}: {path} owned by {owner}, process runs as {expected}"


def test_app_processes_are_not_root(rec: Recording) -> None:
    containers = rec.containers()
    for svc in APP_PORTS:
        user = containers[svc].inputs["user"]
        assert user.split(":")[0] not in ("", "0", "root")


def test_volume_mount_and_protection(rec: Recording, stack: str) -> None:
    volume = rec.named("database-data")
    containers = rec.containers()
    (mount,) = named_mounts(containers["postgres"])
    assert mount == {"volumeName": volume.inputs["name"], "containerPath": "/var/lib/postgresql/data"}
    assert volume.urn in containers["postgres"].dependencies
    for name in ("database-data", "database-provision-state"):
        assert rec.named(name).protect is (stack == "prod")
        assert rec.named(name).retain_on_delete is (stack == "prod")
    # Only Postgres mounts the data; only the job mounts its state (the previous superuser password).
    state = rec.named("database-provision-state").inputs["name"]
    for svc, c in containers.items():
        mounted = {m["volumeName"] for m in named_mounts(c)}
        assert (volume.inputs["name"] in mounted) is (svc == "postgres"), svc
        assert (state in mounted) is (svc == "db-provision"), svc


def test_dependencies(rec: Recording) -> None:
    containers = rec.containers()
    server, provision = containers["postgres"], containers["db-provision"]
    assert server.urn in provision.dependencies
    for svc in APP_PORTS:
        assert server.urn in containers[svc].dependencies
        assert provision.urn in containers[svc].dependencies


def test_replacement_is_safe(rec: Recording) -> None:
    for c in rec.of_type(CONTAINER):
        assert c.delete_before_replace, f"{c.name}: fixed name/port would conflict on create-before-delete"
    pg = rec.containers()["postgres"].inputs
    assert pg["stopSignal"] == "SIGINT"
    assert pg["destroyGraceSeconds"] >= 30 and pg["stopTimeout"] >= 30


def test_read_only_root_unless_the_provider_must_upload(rec: Recording) -> None:
    # The engine refuses the provider's upload (a tar extracted at "/") into a read-only root; such a
    # container keeps a writable root and says why in a reviewed-exception label.
    for c in rec.of_type(CONTAINER):
        labels = {x["label"]: x["value"] for x in c.inputs["labels"]}
        exception = labels.get("stock-analyzer.policy-exception.read-only-root-filesystem", "")
        if plain(c.inputs.get("uploads", [])):
            assert c.inputs["readOnly"] is False and "upload" in exception, c.name
            # The exception covers the root filesystem only: the other two hardening checks still hold.
            assert c.inputs["capabilities"]["drops"] == ["ALL"] and c.inputs["securityOpts"], c.name
        else:
            assert c.inputs["readOnly"] is True and not exception, c.name


def test_provision_job_runs_once_and_is_waited_for(rec: Recording) -> None:
    job = rec.containers()["db-provision"].inputs
    assert job["mustRun"] is False and job["attach"] is True and job["restart"] == "no"
    assert job["user"] == "0"  # it chowns the app's credential file to the app's uid
    assert {m["containerPath"] for m in job["volumes"] if "volumeName" in m} == {
        "/run/app-credentials", "/var/lib/provision", "/var/lib/backups"}
    files = {u["file"] for u in plain(job["uploads"])}
    assert {"/provision/provision.sh", "/provision/provision.sql"} <= files


def test_memory_and_log_limits(rec: Recording, stack: str, cfg: dict[str, str]) -> None:
    for c in rec.of_type(CONTAINER):
        assert c.inputs["logDriver"] == "json-file"
        assert c.inputs["logOpts"] == {"max-size": cfg["logMaxSize"], "max-file": cfg["logMaxFile"]}
        if stack == "prod":
            assert c.inputs.get("memory", 0) > 0, f"{c.name} has no memory limit in prod"
    if stack == "prod":
        containers = rec.containers()
        assert containers["postgres"].inputs["memory"] == 1024  # Pulumi.prod.yaml: 1Gi
        assert containers["api"].inputs["memory"] == 512  # Pulumi.prod.yaml: 512Mi


def _plaintext_hits(value: Any, needles: set[str], path: str = "") -> list[str]:
    if is_secret(value):
        return []
    if isinstance(value, dict):
        return [h for k, v in value.items() for h in _plaintext_hits(v, needles, f"{path}.{k}")]
    if isinstance(value, list):
        return [h for i, v in enumerate(value) for h in _plaintext_hits(v, needles, f"{path}[{i}]")]
    if isinstance(value, str) and any(n in value for n in needles):
        return [path]
    return []


def test_every_password_travels_as_secret(rec: Recording) -> None:
    keys = ("postgres_password", "app_db_password", "admin_password", "backup_db_password")
    for key in keys:
        assert is_secret(rec.outputs[key]), key
    passwords = {plain(rec.outputs[k]) for k in keys}
    assert len(passwords) == 4 and all(len(p) >= 32 for p in passwords)
    for r in rec.resources:
        assert _plaintext_hits(r.inputs, passwords) == [], r.name
    assert _plaintext_hits(rec.outputs, passwords) == []
    for r in rec.of_type("random:index/randomPassword:RandomPassword"):
        assert "result" in r.additional_secret_outputs
        assert r.inputs["special"] is False and r.inputs["length"] >= 32
    # The password values do reach the containers that need them, as secret uploads.
    uploaded = {u["content"] for c in rec.of_type(CONTAINER) for u in plain(c.inputs.get("uploads", []))}
    assert passwords <= uploaded


def test_outputs(rec: Recording, cfg: dict[str, str]) -> None:
    assert rec.outputs["api_url"] == f"http://{cfg.get('apiHostIp', '127.0.0.1')}:{cfg['apiHostPort']}"
    assert rec.outputs["data_volume"] == rec.named("database-data").inputs["name"]
    assert rec.outputs["networks"] == {n: rec.named(f"network-{n}").inputs["name"] for n in ("backend", "frontend")}


def test_deterministic(stack: str) -> None:
    def snapshot(r: Recording) -> str:
        # Registration order is async and irrelevant to the engine; the inputs per resource are what count.
        resources = sorted([x.type, x.name, x.inputs, x.dependencies, x.protect] for x in r.resources)
        return json.dumps([*resources, r.outputs], sort_keys=True, default=str)

    first, second = run_program(stack), run_program(stack)
    assert snapshot(first) == snapshot(second)


def test_provision_files_are_uploaded_and_send_no_password_in_sql(rec: Recording) -> None:
    """Issue #8.4: every provisioning file reaches the job, and none sets a password from SQL text (a failing
    statement is logged with its text); passwords go only through psql's \\password (a SCRAM verifier)."""
    from model.settings import PROVISION_SOURCE

    job = rec.containers()["db-provision"].inputs
    uploaded = {u["file"]: u["content"] for u in plain(job["uploads"])}
    on_disk = {f"/provision/{p.name}": p.read_text() for p in PROVISION_SOURCE.iterdir()}
    assert {k: v for k, v in uploaded.items() if k.startswith("/provision/")} == on_disk
    for name, text in on_disk.items():
        sets = re.findall(r"\bPASSWORD\s+(?!NULL\b)\S+", text)
        assert sets == [], (name, sets)
    script = on_disk["/provision/provision.sh"]
    assert script.count('\\\\password') == 1 and "set_password" in script
