"""stock-analyzer operations: adopt the legacy database, back up, list backups, restore, upgrade Postgres.

    python -m ops adopt   --stack STACK --from-volume NAME --password-file FILE [--database DB] [--user USER]
    python -m ops backup  --stack STACK
    python -m ops backups --stack STACK
    python -m ops restore --stack STACK ID [--yes]
    python -m ops restore --stack STACK --to-time TIME | --to-latest | --set LABEL [--repo N] [--scratch PORT] [--yes]
    python -m ops basebackup --stack STACK [--type full|diff|incr]
    python -m ops drill   --stack STACK [--repo N]
    python -m ops upgrade --stack STACK --to-image IMAGE | --roll-back
    python -m ops doctor  --stack STACK
    python -m ops switchover --stack STACK [--to MEMBER]     (swarm, postgresMembers: 3)

Talks to the engine in DOCKER_HOST (or the local socket). Every refusal is one `error:` line and exit 1,
with nothing changed. Runbooks: docs/operations.md.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import docker.errors
from docker.models.containers import Container

from model.settings import (
    PROJECT,
    SUPPORTED_POSTGRES_MAJORS,
    VOL_DATA,
    VOL_PROVISION_STATE,
    ConfigError,
    StackSettings,
    image_major,
    is_image_ref,
)
from model.stack_yaml import PROJECT_DIR, settings_from_file
from model.swarm import MEMBERS
from ops import pitr
from ops.cluster import ClusterOps
from ops.doctor import MIN_FREE_GB, WARN_FREE_GB, Doctor, report
from ops.engine import Engine, OpsError, Progress
from ops.migrate import SUPERUSER_RECORD, Source, data_major, generate_password, migrate, volume_labels
from ops.swarm_state import engine_client

BACKUP_SCRIPT = "/backup/backup.sh"
# Commands that hold the stack while they run (see Engine.stack_lock); the others refuse while one does.
EXCLUSIVE = ("adopt", "restore", "upgrade")
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


def image_argument(flag: str, value: str) -> tuple[str, int]:
    """A postgres image reference, whole (name, optional tag, optional @sha256 digest), and its major from the
    tag: a pinned `postgres:17.6@sha256:...` is what careful operators give."""
    if not is_image_ref(value):
        raise OpsError(f"{flag} {value!r}: not an image reference (name[:tag][@sha256:<64 hex>])")
    try:
        return value, image_major(value)
    except ValueError:
        raise OpsError(f"{flag} {value}: its tag names no PostgreSQL major (e.g. postgres:17.6 or "
                       "postgres:17.6@sha256:...)") from None


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
    source_image, source_major = image_argument("--from-image", args.from_image or f"postgres:{major}")
    if source_major != major:
        raise OpsError(f"--from-image {source_image} is not PostgreSQL {major}, the major of {legacy}")
    if not engine.has_image(source_image):
        raise OpsError(f"no image {source_image} here or in a registry: give one of PostgreSQL {major} "
                       "with --from-image")
    progress.say(f"adopting {legacy} (PostgreSQL {major}, database {args.database}) into stack {s.stack} "
                 f"(PostgreSQL {s.postgres_major}, volume {data})")
    started = time.monotonic()
    comparison = migrate(engine, s, Source(legacy, source_image, args.user, args.database, password),
                         s.postgres_image, generate_password(), progress)
    print(comparison.table())
    for line in comparison.review:
        print(f"review: {line}")
    print(f"adopted in {time.monotonic() - started:.1f} s: {len(comparison.rows)} objects identical. "
          f"{legacy} was not written. Next: `pulumi up --stack {s.stack}` or the compose export and "
          "`docker compose up -d` (docs/operations.md)")
    return 0


def upgrade(args: argparse.Namespace, s: StackSettings, engine: Engine) -> int:
    if args.roll_back:
        return roll_back(s, engine)
    if not args.to_image:
        raise OpsError("upgrade needs --to-image IMAGE (or --roll-back)")
    target_image, new_major = image_argument("--to-image", args.to_image)
    if new_major not in SUPPORTED_POSTGRES_MAJORS:
        raise OpsError(f"--to-image {target_image}: PostgreSQL {new_major} is not supported "
                       f"({SUPPORTED_POSTGRES_MAJORS.start}-{SUPPORTED_POSTGRES_MAJORS.stop - 1})")
    data = s.volumes[VOL_DATA]
    kept = _rollback_copies(s, engine)
    if kept:
        raise OpsError(_rollback_exists(s, engine, kept[-1]))
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
        raise OpsError(f"a volume {rollback} exists that no upgrade made (no rollback label): move it away first")
    record = engine.read_file(s.postgres_image, s.volumes[VOL_PROVISION_STATE], SUPERUSER_RECORD)
    if not record:
        raise OpsError("no superuser password recorded by the provisioning job: run `up` once first")
    free, used = engine.space(s.postgres_image, data)
    if free < UPGRADE_SPACE_FACTOR * used:
        raise OpsError(f"{free / 2**20:.0f} MiB free on the engine's volume disk; the upgrade needs about "
                       f"{UPGRADE_SPACE_FACTOR * used / 2**20:.0f} MiB ({UPGRADE_SPACE_FACTOR}x the {used / 2**20:.0f} "
                       "MiB of data: the rollback copy, a scratch copy, the new cluster); nothing changed")
    progress = Progress(10)
    running = [c for c in engine.stack_containers(s.stack) if c.status == "running"]
    progress.say(f"upgrading {data} from PostgreSQL {old_major} to {new_major}; stopping "
                 f"{len(running)} container(s) of stack {s.stack} (downtime starts)")
    progress.say(f"it carries database {s.db_name} (every schema, table, view, function, sequence); the stack's "
                 "roles and grants are recreated by the provisioning job on the next `up`; it refuses, and puts "
                 "everything back, if the cluster holds more (other databases, other roles, role settings)")
    started = time.monotonic()
    original: str | None = None
    try:
        with progress.step("stop the stack's containers"):
            _stop(s, running)
        with progress.step(f"keep the PostgreSQL {old_major} data as {rollback} (the rollback), proven identical"):
            original = engine.tree_digest(s.postgres_image, data)
            engine.create_volume(rollback, {**volume_labels(s), ROLLBACK_LABEL: data})
            engine.copy_volume(s.postgres_image, data, rollback)
            if engine.tree_digest(s.postgres_image, rollback) != original:
                raise OpsError(f"the copy {rollback} differs from {data}")
        with progress.step(f"empty {data} for the new major"):
            engine.empty_volume(s.postgres_image, data)
        comparison = migrate(engine, s, Source(rollback, s.postgres_image, s.db_superuser, s.db_name, record),
                             target_image, record, progress, whole_cluster=True)
    except BaseException as err:
        raise OpsError(_undo_upgrade(s, engine, progress, running, rollback, original, old_major, err)) from None
    print(comparison.table())
    print(f"upgraded in {time.monotonic() - started:.1f} s; the stack is stopped. Next: set "
          f"postgresImage: {target_image} and postgresDataMajor: {new_major} in Pulumi.{s.stack}.yaml, then "
          f"`pulumi up` (or export and `docker compose up -d`). To go back: python -m ops upgrade "
          f"--stack {s.stack} --roll-back ({rollback} holds the PostgreSQL {old_major} data).")
    return 0


# On the copy an upgrade keeps of the data volume: the volume it is a copy of.
ROLLBACK_LABEL = "stock-analyzer.rollback-of"
# Free space an upgrade needs, in multiples of the data: the rollback copy, migrate's scratch copy of it, and
# the new cluster.
UPGRADE_SPACE_FACTOR = 3


def _stop(s: StackSettings, running: list[Container]) -> None:
    """The app first (it stops writing), then the rest; each with Postgres's own grace period."""
    apps = [c for c in running if c.labels.get("stock-analyzer.service") in {a.service for a in s.apps}]
    for group in (apps, [c for c in running if c not in apps]):
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda c: c.stop(timeout=60), group))


