"""stock-analyzer operations: adopt the legacy database, back up, list backups, restore, upgrade Postgres.

    python -m components.ops adopt   --stack STACK --from-volume NAME --password-file FILE [--database DB] [--user USER]
    python -m components.ops backup  --stack STACK
    python -m components.ops backups --stack STACK
    python -m components.ops restore --stack STACK ID
    python -m components.ops upgrade --stack STACK --to-image IMAGE
    python -m components.ops doctor  --stack STACK

Talks to the engine in DOCKER_HOST (or the local socket). Every refusal is one `error:` line and exit 1,
with nothing changed. Runbooks: docs/operations.md.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from docker.models.containers import Container

from components.ops.doctor import MIN_FREE_GB, WARN_FREE_GB, Doctor, report
from components.ops.engine import Engine, OpsError, Progress
from components.ops.migrate import SUPERUSER_RECORD, Source, data_major, generate_password, migrate, volume_labels
from components.settings import (
    PROJECT,
    SUPPORTED_POSTGRES_MAJORS,
    VOL_DATA,
    VOL_PROVISION_STATE,
    ConfigError,
    StackSettings,
    image_major,
)
from components.stack_file import PROJECT_DIR, settings_from_file

BACKUP_SCRIPT = "/backup/backup.sh"
_BACKUP_ID = re.compile(r"[a-z_][a-z0-9_]{0,62}-[0-9]{8}T[0-9]{6}Z")


def _legacy_password(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise OpsError(f"--password-file {path}: cannot read it ({err})") from None
    # A file written with `echo` ends in a newline that is not part of the password.
    value = text[:-1] if text.endswith("\n") else text
    if not value or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise OpsError(f"--password-file {path}: empty, or holds control characters beyond one final newline")
    return value


def adopt(args: argparse.Namespace, s: StackSettings, engine: Engine) -> int:
    progress = Progress(7)
    legacy = args.from_volume
    if not engine.volume_exists(legacy):
        raise OpsError(f"--from-volume {legacy}: no such volume on this engine")
    busy = engine.volume_users(legacy)
    if busy:
        raise OpsError(f"--from-volume {legacy} is in use by running container(s) {', '.join(busy)}: stop the "
                       "legacy stack first (docker compose stop), so the copy is consistent")
    password = _legacy_password(args.password_file)
    if not engine.has_image(s.postgres_image):
        raise OpsError(f"no image {s.postgres_image} (the stack's postgresImage) here or in a registry")
    data = s.volumes[VOL_DATA]
    if engine.volume_exists(data) and not engine.volume_is_empty(s.postgres_image, data):
        raise OpsError(f"the stack's data volume {data} already holds data: adopt fills only an empty one "
                       "(to start over, remove the stack and the volume first)")
    state = s.volumes[VOL_PROVISION_STATE]
    if engine.volume_exists(state) and not engine.volume_is_empty(s.postgres_image, state):
        raise OpsError(f"the stack's provisioning state {state} is not empty: this stack has run before; adopt "
                       "is for a stack's first start")
    major = data_major(engine, s.postgres_image, legacy)
    if major > s.postgres_major:
        raise OpsError(f"{legacy} holds PostgreSQL {major} data; the stack runs {s.postgres_major}: "
                       "a downgrade is refused")
    source_image = args.from_image or f"postgres:{major}"
    if not engine.has_image(source_image):
        raise OpsError(f"no image {source_image} here or in a registry: give one of PostgreSQL {major} "
                       "with --from-image")
    if image_major(source_image) != major:
        raise OpsError(f"--from-image {source_image} is not PostgreSQL {major}, the major of {legacy}")
    progress.say(f"adopting {legacy} (PostgreSQL {major}, database {args.database}) into stack {s.stack} "
                 f"(PostgreSQL {s.postgres_major}, volume {data})")
    started = time.monotonic()
    comparison = migrate(engine, s, Source(legacy, source_image, args.user, args.database, password),
                         s.postgres_image, generate_password(), progress)
    print(comparison.table())
    print(f"adopted in {time.monotonic() - started:.1f} s: {len(comparison.rows)} objects identical. "
          f"{legacy} was not written. Next: `pulumi up --stack {s.stack}` or the compose export and "
          "`docker compose up -d` (docs/operations.md)")
    return 0


def upgrade(args: argparse.Namespace, s: StackSettings, engine: Engine) -> int:
    target_image = args.to_image
    try:
        new_major = image_major(target_image)
    except ValueError:
        raise OpsError(f"--to-image {target_image}: no major version in its tag") from None
    if new_major not in SUPPORTED_POSTGRES_MAJORS:
        raise OpsError(f"--to-image {target_image}: PostgreSQL {new_major} is not supported "
                       f"({SUPPORTED_POSTGRES_MAJORS.start}-{SUPPORTED_POSTGRES_MAJORS.stop - 1})")
    data = s.volumes[VOL_DATA]
    if not engine.volume_exists(data):
        raise OpsError(f"the stack's data volume {data} does not exist: nothing to upgrade")
    old_major = data_major(engine, s.postgres_image, data)
    if new_major <= old_major:
        raise OpsError(f"{data} holds PostgreSQL {old_major} data: --to-image must be a later major "
                       f"(a downgrade is refused)")
    if not engine.has_image(target_image):
        raise OpsError(f"--to-image {target_image}: no such image here or in a registry")
    rollback = f"{data}_pg{old_major}"
    if engine.volume_exists(rollback):
        raise OpsError(f"{rollback} exists (an earlier upgrade's rollback copy): move it away first")
    record = engine.read_file(s.postgres_image, s.volumes[VOL_PROVISION_STATE], SUPERUSER_RECORD)
    if not record:
        raise OpsError("no superuser password recorded by the provisioning job: run `up` once first")
    progress = Progress(10)
    running = [c for c in engine.stack_containers(s.stack) if c.status == "running"]
    progress.say(f"upgrading {data} from PostgreSQL {old_major} to {new_major}; stopping "
                 f"{len(running)} container(s) of stack {s.stack} (downtime starts)")
    started = time.monotonic()
    with progress.step("stop the stack's containers"):
        # The app first (it stops writing), then the rest; each with Postgres's own grace period.
        apps = [c for c in running if c.labels.get("stock-analyzer.service") in {a.service for a in s.apps}]
        for group in (apps, [c for c in running if c not in apps]):
            with ThreadPoolExecutor(max_workers=8) as pool:
                list(pool.map(lambda c: c.stop(timeout=60), group))
    with progress.step(f"keep the PostgreSQL {old_major} data as {rollback} (the rollback)"):
        engine.create_volume(rollback, {**volume_labels(s), "stock-analyzer.rollback-of": data})
        engine.copy_volume(s.postgres_image, data, rollback)
    with progress.step(f"empty {data} for the new major"):
        engine.empty_volume(s.postgres_image, data)
    try:
        comparison = migrate(engine, s, Source(rollback, s.postgres_image, s.db_superuser, s.db_name, record),
                             target_image, record, progress)
    except BaseException:
        progress.say(f"upgrade failed: restoring {data} from {rollback}")
        engine.empty_volume(s.postgres_image, data)
        engine.copy_volume(s.postgres_image, rollback, data)
        engine.remove_volume(rollback)
        raise
    print(comparison.table())
    print(f"upgraded in {time.monotonic() - started:.1f} s; the stack is stopped. Next: set "
          f"postgresImage: {target_image} and postgresDataMajor: {new_major} in Pulumi.{s.stack}.yaml, then "
          f"`pulumi up` (or export and `docker compose up -d`). Rollback: docs/operations.md ({rollback}).")
    return 0


def _backup_container(s: StackSettings, engine: Engine) -> Container:
    c = engine.container(s.backup.container_name)
    if c is None or c.status != "running":
        raise OpsError(f"{s.backup.container_name} is not running: start the stack first (`pulumi up` or "
                       "`docker compose up -d`)")
    return c


def backup(args: argparse.Namespace, s: StackSettings, engine: Engine) -> int:
    c = _backup_container(s, engine)
    progress = Progress(1)
    with progress.step(f"pg_dump of {s.db_name}, checked, then kept as a backup"):
        # The ID is on stdout; log lines (a pruned backup, say) go to stderr and may arrive after it.
        code, out = engine.sh(c, f"sh {BACKUP_SCRIPT} now", user="", check=False, stdout_only=True)
        if code != 0:
            raise OpsError(f"backup failed, nothing kept: {out.strip().splitlines()[-1] if out.strip() else code}")
    print(out.strip().splitlines()[-1])
    return 0


def backups(args: argparse.Namespace, s: StackSettings, engine: Engine) -> int:
    c = _backup_container(s, engine)
    _, out = engine.sh(c, f"sh {BACKUP_SCRIPT} list", user="")
    rows = [line.split("\t") for line in out.splitlines() if line and not line.startswith("#")]
    status = dict(line[2:].split("=", 1) for line in out.splitlines() if line.startswith("# ") and "=" in line)
    print(f"{'ID':<40} {'bytes':>12}  taken (UTC)")
    for row in rows:
        print(f"{row[0]:<40} {row[1]:>12}  {row[2]}")
    print(f"last good backup: {status.get('last_good') or 'none yet'}; last attempt: "
          f"{status.get('last_attempt') or 'none'} ({status.get('last_result') or '-'})")
    return 0


def restore(args: argparse.Namespace, s: StackSettings, engine: Engine) -> int:
    if not _BACKUP_ID.fullmatch(args.id) or not args.id.startswith(f"{s.db_name}-"):
        raise OpsError(f"backup ID {args.id!r}: expected {s.db_name}-YYYYmmddTHHMMSSZ (see `backups`)")
    c = _backup_container(s, engine)
    _, out = engine.sh(c, f"sh {BACKUP_SCRIPT} list", user="")
    if args.id not in {line.split("\t")[0] for line in out.splitlines()}:
        raise OpsError(f"no backup {args.id} in stack {s.stack} (see `backups`)")
    progress = Progress(1)
    with progress.step(f"restore {args.id} into {s.db_name} (one transaction)"):
        code, out = engine.sh(c, f"sh {BACKUP_SCRIPT} restore {args.id}", user="", check=False)
        if code != 0:
            raise OpsError(f"restore failed, the database is unchanged: "
                           f"{out.strip().splitlines()[-1] if out.strip() else code}")
    print(f"restored {args.id}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m components.ops", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("adopt", help="fill a new stack's empty data volume from the legacy Postgres volume")
    p.add_argument("--stack", required=True)
    p.add_argument("--from-volume", required=True, help="the legacy compose project's postgres_data volume")
    p.add_argument("--password-file", required=True, type=Path, help="file holding the legacy superuser password")
    p.add_argument("--database", default="stock_analysis", help="legacy database (default: stock_analysis)")
    p.add_argument("--user", default="postgres", help="legacy superuser (default: postgres)")
    p.add_argument("--from-image", default=None, help="image of the legacy major (default: postgres:<major>)")
    p = sub.add_parser("backup", help="take a backup now (checked, kept with the scheduled ones)")
    p.add_argument("--stack", required=True)
    p = sub.add_parser("backups", help="list backups, newest first, and when the last good one was taken")
    p.add_argument("--stack", required=True)
    p = sub.add_parser("restore", help="replace the database's contents with a backup, in one transaction")
    p.add_argument("--stack", required=True)
    p.add_argument("id", help="a backup ID from `backups`")
    p = sub.add_parser("upgrade", help="move the stack's data to a later PostgreSQL major (downtime; keeps "
                                       "the old data as the rollback)")
    p.add_argument("--stack", required=True)
    p.add_argument("--to-image", required=True, help="the new postgres image, e.g. postgres:17.6-trixie")
    p = sub.add_parser("doctor", help="check the engine, disk, images, containers, ports, networks and the "
                                      "database login; one line per check with the fix; exit 1 on a failure")
    p.add_argument("--stack", required=True)
    p.add_argument("--min-free-gb", type=float, default=MIN_FREE_GB,
                   help=f"fail below this much free disk on the engine (default {MIN_FREE_GB:g})")
    for p in sub.choices.values():
        p.add_argument("--project", type=Path, default=PROJECT_DIR,
                       help="directory holding Pulumi.STACK.yaml (default: this checkout)")
    args = parser.parse_args(argv)
    try:
        s = settings_from_file(args.stack, args.project)
        if s.target != "single":
            # Its commands find containers by the single-host names on one engine; a swarm's tasks live on
            # the nodes Swarm chose (docs/swarm.md says how to back up and restore there).
            raise OpsError(f"stack {args.stack} targets a Swarm cluster ({PROJECT}:target: {s.target}); this "
                           "tool works on single-host stacks; see docs/swarm.md (operations)")
        if args.command == "doctor":
            text, code = report(Doctor(s, min_free_gb=args.min_free_gb,
                                       warn_free_gb=max(WARN_FREE_GB, args.min_free_gb),
                                       project_dir=args.project).run())
            print(text)
            return code
        engine = Engine()
        command = {"adopt": adopt, "backup": backup, "backups": backups, "restore": restore,
                   "upgrade": upgrade}[args.command]
        return command(args, s, engine)
    except (ConfigError, OpsError) as err:
        print(f"error: {str(err).splitlines()[0]}", file=sys.stderr)
        rest = str(err).splitlines()[1:]
        if rest:
            print("\n".join(rest), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
