"""A PostgreSQL major upgrade on the real engine, as the runbook says (docs/operations.md): a stack on
PostgreSQL 15 with rows; refusals that change nothing (too little space, a database the upgrade would
leave behind); a failure injected after every step, each leaving the 15 data identical and the stack
running again; then `ops upgrade --to-image` a 17 image, both config keys changed and `up`: identical
rows, the app writing, the 15 data kept; and `--roll-back` puts it back. Its own stack, ports and
project dir."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from exporters import compose
from model.settings import VOL_DATA
from model.stack_yaml import settings_from_file
from ops import __main__ as ops_main
from ops.__main__ import main as ops
from tests.docker.compose_support import Stack
from tests.docker.conftest import ca_bundle
from tests.docker.standins import ensure_image
from tests.docker.support import http, one_error_line, remove_containers, sh, wait_for

pytestmark = pytest.mark.docker
ROOT = Path(__file__).resolve().parents[2]
STACK = "upgradetest"
OLD_IMAGE, NEW_IMAGE = "postgres:15", "postgres:17.6-trixie"
ROWS = [{"symbol": f"U{i % 9}", "day": (dt.date(2020, 1, 1) + dt.timedelta(days=i)).isoformat(), "close": f"{i}.5"}
        for i in range(300)]


def _write_stack(project: Path, image: str, major: int) -> None:
    config = {f"stock-analyzer:{k}": v for k, v in {
        "environment": "dev", "postgresImage": image, "postgresDataMajor": major, "apiHostPort": 15100,
        "frontendHostPort": 15101, "adminHostPort": 15102, "postgresHostPort": 15103}.items()}
    (project / f"Pulumi.{STACK}.yaml").write_text(yaml.safe_dump({"config": config}))


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, base_images: dict[str, str]) -> Iterator[Path]:
    print("old image:", ensure_image(OLD_IMAGE))
    d = tmp_path_factory.mktemp("upgrade-project")
    (d / "app").symlink_to(ROOT / "app")
    _write_stack(d, OLD_IMAGE, 15)
    s = settings_from_file(STACK, d)
    remove_containers(s.prefix + "-")
    for volume in [*s.volumes.values(), f"{s.volumes[VOL_DATA]}_pg15"]:
        sh("docker", "volume", "rm", "-f", volume, check=False)
    yield d
    out = d / "out"
    if (out / "compose.yaml").exists():
        sh("docker", "compose", "-f", str(out / "compose.yaml"), "down", "--volumes", "--timeout", "20", check=False)
    sh("docker", "volume", "rm", "-f", f"{s.volumes[VOL_DATA]}_pg15", check=False)


def _up(project: Path) -> Stack:
    compose.export(STACK, project / "out", project_dir=project, ca_bundle=ca_bundle())
    st = Stack(project / "out", settings_from_file(STACK, project))
    st.up()
    return st


def _digest(volume: str) -> str:
    script = "cd /v && find . -type f -print0 | LC_ALL=C sort -z | xargs -0r sha256sum | sha256sum"
    return sh("docker", "run", "--rm", "--network", "none", "-v", f"{volume}:/v:ro", "--user", "999",
              "--entrypoint", "sh", OLD_IMAGE, "-c", script).stdout



def _running(st: Stack) -> None:
    wait_for("the stack answering again", lambda: http("GET", st.url("api", "/health"))[0] == 200, timeout_s=90)


def test_refusals_and_failures_leave_the_old_cluster_identical(
        project: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    st = _up(project)
    assert http("POST", st.url("api", "/prices"), ROWS)[0] == 201
    data = st.s.volumes[VOL_DATA]
    argv = ["upgrade", "--stack", STACK, "--to-image", NEW_IMAGE, "--project", str(project)]

    capsys.readouterr()
    with monkeypatch.context() as m:
        m.setattr(ops_main, "UPGRADE_SPACE_FACTOR", 10**9)
        assert ops(argv) == 1
    assert "MiB free" in one_error_line(capsys.readouterr().err)

    # A rollback copy of an upgrade that did not finish: never advised away.
    sh("docker", "volume", "create", "--label", f"stock-analyzer.rollback-of={data}", f"{data}_pg15")
    sh("docker", "run", "--rm", "--network", "none", "-v", f"{data}_pg15:/v", "--entrypoint", "sh", OLD_IMAGE, "-c",
       "echo 15 > /v/PG_VERSION")
    assert ops(argv) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "Do not remove it" in line and "--roll-back" in line and "volume rm" not in line, line
    sh("docker", "volume", "rm", f"{data}_pg15")

    # A database the upgrade would not carry: refused after the stop; the stack runs again with every row.
    sh("docker", "exec", st.names["postgres"], "psql", "-U", "postgres", "-c", "CREATE DATABASE reports")
    assert ops(argv) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "database reports" in line and "identical to before" in line and "started again" in line, line
    _running(st)
    assert len(json.loads(http("GET", st.url("api", "/prices?limit=1000"))[1])) == len(ROWS)
    sh("docker", "exec", st.names["postgres"], "psql", "-U", "postgres", "-c", "DROP DATABASE reports")

    # A failure after each step, the stack stopped (so nothing writes the data directory in between): the
    # data volume is byte-identical afterwards, and no rollback volume is left.
    st.compose("stop", "--timeout", "30")
    before = _digest(data)
    lines = {}
    for step in range(1, 10):
        monkeypatch.setenv("OPS_FAIL_AFTER", str(step))
        assert ops(argv) == 1
        lines[step] = one_error_line(capsys.readouterr().err)
        assert f"injected failure after step {step}" in lines[step]
        assert "PostgreSQL 15 data again, identical to before" in lines[step] or "not touched" in lines[step]
        assert sh("docker", "volume", "inspect", f"{data}_pg15", check=False).returncode != 0, "rollback left"
        assert _digest(data) == before, f"failure after step {step} changed {data}"
    print("\n".join(f"failure after step {k}: {v}" for k, v in lines.items()))
    # With the stack running: what the upgrade stopped is started again.
    st.compose("start")
    _running(st)
    monkeypatch.setenv("OPS_FAIL_AFTER", "5")
    assert ops(argv) == 1
    assert "started again" in one_error_line(capsys.readouterr().err)
    monkeypatch.delenv("OPS_FAIL_AFTER")
    _running(st)
    assert len(json.loads(http("GET", st.url("api", "/prices?limit=1000"))[1])) == len(ROWS)


def test_upgrade_from_15_to_17_keeps_every_row(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    st = _up(project)
    before = json.loads(http("GET", st.url("api", "/prices?limit=1000"))[1])
    assert len(before) == len(ROWS)
    data = st.s.volumes[VOL_DATA]

    capsys.readouterr()
    assert ops(["upgrade", "--stack", STACK, "--to-image", "postgres:15.8", "--project", str(project)]) == 1
    assert "later major" in capsys.readouterr().err

    started = time.monotonic()
    code = ops(["upgrade", "--stack", STACK, "--to-image", NEW_IMAGE, "--project", str(project)])
    out = capsys.readouterr()
    print(f"upgrade 15 -> 17: {time.monotonic() - started:.1f} s\n{out.out}\n{out.err}")
    assert code == 0, out.err
    assert "table public.stock_prices" in out.out and " NO" not in out.out
    version = "cat /v/PG_VERSION"
    for volume, major in ((data, "17"), (f"{data}_pg15", "15")):
        assert sh("docker", "run", "--rm", "--network", "none", "-v", f"{volume}:/v:ro", "--user", "999",
                  "--entrypoint", "sh", NEW_IMAGE, "-c", version).stdout.strip() == major, volume

    # The runbook's next step: change postgresImage and postgresDataMajor together, then `up`.
    _write_stack(project, NEW_IMAGE, 17)
    st = _up(project)
    after = json.loads(http("GET", st.url("api", "/prices?limit=1000"))[1])
    assert after == before
    assert http("POST", st.url("api", "/prices"), {"symbol": "AFTER", "day": "2031-01-01", "close": "1"})[0] == 201
    server = sh("docker", "exec", st.names["postgres"], "postgres", "--version").stdout
    assert " 17." in server

    # Upgrading again while the copy is kept: it names the way back, and removal only once 17 ran well.
    capsys.readouterr()
    assert ops(["upgrade", "--stack", STACK, "--to-image", NEW_IMAGE, "--project", str(project)]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "--roll-back" in line and "now holds PostgreSQL 17" in line and "Once the stack has run well" in line
    # Back to 15 with one command: the kept copy, proven identical.
    st.compose("stop", "--timeout", "30")
    kept = _digest(f"{data}_pg15")
    assert ops(["upgrade", "--stack", STACK, "--roll-back", "--project", str(project)]) == 0, capsys.readouterr().err
    assert _digest(data) == kept
    _write_stack(project, OLD_IMAGE, 15)
    st = _up(project)
    assert json.loads(http("GET", st.url("api", "/prices?limit=1000"))[1]) == before
