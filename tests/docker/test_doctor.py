"""`ops doctor` against the real engine: a healthy dev stack passes; each injected fault is diagnosed with
its fix, and following the fix it prints makes the check pass again. Loopback only."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import psycopg
import pytest

from model.settings import StackSettings
from ops.__main__ import main as ops
from tests.docker.compose_support import Stack, open_credentials, running_stack
from tests.docker.support import postgres_dsn, sh, wait_healthy

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, base_images: dict[str, str],
          dev_settings: StackSettings) -> Iterator[Stack]:
    yield from running_stack(tmp_path_factory.mktemp("compose-doctor"), dev_settings)


def doctor(capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, list[str]]:
    capsys.readouterr()
    code = ops(["doctor", "--stack", "dev", *extra])
    return code, capsys.readouterr().out.splitlines()


def line(lines: list[str], check: str) -> str:
    return next(x for x in lines if x[6:].startswith(check))


def test_a_healthy_stack_passes(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    code, lines = doctor(capsys)
    print("\n".join(lines))
    assert code == 0 and not [x for x in lines if x.startswith("fail")]
    assert line(lines, "database login").startswith("ok") and "reach frontend -> api:5000" in "\n".join(lines)


def test_engine_down(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    code, lines = doctor(capsys)
    assert code == 1
    engine = line(lines, "engine")
    assert engine.startswith("fail") and "unix:///nonexistent/docker.sock" in engine and "start Docker" in engine


def test_nearly_full_disk_by_threshold(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    code, lines = doctor(capsys, "--min-free-gb", "100000")
    disk = line(lines, "disk")
    assert code == 1 and disk.startswith("fail") and "need 100000" in disk and "docker system prune" in disk


def test_port_taken_by_another_process(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    api = stack.names["api"]
    port = stack.s.app("api").ports[0].host_port
    sh("docker", "stop", "-t", "10", api)
    squatter = socket.socket()
    try:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        code, lines = doctor(capsys)
        found = line(lines, f"port 127.0.0.1:{port}")
        assert code == 1 and found.startswith("fail") and f"pid {os.getpid()}" in found and "apiHostPort" in found
        assert line(lines, "container api").startswith("fail")
    finally:
        squatter.close()
        sh("docker", "start", api)
        wait_healthy([api], timeout_s=60)
    assert doctor(capsys)[0] == 0


def test_postgres_stopped(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    pg = stack.names["postgres"]
    sh("docker", "stop", "-t", "30", pg)
    try:
        code, lines = doctor(capsys)
        assert code == 1
        assert line(lines, "container postgres").startswith("fail") and f"docker start {pg}" in line(
            lines, "container postgres")
        login = line(lines, "database login")
        assert login.startswith("fail") and f"docker start {pg}" in login
    finally:
        sh("docker", "start", pg)
        wait_healthy(stack.services, timeout_s=120)
    assert doctor(capsys)[0] == 0


def test_wrong_password(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    user, _ = open_credentials(stack)
    with psycopg.connect(postgres_dsn(stack.s), user=stack.s.db_superuser, password=stack.secret("postgres_password"),
                         autocommit=True) as conn:
        conn.execute(f"ALTER ROLE {user} PASSWORD 'not-what-the-app-has-0123456789'")
    code, lines = doctor(capsys)
    login = line(lines, "database login")
    assert code == 1 and login.startswith("fail") and "refuses the app's credentials" in login
    # The fix it prints, on the compose path.
    stack.compose("up", "-d", "--force-recreate", "db-provision")
    sh("docker", "wait", stack.names["db-provision"], timeout=120)
    assert doctor(capsys)[0] == 0


def test_service_off_the_network(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    api, backend = stack.names["api"], stack.s.networks["backend"]
    sh("docker", "network", "disconnect", backend, api)
    try:
        code, lines = doctor(capsys)
        net = line(lines, "network api")
        assert code == 1 and net.startswith("fail") and backend in net
        reach = line(lines, "reach api -> postgres:5432")
        assert reach.startswith("fail") and "does not resolve" in reach
    finally:
        # The fix it prints.
        sh("docker", "network", "connect", "--alias", "api", backend, api)
    assert doctor(capsys)[0] == 0
