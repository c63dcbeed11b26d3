"""The README's deploy command from a clean copy of the repository, as a new user runs it: once with a
Pulumi CLI on PATH (a stand-in that records what it is asked; the real CLI cannot be installed here),
once without (the compose export brings the dev stack up on the real engine), each twice (idempotent)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from model.settings import StackSettings
from tests.docker.support import http, inspect, remove_containers, sh

pytestmark = pytest.mark.docker
ROOT = Path(__file__).resolve().parents[2]
FAKE_PULUMI = """#!/bin/sh
# Records each call with the environment the deploy script gave it; `whoami`: not logged in.
printf '%s|%s|%s\\n' "$*" "${PULUMI_BACKEND_URL:-}" "${PULUMI_CONFIG_PASSPHRASE_FILE:-}" >> "$FAKE_PULUMI_LOG"
[ "$1" != whoami ]
"""


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What a clone would hold: the tracked files plus new, not ignored ones (so it also works before commit)."""
    dest = tmp_path_factory.mktemp("clone") / "stock-analyzer"
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for f in filter(None, files):
        if (ROOT / f).exists():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dest / f, follow_symlinks=False)
    return dest


def _path_without_pulumi() -> str:
    return os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                           if p and not (Path(p) / "pulumi").exists())


def _deploy(clone: Path, env: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PULUMI_", "VIRTUAL_ENV"))}
    return subprocess.run(["./deploy.sh"], cwd=clone, env={**clean, **env}, capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_pulumi_branch_keeps_state_and_passphrase_in_the_project(clone: Path, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "pulumi").write_text(FAKE_PULUMI)
    (bin_dir / "pulumi").chmod(0o755)
    log = tmp_path / "calls"
    env = {"PATH": f"{bin_dir}{os.pathsep}{_path_without_pulumi()}", "FAKE_PULUMI_LOG": str(log)}
    first = _deploy(clone, env)
    assert first.returncode == 0, first.stderr
    assert "setting up .venv" in first.stdout
    backend = f"file://{clone}/.pulumi-state"
    passphrase = clone / ".pulumi-passphrase"
    calls = [line.split("|") for line in log.read_text().splitlines()]
    assert calls[-2:] == [["stack select --create dev --non-interactive", backend, str(passphrase)],
                          ["up --yes --stack dev --non-interactive", backend, str(passphrase)]]
    assert stat.S_IMODE(passphrase.stat().st_mode) == 0o600 and len(passphrase.read_text().strip()) >= 40
    for path in (".pulumi-passphrase", ".pulumi-state/x", ".stack/x"):
        ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT, check=False)
        assert ignored.returncode == 0, f"{path}: state, passphrase and export must stay out of git"
    assert f"state: {backend}" in first.stdout and f"secrets passphrase: {passphrase}" in first.stdout
    # Idempotent: the same passphrase, no reinstall, the same two calls.
    secret = passphrase.read_text()
    log.unlink()
    second = _deploy(clone, env)
    assert second.returncode == 0 and "setting up .venv" not in second.stdout
    assert passphrase.read_text() == secret
    assert [line.split("|")[0] for line in log.read_text().splitlines()][-2:] == [
        "stack select --create dev --non-interactive", "up --yes --stack dev --non-interactive"]
    # A backend the user chose is kept.
    log.unlink()
    third = _deploy(clone, {**env, "PULUMI_BACKEND_URL": "s3://team-bucket/state"})
    assert third.returncode == 0 and "state: s3://team-bucket/state" in third.stdout


def test_refusals_are_one_clear_line(clone: Path) -> None:
    env = {"PATH": _path_without_pulumi()}
    bad = subprocess.run(["./deploy.sh", "staging"], cwd=clone, env={**os.environ, **env}, capture_output=True,
                         text=True, timeout=60, check=False)
    assert bad.returncode == 1
    assert bad.stderr.strip() == "deploy: error: no Pulumi.staging.yaml; known stacks: dev prod swarm"
    down = _deploy(clone, {**env, "DOCKER_HOST": "unix:///nonexistent.sock"}, timeout=60)
    assert down.returncode == 1 and "no Docker engine answers at unix:///nonexistent.sock" in down.stderr


@pytest.fixture
def compose_branch(clone: Path, base_images: dict[str, str], dev_settings: StackSettings) -> Iterator[Path]:
    remove_containers(dev_settings.prefix + "-")
    for volume in dev_settings.volumes.values():
        sh("docker", "volume", "rm", "-f", volume, check=False)
    sh("docker", "image", "rm", "-f", dev_settings.app_image, check=False)
    yield clone
    compose_file = clone / ".stack/dev/compose.yaml"
    if compose_file.exists():
        sh("docker", "compose", "-f", str(compose_file), "down", "--volumes", "--timeout", "20", check=False)


def test_without_pulumi_the_compose_export_brings_dev_up(compose_branch: Path, dev_settings: StackSettings) -> None:
    env = {"PATH": _path_without_pulumi()}
    started = time.monotonic()
    first = _deploy(compose_branch, env)
    print(f"./deploy.sh (compose branch, venv ready, image built): {time.monotonic() - started:.1f} s")
    assert first.returncode == 0, first.stderr + first.stdout
    assert "no Pulumi CLI on PATH" in first.stdout and "secrets: .stack/dev/secrets/" in first.stdout
    for c in dev_settings.containers:
        if c.healthcheck:
            assert inspect(c.container_name)["State"]["Health"]["Status"] == "healthy", c.container_name
    port = dev_settings.app("api").ports[0].host_port
    assert http("GET", f"http://127.0.0.1:{port}/health")[0] == 200
    started_at = {c.container_name: inspect(c.container_name)["State"]["StartedAt"] for c in dev_settings.containers
                  if c.healthcheck}
    secrets_before = {p.name: p.read_text() for p in (compose_branch / ".stack/dev/secrets").iterdir()}
    second = _deploy(compose_branch, env)
    assert second.returncode == 0, second.stderr
    assert {n: inspect(n)["State"]["StartedAt"] for n in started_at} == started_at, "a second run recreated something"
    assert {p.name: p.read_text() for p in (compose_branch / ".stack/dev/secrets").iterdir()} == secrets_before
