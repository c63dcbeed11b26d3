from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _project_cwd() -> Iterator[None]:
    """Pulumi runs programs from the project directory; relative paths (the build context) rely on it."""
    old = os.getcwd()
    os.chdir(ROOT)
    try:
        yield
    finally:
        os.chdir(old)


def _docker_reachable() -> bool:
    import shutil
    import subprocess

    if not shutil.which("docker"):
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20, check=False).returncode == 0
    except subprocess.TimeoutExpired:
        return False


@pytest.fixture(scope="session")
def docker_cli() -> str:
    """The docker CLI, with a reachable engine. Skips without one, unless REQUIRE_DOCKER=1 (CI)."""
    if not _docker_reachable():
        if os.environ.get("REQUIRE_DOCKER") == "1":
            pytest.fail("REQUIRE_DOCKER=1 but no Docker engine is reachable (as root: tools/docker-engine.sh start)")
        pytest.skip("no Docker engine reachable")
    return "docker"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    from tests.docker.conftest import BASE_IMAGES_USED

    for image, how in sorted(BASE_IMAGES_USED.items()):
        loud = " -- LOCAL STAND-IN built from Debian packages, NOT the official image" if "stand-in" in how else ""
        terminalreporter.write_line(f"docker base image {image}: {how}{loud}", yellow=bool(loud))