def _start_again(s: StackSettings, stopped: list[Container]) -> None:
    """As `up` orders them: the database first, the apps last."""
    order = {s.postgres.service: 0, s.provision.service: 1, s.backup.service: 2}
    for c in sorted(stopped, key=lambda c: order.get(c.labels.get("stock-analyzer.service", ""), 3)):
        c.start()


def _undo_upgrade(s: StackSettings, engine: Engine, progress: Progress, stopped: list[Container], rollback: str,
                  original: str | None, old_major: int, err: BaseException) -> str:
    """Put the old cluster back, proven identical, and start what was stopped. Returns the one line to say."""
    data = s.volumes[VOL_DATA]
    reason = str(err).splitlines()[0] if str(err) else type(err).__name__
    back = f"python -m ops upgrade --stack {s.stack} --roll-back"
    try:
        # The data volume is emptied only after the rollback copy was proven identical, and that copy is
        # never written again: whichever of the two still matches the original digest is the good one.
        if original is None or engine.tree_digest(s.postgres_image, data) == original:
            engine.remove_volume(rollback)
            _start_again(s, stopped)
            return f"upgrade failed ({reason}); {data} was not touched and the stack is started again"
        if engine.tree_digest(s.postgres_image, rollback) != original:
            return (f"upgrade failed ({reason}), and neither {data} nor {rollback} is identical to the data before "
                    "the upgrade: remove neither; the stack stays stopped (docs/operations.md, Major upgrades)")
        progress.say(f"upgrade failed ({reason}): putting the PostgreSQL {old_major} data back into {data}")
        engine.empty_volume(s.postgres_image, data)
        engine.copy_volume(s.postgres_image, rollback, data)
        if engine.tree_digest(s.postgres_image, data) != original:
            raise OpsError(f"the copy back into {data} differs from the original")
    except BaseException as undo:
        return (f"upgrade failed ({reason}) and the data could not be put back ({undo}): the intact PostgreSQL "
                f"{old_major} data is in volume {rollback}; put it back with: {back}")
    engine.remove_volume(rollback)
    _start_again(s, stopped)
    return (f"upgrade failed ({reason}); {data} holds the PostgreSQL {old_major} data again, identical to before, "
            "and the stack is started again")


