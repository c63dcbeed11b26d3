"""The data operations with 1,000,000 price rows, next to the bare PostgreSQL tools on the same data and
engine (a benchmark, not a test; figures go to the README):

    python -m bench.data_bench [--rows N]

adopt (legacy PostgreSQL 13 volume into a PostgreSQL 17 stack) vs `pg_dump -Fc | pg_restore` between the
same two servers; `ops backup` vs `pg_dump -Fc -f`; `ops restore` vs `pg_restore --clean -d`. Uses its own
stack (`databench`, loopback ports 15200-15203) and removes it afterwards.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "app"))  # the test helpers it borrows import the app (pytest adds it likewise)

from exporters import compose  # noqa: E402
from model.settings import VOL_BACKUPS, VOL_DATA  # noqa: E402
from model.stack_yaml import settings_from_file  # noqa: E402
from ops.__main__ import main as ops  # noqa: E402
from tests.docker.compose_support import Stack  # noqa: E402
from tests.docker.conftest import ca_bundle  # noqa: E402
from tests.docker.standins import ensure_image  # noqa: E402
from tests.docker.support import remove_containers, sh  # noqa: E402

STACK = "databench"
LEGACY_IMAGE, NEW_IMAGE = "postgres:13", "postgres:17.6-trixie"
LEGACY = "stock-analyzer-databench-legacy"
FIXTURE = (ROOT / "tests/docker/sql/legacy_fixture.sql").read_text()


def timed(what: str, fn: object, *args: object) -> float:
    started = time.monotonic()
    result = fn(*args)  # type: ignore[operator]
    took = time.monotonic() - started
    assert result in (None, 0), f"{what} failed: {result}"
    print(f"{what}: {took:.1f} s", flush=True)
    return took


def docker_sh(container: str, script: str, env: dict[str, str] | None = None) -> None:
    envs = [a for k, v in (env or {}).items() for a in ("-e", f"{k}={v}")]
    sh("docker", "exec", *envs, container, "bash", "-o", "pipefail", "-c", script, timeout=3600)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    rows = parser.parse_args().rows
    for image in (LEGACY_IMAGE, NEW_IMAGE, "python:3.13.7-slim-trixie"):
        print(image, ensure_image(image))
    password = secrets.token_hex(12)
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="databench-") as tmp_s:
        tmp = Path(tmp_s)
        (tmp / "app").symlink_to(ROOT / "app")
        config = {f"stock-analyzer:{k}": v for k, v in {
            "environment": "dev", "apiHostPort": 15200, "frontendHostPort": 15201, "adminHostPort": 15202,
            "postgresHostPort": 15203, "backupIntervalMinutes": 10080}.items()}
        (tmp / f"Pulumi.{STACK}.yaml").write_text(yaml.safe_dump({"config": config}))
        s = settings_from_file(STACK, tmp)
        pw_file = tmp / "legacy.pw"
        pw_file.write_text(password)
        legacy_volume = f"{LEGACY}_data"

        def cleanup() -> None:
            remove_containers(s.prefix + "-")
            remove_containers(LEGACY)
            for v in [*s.volumes.values(), legacy_volume, f"{STACK}-bare"]:
                sh("docker", "volume", "rm", "-f", v, check=False)
            sh("docker", "network", "rm", f"{LEGACY}-net", check=False)

        cleanup()
        try:
            # The legacy database: PostgreSQL 13 with `rows` price rows (not timed).
            sh("docker", "network", "create", f"{LEGACY}-net")
            sh("docker", "run", "-d", "--name", LEGACY, "--network", f"{LEGACY}-net", "--network-alias", "legacy",
               "-e", f"POSTGRES_PASSWORD={password}", "-e", "POSTGRES_DB=stock_analysis",
               "-v", f"{legacy_volume}:/var/lib/postgresql/data", LEGACY_IMAGE)
            for _ in range(120):
                if sh("docker", "exec", LEGACY, "pg_isready", "-q", "-h", "127.0.0.1", check=False).returncode == 0:
                    break
                time.sleep(0.5)
            time.sleep(2)
            sh("docker", "exec", "-i", LEGACY, "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-v", f"rows={rows}",
               "-U", "postgres", "-d", "stock_analysis", input=FIXTURE, timeout=1800)
            size = sh("docker", "exec", LEGACY, "psql", "-X", "-A", "-t", "-U", "postgres", "-d", "stock_analysis",
                      "-c", "SELECT pg_size_pretty(pg_database_size(current_database()))").stdout.strip()
            print(f"legacy database: {rows} price rows, {size}")

            # Bare: pg_dump (17) from the running 13 | pg_restore into a fresh 17, nothing else.
            bare = f"{STACK}-bare"
            sh("docker", "run", "-d", "--name", f"{LEGACY}-bare", "--network", f"{LEGACY}-net",
               "-e", f"POSTGRES_PASSWORD={password}", "-e", "POSTGRES_DB=stock_analysis", "--user", "999:999",
               "--tmpfs", "/var/run/postgresql:uid=999,gid=999", "-v", f"{bare}:/var/lib/postgresql/data", NEW_IMAGE)
            for _ in range(120):
                if sh("docker", "exec", f"{LEGACY}-bare", "pg_isready", "-q", "-h", "127.0.0.1",
                      check=False).returncode == 0:
                    break
                time.sleep(0.5)
            time.sleep(2)
            pipeline = ("pg_dump -h legacy -U postgres -d stock_analysis -Fc | pg_restore -h /var/run/postgresql "
                        "-U postgres -d stock_analysis --no-owner --no-acl")
            figures["bare dump|restore 13->17"] = timed("bare pg_dump | pg_restore (13 -> 17)", docker_sh,
                                                       f"{LEGACY}-bare", pipeline, {"PGPASSWORD": password})
            remove_containers(f"{LEGACY}-bare")
            sh("docker", "stop", "-t", "60", LEGACY)

            figures["adopt"] = timed("ops adopt", ops, ["adopt", "--stack", STACK, "--from-volume", legacy_volume,
                                                        "--password-file", str(pw_file), "--project", str(tmp)])
            compose.export(STACK, tmp / "out", project_dir=tmp, ca_bundle=ca_bundle())
            st = Stack(tmp / "out", s)
            st.up()
            backup_c = s.backup.container_name
            # As the stack does it: the dump as the backup role, the restore as the superuser.
            figures["bare pg_dump -Fc"] = timed("bare pg_dump -Fc -f", docker_sh, backup_c,
                                                'PGPASSWORD=$(cat "$BACKUP_DB_PASSWORD_FILE") pg_dump -Fc '
                                                '-f /var/lib/backups/bare.dump')
            superuser = {"PGUSER": s.db_superuser, "PGPASSWORD": st.secret("postgres_password")}
            figures["backup"] = timed("ops backup", ops, ["backup", "--stack", STACK, "--project", str(tmp)])
            backup_id = sh("docker", "exec", backup_c, "sh", "/backup/backup.sh", "list").stdout.split()[0]
            figures["bare pg_restore --clean"] = timed(
                "bare pg_restore --clean", docker_sh, backup_c,
                'pg_restore --clean --if-exists --no-owner --no-acl -d "$PGDATABASE" /var/lib/backups/bare.dump',
                superuser)
            figures["restore"] = timed("ops restore", ops, ["restore", "--stack", STACK, backup_id,
                                                            "--project", str(tmp)])
            st.compose("down", "--timeout", "30")
        finally:
            cleanup()
            for v in (s.volumes[VOL_DATA], s.volumes[VOL_BACKUPS]):
                sh("docker", "volume", "rm", "-f", v, check=False)
    print("\n| operation | ops | bare tools | overhead |\n| --- | --- | --- | --- |")
    for op, bare_key in (("adopt", "bare dump|restore 13->17"), ("backup", "bare pg_dump -Fc"),
                         ("restore", "bare pg_restore --clean")):
        print(f"| {op} | {figures[op]:.1f} s | {figures[bare_key]:.1f} s | "
              f"{(figures[op] / figures[bare_key] - 1) * 100:+.0f} % |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
