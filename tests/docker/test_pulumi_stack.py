"""The Pulumi path on a real engine: the exact inputs the program registers for the committed dev stack
(captured under mocks) applied with the provider's semantics, then the first part of the scenario."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import pytest

from components.settings import StackSettings
from tests.docker.conftest import ca_bundle
from tests.docker.pulumi_apply import Applied, apply
from tests.docker.support import http, inspect, remove_containers, sh
from tests.pulumi_mocks import Recording, plain, run_program

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def recording() -> Recording:
    return run_program("dev")


@pytest.fixture(scope="module")
def applied(recording: Recording, base_images: dict[str, str], dev_settings: StackSettings) -> Iterator[Applied]:
    remove_containers(dev_settings.prefix + "-")
    sh("docker", "volume", "rm", "-f", dev_settings.volume_name, check=False)
    sh("docker", "network", "rm", dev_settings.network_name, check=False)
    result = apply(recording, ca_bundle())
    yield result
    result.destroy()


def _url(recording: Recording, key: str, path: str) -> str:
    return str(plain(recording.outputs[key])) + path


def test_every_container_came_up_healthy(applied: Applied, recording: Recording) -> None:
    print("harness timings (s):", {k: round(v, 1) for k, v in applied.timings.items()})
    for name in plain(recording.outputs["containers"]).values():
        assert inspect(name)["State"]["Health"]["Status"] == "healthy", name
    assert inspect("stock-analyzer-dev-db-provision")["State"]["ExitCode"] == 0


def test_ports_bind_the_configured_interfaces(applied: Applied, recording: Recording) -> None:
    for container in recording.containers().values():
        bindings = inspect(container.inputs["name"])["HostConfig"]["PortBindings"] or {}
        for port in container.inputs.get("ports", []):
            (bound,) = bindings[f"{int(port['internal'])}/tcp"]
            assert bound == {"HostIp": port["ip"], "HostPort": str(int(port["external"]))}


def test_secret_files_are_private_to_their_reader(applied: Applied) -> None:
    out = sh("docker", "exec", "stock-analyzer-dev-api", "stat", "-c", "%u %a", "/run/secrets/app_db_password")
    assert out.stdout.split() == ["10001", "400"]
    env = inspect("stock-analyzer-dev-api")["Config"]["Env"]
    assert not any(v in e for e in env for v in applied.passwords.values())


def test_scenario_health_frontend_admin_and_rows(applied: Applied, recording: Recording) -> None:
    status, body = http("GET", _url(recording, "api_url", "/health"))
    assert status == 200 and json.loads(body) == {"database": "ok", "status": "ok"}
    rows = [{"symbol": "PULU", "day": "2024-02-01", "close": "42.0"},
            {"symbol": "PULU", "day": "2024-02-02", "close": "43.5"}]
    assert http("POST", _url(recording, "api_url", "/prices"), rows)[0] == 201
    status, body = http("GET", _url(recording, "api_url", "/prices?symbol=PULU"))
    assert status == 200 and {r["close"] for r in json.loads(body)} == {"42.0000", "43.5000"}
    status, body = http("GET", _url(recording, "frontend_url", "/"))
    assert status == 200 and b"PULU" in body
    admin_pw = applied.passwords["credentials-admin-password"]
    auth = base64.b64encode(f"{plain(recording.outputs['admin_user'])}:{admin_pw}".encode()).decode()
    assert http("GET", _url(recording, "admin_url", "/"))[0] == 401
    status, body = http("GET", _url(recording, "admin_url", "/"), headers={"Authorization": f"Basic {auth}"})
    assert status == 200 and b"2 price rows" in body