def _rollback_copies(s: StackSettings, engine: Engine) -> list[str]:
    return engine.volumes_labelled(ROLLBACK_LABEL, s.volumes[VOL_DATA])


def _rollback_exists(s: StackSettings, engine: Engine, rollback: str) -> str:
    """Never advise removing what may be the only good copy: only when the data volume holds a newer cluster."""
    data = s.volumes[VOL_DATA]
    kept = data_major(engine, s.postgres_image, rollback)
    try:
        current: int | None = data_major(engine, s.postgres_image, data)
    except OpsError:
        current = None
    back = f"python -m ops upgrade --stack {s.stack} --roll-back"
    if current is None or current <= kept:
        return (f"{rollback} holds the PostgreSQL {kept} data of an upgrade that did not finish, and {data} holds no "
                f"newer cluster: it may be your only good copy. Do not remove it; put it back with: {back}")
    return (f"{rollback} holds the PostgreSQL {kept} data kept by an earlier upgrade ({data} now holds "
            f"PostgreSQL {current}). To go back to it: {back}. Once the stack has run well on {current} and you no "
            f"longer want to go back, remove it (docker volume rm {rollback}); then upgrade again")


def roll_back(s: StackSettings, engine: Engine) -> int:
    """Put the rollback copy of the newest earlier upgrade back into the data volume, proven identical."""
    data = s.volumes[VOL_DATA]
    candidates = _rollback_copies(s, engine)
    if not candidates:
        raise OpsError(f"no rollback copy of {data} on this engine (volumes labelled stock-analyzer.rollback-of)")
    rollback = candidates[-1]
    major = data_major(engine, s.postgres_image, rollback)
    progress = Progress(3)
    running = [c for c in engine.stack_containers(s.stack) if c.status == "running"]
    with progress.step("stop the stack's containers"):
        _stop(s, running)
    wanted = engine.tree_digest(s.postgres_image, rollback)
    with progress.step(f"copy {rollback} (PostgreSQL {major}) back into {data}"):
        engine.empty_volume(s.postgres_image, data)
        engine.copy_volume(s.postgres_image, rollback, data)
    with progress.step("prove the copy identical"):
        if engine.tree_digest(s.postgres_image, data) != wanted:
            raise OpsError(f"the copy in {data} differs from {rollback}: run the same command again ({rollback} "
                           "is unchanged)")
    print(f"{data} holds the PostgreSQL {major} data of {rollback} again ({rollback} is kept). Next: set "
          f"postgresImage to a PostgreSQL {major} image and postgresDataMajor: {major} in Pulumi.{s.stack}.yaml, "
          "then `pulumi up` (or export and `docker compose up -d`)")
    return 0


