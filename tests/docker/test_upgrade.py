"""A PostgreSQL major upgrade on the real engine, as the runbook says (docs/operations.md): a stack on
PostgreSQL 15 with rows, `ops upgrade --to-image` a 17 image, then both config keys changed and `up`:
identical rows, the app writing, the 15 data kept for rollback. Its own stack, ports and project dir."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from components import compose
from components.ops.__main__ import main as ops
from components.settings import VOL_DATA
from components.stack_file import settings_from_file
from tests.docker.compose_support import Stack
from tests.docker.conftest import ca_bundle
from tests.docker.standins import ensure_image
from tests.docker.support import http, remove_containers, sh

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


def test_upgrade_from_15_to_17_keeps_every_row(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    st = _up(project)
    assert http("POST", st.url("api", "/prices"), ROWS)[0] == 201
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
