"""The committed dev stack exported as compose, for the Docker tests on the compose path."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

from exporters import compose
from model.settings import SECRETS, StackSettings
from tests.docker.conftest import ca_bundle
from tests.docker.support import remove_containers, sh, wait_healthy


class Stack:
    def __init__(self, out: Path, s: StackSettings) -> None:
        self.out, self.s = out, s
        self.file = str(out / "compose.yaml")
        self.names = {c.service: c.container_name for c in s.containers}
        self.services = [c.container_name for c in s.containers if c.healthcheck]

    def compose(self, *args: str, timeout: float = 600) -> str:
        return sh("docker", "compose", "-f", self.file, *args, timeout=timeout).stdout

    def url(self, service: str, path: str) -> str:
        port = self.s.app(service).ports[0]
        return f"http://{port.host_ip}:{port.host_port}{path}"

    def secret(self, name: str) -> str:
        return (self.out / "secrets" / name).read_text()

    def up(self) -> float:
        """`up -d --build` as the README says; seconds until every service is healthy."""
        start = time.monotonic()
        self.compose("up", "-d", "--build")
        wait_healthy(self.services, timeout_s=180)
        return time.monotonic() - start


def open_credentials(stack: Stack) -> list[str]:
    """The app's current (user, password), as the provisioning job wrote them for the app."""
    out = sh("docker", "exec", stack.names["api"], "cat", "/run/app-credentials/db").stdout
    return out.splitlines()


def exported_stack(out: Path, s: StackSettings) -> Iterator[Stack]:
    """Export into `out` on a clean engine (no containers, volumes or app image of the stack), yield, then
    `down --volumes`. Bring it up with `Stack.up`."""
    assert compose.export("dev", out, ca_bundle=ca_bundle()) == [spec.name for spec in SECRETS]
    st = Stack(out, s)
    remove_containers(s.prefix + "-")
    for volume in s.volumes.values():
        sh("docker", "volume", "rm", "-f", volume, check=False)
    # As on a fresh engine: no app image yet, so `up -d --build` builds it.
    sh("docker", "image", "rm", "-f", s.app_image, check=False)
    try:
        yield st
    finally:
        sh("docker", "compose", "-f", st.file, "down", "--volumes", "--timeout", "20", check=False, timeout=180)


def running_stack(out: Path, s: StackSettings) -> Iterator[Stack]:
    """`exported_stack`, already up and healthy (for modules that only need a running stack)."""
    for st in exported_stack(out, s):
        st.up()
        yield st