def _backup_container(s: StackSettings, engine: Engine) -> Container:
    c = engine.container(s.backup.container_name)
    if c is None or c.status != "running":
        raise OpsError(f"{s.backup.container_name} is not running: start the stack first (`pulumi up` or "
                       "`docker compose up -d`)")
    return c


class BackupScript(Protocol):
    """backup/backup.sh ARGS where the stack runs it; (exit code, stdout, or stdout and stderr on a failure).
    As the superuser for a restore, whose password reaches that one run only."""

    def __call__(self, args: str, superuser: bool = False) -> tuple[int, str]: ...


def host_backup_script(s: StackSettings, engine: Engine) -> BackupScript:
    """In the running db-backup container of a single-host stack."""
    def run(args: str, superuser: bool = False) -> tuple[int, str]:
        env = None
        if superuser:
            # Read from the provisioning job's record (archive API), handed to this one exec (not in `docker
            # inspect`, not in the backup container's files).
            password = engine.read_file(s.postgres_image, s.volumes[VOL_PROVISION_STATE], SUPERUSER_RECORD)
            if not password:
                raise OpsError("no superuser password recorded by the provisioning job: run `up` once first; "
                               "nothing restored")
            env = {"PGUSER": s.db_superuser, "PGPASSWORD": password}
        return engine.sh(_backup_container(s, engine), f"sh {BACKUP_SCRIPT} {args}", env=env, user="",
                         check=False, stdout_only=True)
    return run


def backup(s: StackSettings, script: BackupScript) -> int:
    progress = Progress(1)
    with progress.step(f"pg_dump of {s.db_name}, read back in full, checksummed, then kept as a backup"):
        # The ID is on stdout; log lines (a pruned backup, say) go to stderr and may arrive after it.
        code, out = script("now on-demand")
        if code != 0:
            raise OpsError(f"backup failed, nothing kept: {_last_line(out, code)}")
    print(out.strip().splitlines()[-1])
    return 0


@dataclass(frozen=True)
class BackupEntry:
    id: str
    bytes: int
    taken: str  # UTC, ISO 8601
    kind: str  # scheduled, on-demand or pre-restore
    checksum: bool  # a SHA-256 was recorded when it was taken


def _listing(script: BackupScript) -> tuple[list[BackupEntry], dict[str, str]]:
    code, out = script("list")
    if code != 0:
        raise OpsError(f"cannot list the backups: {_last_line(out, code)}")
    entries = []
    for line in out.splitlines():
        if line and not line.startswith("#"):
            fields = line.split("\t")
            entries.append(BackupEntry(fields[0], int(fields[1]), fields[2],
                                       fields[3] if len(fields) > 3 else "scheduled",
                                       len(fields) > 4 and fields[4] == "sha256"))
    status = dict(line[2:].split("=", 1) for line in out.splitlines() if line.startswith("# ") and "=" in line)
    return entries, status


def backups(s: StackSettings, script: BackupScript, engine: Engine | None = None) -> int:
    entries, status = _listing(script)
    print(f"{'ID':<40} {'bytes':>12}  {'taken (UTC)':<20}  {'kind':<11}  checksum")
    for e in entries:
        print(f"{e.id:<40} {e.bytes:>12}  {e.taken:<20}  {e.kind:<11}  {'sha256' if e.checksum else 'none'}")
    print(f"last good backup: {status.get('last_good') or 'none yet'}; last attempt: "
          f"{status.get('last_attempt') or 'none'} ({status.get('last_result') or '-'})")
    if status.get("last_result") == "failed":
        print(f"last failure: {status.get('last_detail', '')}")
    if s.pitr and engine is not None:
        print("\n".join(pitr.status_lines(s, engine)))
    return 0


def _live_rows(s: StackSettings, script: BackupScript) -> dict[str, int]:
    code, out = script("rows")
    if code != 0:
        raise OpsError(f"cannot count the rows of {s.db_name}, nothing restored: {_last_line(out, code)}")
    return {table: int(n) for table, n in (line.split("\t") for line in out.splitlines() if "\t" in line)}


