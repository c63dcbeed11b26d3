"""Point-in-time recovery, measured (a benchmark, not a test; figures go to docs/recovery.md):

    python -m bench.pitr_bench [--scale 10] [--replay-s 120] [--pgbench-s 30]

On one stack with archiving into a local repository and an off-host S3 store (tests/docker/offhost.sh):
- RTO of a 1,000,000-row database (pgbench scale 10): `ops restore --set` from the local repository and from
  the off-host one, next to a plain copy of the data directory and a bare `pg_restore` of a `pg_dump -Fc`;
- a restore that replays --replay-s seconds of pgbench's WAL after the base backup (how long, how much WAL);
- the cost of archiving: pgbench TPS with the stack's archiving, and on the same data with archive_mode off.
Uses its own stack (`pitrbench`, loopback ports 15300-15302) and removes it and the off-host machine after.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "app"))

from exporters import compose  # noqa: E402
from model.settings import VOL_DATA  # noqa: E402
from model.stack_yaml import settings_from_file  # noqa: E402
from ops.__main__ import main as ops  # noqa: E402
from tests.docker.compose_support import Stack  # noqa: E402
from tests.docker.conftest import ca_bundle  # noqa: E402
from tests.docker.pitr_support import BUCKET, OFFHOST_ENDPOINT, S3_KEY, S3_SECRET, make_bucket, offhost  # noqa: E402
from tests.docker.support import sh  # noqa: E402

STACK = "pitrbench"


def _project(tmp: Path) -> Path:
    for d in ("app", "pitr"):
        (tmp / d).symlink_to(ROOT / d)
    (tmp / "Pulumi.yaml").write_text((ROOT / "Pulumi.yaml").read_text())
    config = {"environment": "dev", "pitr": True, "pitrOffhost": "s3", "pitrS3Endpoint": OFFHOST_ENDPOINT,
              "pitrS3Bucket": BUCKET, "pitrS3VerifyTls": False, "apiHostPort": 15300, "frontendHostPort": 15301,
              "adminHostPort": 15302}
    (tmp / f"Pulumi.{STACK}.yaml").write_text(yaml.safe_dump({"config": {f"stock-analyzer:{k}": v
                                                                          for k, v in config.items()}}))
    return tmp


def timed(what: str, fn: object, *args: object) -> float:
    started = time.monotonic()
    fn(*args)  # type: ignore[operator]
    took = time.monotonic() - started
    print(f"{what}: {took:.1f} s", flush=True)
    return took


def run_ops(project: Path, *argv: str) -> None:
    code = ops([*argv, "--stack", STACK, "--project", str(project)])
    assert code == 0, argv


def pg(st: Stack, *args: str, timeout: float = 1800) -> str:
    return sh("docker", "exec", st.s.postgres.container_name, *args, timeout=timeout).stdout


def tps(out: str) -> float:
    m = re.search(r"tps = ([0-9.]+)", out)
    assert m, out
    return float(m[1])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=int, default=10, help="pgbench scale (10: 1,000,000 rows in pgbench_accounts)")
    ap.add_argument("--replay-s", type=int, default=120)
    ap.add_argument("--pgbench-s", type=int, default=30)
    a = ap.parse_args()
    offhost("down")
    offhost("up")
    with tempfile.TemporaryDirectory(prefix="pitr-bench-") as tmp:
        project = _project(Path(tmp))
        out = project / "out"
        s = settings_from_file(STACK, project)
        st = Stack(out, s)
        try:
            make_bucket()
            (out / "secrets").mkdir(parents=True, mode=0o700)
            for name, value in (("pitr_s3_key", S3_KEY), ("pitr_s3_key_secret", S3_SECRET)):
                (out / "secrets" / name).write_text(value)
            compose.export(STACK, out, project_dir=project, ca_bundle=ca_bundle())
            st.up()
            bench(a, project, st)
        finally:
            sh("docker", "compose", "-f", st.file, "down", "--volumes", "--timeout", "20", check=False, timeout=180)
            for v in sh("docker", "volume", "ls", "-q", "--filter", f"label=stock-analyzer.stack={STACK}",
                        check=False).stdout.split():
                sh("docker", "volume", "rm", "-f", v, check=False)
            offhost("down")
    return 0


def bench(a: argparse.Namespace, project: Path, st: Stack) -> None:
    s = st.s
    db = ["-U", "postgres", "-d", s.db_name]
    pg(st, "pgbench", "-i", "-q", "-s", str(a.scale), *db)
    rows = pg(st, "psql", "-Atc", "SELECT count(*) FROM pgbench_accounts", *db).strip()
    size = pg(st, "psql", "-Atc", f"SELECT pg_size_pretty(pg_database_size('{s.db_name}'))", *db).strip()
    print(f"database: {rows} rows in pgbench_accounts, {size}", flush=True)
    run_ops(project, "basebackup", "--type", "full")
    status = sh("docker", "exec", s.pitr_runner.container_name, "sh", "/pitr/pitr.sh", "status").stdout  # type: ignore[union-attr]
    label = dict(line.split("=", 1) for line in status.splitlines() if "=" in line)
    local, offhost = label["backup-repo1.label"], label["backup-repo2.label"]
    t_local = timed("restore --set, local repository", run_ops, project, "restore", "--set", local, "--repo", "1",
                    "--yes")
    t_off = timed("restore --set, off-host repository", run_ops, project, "restore", "--set", offhost, "--repo", "2",
                  "--yes")
    data = s.volumes[VOL_DATA]
    copy = f"{data}_benchcopy"
    sh("docker", "volume", "create", copy)
    t_copy = timed("plain copy of the data directory (cp -a)", sh, "docker", "run", "--rm", "-v", f"{data}:/from:ro",
                   "-v", f"{copy}:/to", "--user", "0", s.pitr.image, "sh", "-c", "cp -a /from/. /to/")  # type: ignore[union-attr]
    sh("docker", "volume", "rm", copy)
    pg(st, "sh", "-c", f"pg_dump -Fc -U postgres -d {s.db_name} -f /var/lib/pgbackrest/bench.dump")
    pg(st, "psql", "-c", "CREATE DATABASE benchrestore", "-U", "postgres", "-d", "postgres")
    t_dump = timed("bare pg_restore of pg_dump -Fc into an empty database", pg, st, "pg_restore", "-U", "postgres",
                   "-d", "benchrestore", "/var/lib/pgbackrest/bench.dump")
    pg(st, "psql", "-c", "DROP DATABASE benchrestore", "-U", "postgres", "-d", "postgres")
    # Archiving's cost, then the WAL a replay has to go through.
    with_archiving = tps(pg(st, "pgbench", "-n", "-c", "4", "-j", "2", "-T", str(a.pgbench_s), *db))
    print(f"pgbench with archiving: {with_archiving:.0f} tps", flush=True)
    run_ops(project, "basebackup", "--type", "full")
    lsn0 = pg(st, "psql", "-Atc", "SELECT pg_current_wal_lsn()", *db).strip()
    pg(st, "pgbench", "-n", "-c", "4", "-j", "2", "-T", str(a.replay_s), *db, timeout=a.replay_s + 600)
    wal = pg(st, "psql", "-Atc", f"SELECT pg_size_pretty(pg_current_wal_lsn() - '{lsn0}')", *db).strip()
    t_replay = timed(f"restore --to-latest replaying {a.replay_s} s of pgbench WAL ({wal})", run_ops, project,
                     "restore", "--to-latest", "--yes")
    # The same server with archiving off: a container of the same image on the same data volume.
    sh("docker", "stop", "-t", "60", s.postgres.container_name)
    sh("docker", "stop", "-t", "10", s.pitr_runner.container_name)  # type: ignore[union-attr]
    plain = "pitrbench-noarchive"
    sh("docker", "run", "-d", "--name", plain, "--user", "999:999", "-v", f"{data}:/var/lib/postgresql/data",
       s.pitr.image, "postgres", "-c", "archive_mode=off")  # type: ignore[union-attr]
    try:
        for _ in range(120):
            if sh("docker", "exec", plain, "pg_isready", "-q", check=False).returncode == 0:
                break
            time.sleep(0.5)
        without = tps(sh("docker", "exec", plain, "pgbench", "-n", "-c", "4", "-j", "2", "-T", str(a.pgbench_s),
                         *db, timeout=a.pgbench_s + 300).stdout)
    finally:
        sh("docker", "rm", "-f", plain, check=False)
    print(f"pgbench without archiving: {without:.0f} tps", flush=True)
    # The volume lost: the same restores into an empty data volume (no delta to lean on).
    sh("docker", "start", s.postgres.container_name)
    empty = {}
    for repo in ("1", "2"):
        for c in sh("docker", "ps", "-aq", "--filter", f"volume={data}").stdout.split():
            sh("docker", "rm", "-f", c)
        sh("docker", "volume", "rm", data)
        st.compose("up", "--no-start", "--no-deps", s.postgres.service, s.provision.service,
                   s.pitr_runner.service)  # type: ignore[union-attr]
        empty[repo] = timed(f"restore --to-latest into an empty volume, repo{repo}", run_ops, project, "restore",
                            "--to-latest", "--repo", repo, "--yes")
        st.compose("up", "-d")
    print(f"\nsummary: rows={rows} size={size} restore_local={t_local:.1f}s restore_offhost={t_off:.1f}s "
          f"copy={t_copy:.1f}s pg_restore={t_dump:.1f}s replay_{a.replay_s}s={t_replay:.1f}s wal={wal} "
          f"tps_archiving={with_archiving:.0f} tps_plain={without:.0f} "
          f"cost={100 * (without - with_archiving) / without:.1f}% empty_local={empty['1']:.1f}s "
          f"empty_offhost={empty['2']:.1f}s", flush=True)


if __name__ == "__main__":
    sys.exit(main())
