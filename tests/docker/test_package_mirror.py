"""The app image builds from a package index the stack names (pipIndexUrl, pipTrustedHost): a local
simple index of the app's wheels (made with `pip download`), served on loopback, is the only index the
build reads, and its address stays out of the runtime image."""

from __future__ import annotations

import http.server
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from model.settings import load_settings
from tests.docker.support import sh

pytestmark = pytest.mark.docker
ROOT = Path(__file__).resolve().parents[2]
IMAGE = "stock-analyzer-app:mirrortest"


def _simple_index(wheels: Path, root: Path) -> None:
    """PEP 503: /simple/<normalized name>/ lists that project's files."""
    projects: dict[str, list[str]] = {}
    for whl in sorted(wheels.glob("*.whl")):
        name = re.sub(r"[-_.]+", "-", whl.name.split("-")[0]).lower()
        projects.setdefault(name, []).append(whl.name)
    for name, files in projects.items():
        page = root / "simple" / name
        page.mkdir(parents=True)
        links = "".join(f'<a href="../../wheels/{f}">{f}</a>\n' for f in files)
        (page / "index.html").write_text(f"<!doctype html><html><body>\n{links}</body></html>\n")


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list[str]]]:
    root = tmp_path_factory.mktemp("index")
    wheels = root / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "-r", str(ROOT / "app/requirements.txt"),
                    "--only-binary=:all:", "--python-version", "3.13", "--implementation", "cp", "--abi", "cp313",
                    "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64",
                    "--platform", "manylinux_2_28_x86_64", "-d", str(wheels)], check=True, timeout=300)
    _simple_index(wheels, root)
    seen: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kw: object) -> None:
            super().__init__(*args, directory=str(root), **kw)  # type: ignore[arg-type]

        def log_message(self, format: str, *args: object) -> None:
            seen.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_port}", seen
    finally:
        server.shutdown()
        thread.join(timeout=10)
        sh("docker", "image", "rm", "-f", IMAGE, check=False)


def test_the_build_uses_the_stacks_package_index(index: tuple[str, list[str]], base_images: dict[str, str]) -> None:
    host, seen = index
    s = load_settings({"environment": "dev", "pipIndexUrl": f"http://{host}/simple", "pipTrustedHost": host}, "mirror")
    args = [a for k, v in s.app_build_args for a in ("--build-arg", f"{k}={v}")]
    # Host networking only so that the build reaches the index on loopback (tests talk to loopback only).
    result = sh("docker", "build", "--network", "host", "--no-cache", "-q", *args, "-t", IMAGE, str(ROOT / "app"),
                timeout=900, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    requested = {p.split("/")[2] for p in seen if p.startswith("/simple/")}
    assert {"psycopg", "psycopg-binary", "waitress"} <= requested, seen
    assert any(p.startswith("/wheels/psycopg_binary-") for p in seen)
    history = sh("docker", "history", "--no-trunc", IMAGE).stdout
    env = sh("docker", "image", "inspect", "-f", "{{json .Config.Env}}", IMAGE).stdout
    # Arguments of the build stage only: neither the runtime image's environment nor its layers name the index.
    assert host not in env and host not in history