def _confirm(s: StackSettings, args: argparse.Namespace, what: str) -> None:
    """A stack that protects its data asks a person, and refuses a script that did not say --yes."""
    if not s.protect_data or args.yes:
        return
    if not sys.stdin.isatty():
        raise OpsError(f"stack {s.stack} protects its data: {what}; run again with --yes to confirm")
    print(f"{what}.\nType the stack name ({s.stack}) to go on: ", end="", file=sys.stderr, flush=True)
    if sys.stdin.readline().strip() != s.stack:
        raise OpsError("not confirmed; nothing restored")


def host_backup(args: argparse.Namespace, s: StackSettings, engine: Engine) -> int:
    return backup(s, host_backup_script(s, engine))


def host_backups(args: argparse.Namespace, s: StackSettings, engine: Engine) -> int:
    return backups(s, host_backup_script(s, engine), engine)


def restore(args: argparse.Namespace, s: StackSettings, engine: Engine) -> int:
    if args.drop_scratch:
        pitr.require_pitr(s)
        return pitr.drop_scratch(s, engine)
    if args.from_safety_copy:
        _confirm(s, args, f"put the safety copy {args.from_safety_copy} back into {s.volume_name}")
        return pitr.put_back(s, engine, args.from_safety_copy, lambda c: _stop(s, c), lambda c: _start_again(s, c))
    if args.id is None:
        pitr.require_pitr(s)
        target = pitr.target_of(args.to_time, args.to_latest, args.set, args.repo)
        if args.scratch:
            return pitr.restore_scratch(s, engine, target, args.scratch)
        _confirm(s, args, f"restore replaces the whole database cluster with {target.text}")
        return pitr.restore_live(s, engine, target, lambda c: _stop(s, c), lambda c: _start_again(s, c))
    return restore_logical(args, s, host_backup_script(s, engine))


def restore_logical(args: argparse.Namespace, s: StackSettings, script: BackupScript) -> int:
    """A logical backup back into the live database: verified, a safety copy taken, one transaction."""
    if args.id is None or args.to_time or args.to_latest or args.set or args.scratch or args.from_safety_copy:
        raise OpsError("restore: give a logical backup ID or one of --to-time, --to-latest, --set, not both"
                       if args.id is not None else "restore: give a logical backup ID (see `backups`)")
    if not _BACKUP_ID.fullmatch(args.id) or not args.id.startswith(f"{s.db_name}-"):
        raise OpsError(f"backup ID {args.id!r}: expected {s.db_name}-YYYYmmddTHHMMSSZ (see `backups`)")
    entry = next((e for e in _listing(script)[0] if e.id == args.id), None)
    if entry is None:
        raise OpsError(f"no backup {args.id} in stack {s.stack} (see `backups`)")
    rows = _live_rows(s, script)
    what = (f"restore replaces {sum(rows.values())} rows in {len(rows)} tables of {s.db_name} with backup "
            f"{entry.id} ({entry.kind}, taken {entry.taken})")
    _confirm(s, args, what)
    progress = Progress(1)
    progress.say(what)
    with progress.step(f"verify {entry.id} (size, SHA-256, full read-back), take a safety copy of {s.db_name}, "
                       "restore in one transaction"):
        code, out = script(f"restore {entry.id}", superuser=True)
        if code != 0:
            raise OpsError(f"restore failed, the database is unchanged: {_last_line(out, code)}")
    safety = out.strip().splitlines()[-1]
    print(f"restored {entry.id} (taken {entry.taken}). The contents it replaced are backup {safety}; to go back: "
          f"python -m ops restore --stack {s.stack} {safety} --yes")
    return 0


def base_backup(args: argparse.Namespace, s: StackSettings, engine: Engine) -> int:
    return pitr.base_backup(s, engine, args.type)


def drill(args: argparse.Namespace, s: StackSettings, engine: Engine) -> int:
    return pitr.drill(s, engine, args.repo)


def _last_line(out: str, code: int) -> str:
    lines = [line for line in out.strip().splitlines() if line.strip()]
    if not lines:
        return f"exit code {code}"
    return lines[-1].split(" backup: ", 1)[-1].removeprefix("error: ")


CLUSTER_COMMANDS = ("switchover", "doctor", "backup", "backups", "restore")


