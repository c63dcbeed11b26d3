"""What the synchronous WAL receiver costs in commit latency (a benchmark, not a test; figures go to
docs/recovery.md):

    python -m bench.receiver_bench [--seconds 20] [--clients 1,4]

One stack with pitrSyncReceiver (pg_receivewal on its own volume; the server waits for its flush), pgbench's
TPC-B-like transactions on the same server and the same data, with each session's synchronous_commit as the
stack sets it (on: the commit waits for the receiver) and as `local` (the commit waits for the server's own
disk only): the difference is the receiver's round trip. Its own stack (`receiverbench`, loopback ports
15310-15312), removed after.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "app"))

from exporters import compose  # noqa: E402
from model.stack_yaml import settings_from_file  # noqa: E402
from tests.docker.compose_support import Stack  # noqa: E402
from tests.docker.conftest import ca_bundle  # noqa: E402
from tests.docker.support import sh, wait_healthy  # noqa: E402

STACK = "receiverbench"


def _project(tmp: Path) -> Path:
    for d in ("app", "pitr"):
        (tmp / d).symlink_to(ROOT / d)
    (tmp / "Pulumi.yaml").write_text((ROOT / "Pulumi.yaml").read_text())
    config = {"environment": "dev", "pitr": True, "pitrSyncReceiver": True, "apiHostPort": 15310,
              "frontendHostPort": 15311, "adminHostPort": 15312}
    (tmp / f"Pulumi.{STACK}.yaml").write_text(yaml.safe_dump({"config": {f"stock-analyzer:{k}": v
                                                                          for k, v in config.items()}}))
    return tmp


def pgbench(st: Stack, clients: int, seconds: int, commit: str) -> tuple[float, float]:
    """(tps, average latency in ms) of one run."""
    out = sh("docker", "exec", "-e", f"PGOPTIONS=-c synchronous_commit={commit}", st.s.postgres.container_name,
             "pgbench", "-n", "-c", str(clients), "-j", str(min(clients, 2)), "-T", str(seconds), "-U", "postgres",
             "-d", st.s.db_name, timeout=seconds + 300).stdout
    tps = re.search(r"tps = ([0-9.]+)", out)
    latency = re.search(r"latency average = ([0-9.]+) ms", out)
    assert tps and latency, out
    return float(tps[1]), float(latency[1])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--clients", default="1,4")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="receiver-bench-") as tmp:
        project = _project(Path(tmp))
        out = project / "out"
        s = settings_from_file(STACK, project)
        assert s.wal_receiver is not None
        st = Stack(out, s)
        try:
            compose.export(STACK, out, project_dir=project, ca_bundle=ca_bundle())
            st.up()
            wait_healthy([s.wal_receiver.container_name], timeout_s=120)
            sh("docker", "exec", s.postgres.container_name, "pgbench", "-i", "-q", "-s", "1", "-U", "postgres",
               "-d", s.db_name, timeout=600)
            for clients in (int(c) for c in a.clients.split(",")):
                for commit in ("on", "local", "local", "on"):  # each twice, in both orders (the cache warms)
                    tps, latency = pgbench(st, clients, a.seconds, commit)
                    print(f"clients={clients} synchronous_commit={commit}: {tps:.0f} tps, latency {latency:.2f} ms",
                          flush=True)
        finally:
            sh("docker", "compose", "-f", st.file, "down", "--volumes", "--timeout", "20", check=False, timeout=180)
            for v in sh("docker", "volume", "ls", "-q", "--filter", f"label=stock-analyzer.stack={STACK}",
                        check=False).stdout.split():
                sh("docker", "volume", "rm", "-f", v, check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