def cluster_command(args: argparse.Namespace, s: StackSettings) -> int:
    """The replicated swarm database's commands, through the manager (DOCKER_HOST)."""
    cluster = ClusterOps(s, engine_client(None))
    if args.command == "switchover":
        print(cluster.switchover(args.to))
        return 0
    if args.command == "doctor":
        text, code = report(cluster.doctor())
        print(text)
        return code
    script = cluster.backup_script
    if args.command == "backup":
        return backup(s, script)
    if args.command == "backups":
        return backups(s, script)
    return restore_logical(args, s, script)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops", description=__doc__.splitlines()[0])
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
    p = sub.add_parser("restore", help="replace the database's contents with a backup: verified first, a safety "
                                       "copy taken, one transaction that changes nothing on any failure")
    p.add_argument("--stack", required=True)
    p.add_argument("id", nargs="?", help="a logical backup ID from `backups`")
    p.add_argument("--to-time", help="pitr: the state at this time, with its offset, e.g. '2026-12-01 10:32:05+00'")
    p.add_argument("--to-latest", action="store_true", help="pitr: everything archived (the end of the WAL)")
    p.add_argument("--set", help="pitr: a base backup, by its label (see `backups`), as it was when it ended")
    p.add_argument("--repo", type=int, choices=(1, 2), help="pitr: 1 (local) or 2 (off-host); default: the newest")
    p.add_argument("--scratch", type=int, metavar="PORT",
                   help="pitr: into a scratch server on 127.0.0.1:PORT; the live stack is not touched")
    p.add_argument("--drop-scratch", action="store_true", help="pitr: remove the scratch server and its volume")
    p.add_argument("--from-safety-copy", metavar="VOLUME",
                   help="pitr: put a restore's safety copy back into the data volume (when its undo failed)")
    p.add_argument("--yes", action="store_true", help="confirm without a terminal (needed where protectData is true)")
    p = sub.add_parser("basebackup", help="pitr: a base backup now, into every repository")
    p.add_argument("--stack", required=True)
    p.add_argument("--type", default="full", choices=("full", "diff", "incr"))
    p = sub.add_parser("drill", help="pitr: a restore drill now (scratch server, rows and checksums against the "
                                     "mark); exit 1 when it fails")
    p.add_argument("--stack", required=True)
    p.add_argument("--repo", type=int, default=1, choices=(1, 2))
    p = sub.add_parser("upgrade", help="move the stack's data to a later PostgreSQL major (downtime; keeps "
                                       "the old data as the rollback)")
    p.add_argument("--stack", required=True)
    p.add_argument("--to-image", help="the new postgres image, e.g. postgres:17.6-trixie")
    p.add_argument("--roll-back", action="store_true", help="put the PostgreSQL data an earlier upgrade kept "
                                                            "back into the data volume")
    p = sub.add_parser("switchover", help="swarm, postgresMembers 3: move the leader (planned, for maintenance), "
                                          "wait until every member streams from the new one")
    p.add_argument("--stack", required=True)
    p.add_argument("--to", type=int, choices=MEMBERS, help="the member to lead (default: the synchronous standby)")
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
        if s.swarm is not None and s.swarm.members == 3 and args.command in CLUSTER_COMMANDS:
            return cluster_command(args, s)
        if args.command == "switchover":
            raise OpsError(f"stack {args.stack} has one database server: a switchover needs a replicated swarm "
                           f"database ({PROJECT}:postgresMembers: 3)")
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
        command = {"adopt": adopt, "restore": restore, "upgrade": upgrade, "basebackup": base_backup,
                   "drill": drill,
                   "backup": host_backup, "backups": host_backups}[args.command]
        if args.command in EXCLUSIVE:
            # Nothing else may start a server on a volume this command is emptying or filling.
            with engine.stack_lock(s.ops_lock, s.stack, args.command, s.postgres_image):
                return command(args, s, engine)
        holder = engine.lock_holder(s.ops_lock)
        if holder:
            raise OpsError(holder)
        return command(args, s, engine)
    except docker.errors.DockerException as err:
        # What the engine refused that no check above foresaw: still one line, never a traceback.
        print(f"error: the Docker engine refused: {str(err).splitlines()[0] if str(err) else type(err).__name__}",
              file=sys.stderr)
        return 1
    except (ConfigError, OpsError) as err:
        print(f"error: {str(err).splitlines()[0]}", file=sys.stderr)
        rest = str(err).splitlines()[1:]
        if rest:
            print("\n".join(rest), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
