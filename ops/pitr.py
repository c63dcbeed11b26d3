"""Point-in-time recovery from the operations CLI (docs/recovery.md): a base backup now, a drill now, the
PITR lines of `backups`, and restores to a time, to the end of the archived WAL or to a named base backup:
into the live stack (a proven safety copy first, put back on any failure) or into a scratch server for a
look first. pgBackRest does the work; this module orders the steps and checks each."""

from __future__ import annotations

import io
import re
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import docker.errors
from docker.models.containers import Container

from model import pitr as pitr_model
from model.settings import (
    DB_ALIAS,
    PGDATA,
    POSTGRES_UID,
    VOL_DATA,
    VOL_PITR_REPO,
    VOL_PITR_WALSTREAM,
    StackSettings,
    pitr_files,
    receiver_env,
)
from ops.engine import Engine, OpsError, Progress

PITR_SCRIPT = f"{pitr_model.PITR_TARGET}/pitr.sh"
# What pgBackRest's --target takes for --type=time: a timestamp with an explicit offset (never the server's
# local time zone guessed).
_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[ T][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?"
                   r"(?:Z|[+-][0-9]{2}(?::?[0-9]{2})?)")
_LABEL = re.compile(r"[0-9]{8}-[0-9]{6}F(?:_[0-9]{8}-[0-9]{6}[DI])?")
SAFETY_LABEL = "stock-analyzer.pitr-safety-copy-of"
NO_RESTART = {"Name": "no", "MaximumRetryCount": 0}
RECOVERY_TIMEOUT_S = 1800  # replaying a long stretch of WAL takes what it takes, within reason


@dataclass(frozen=True)
class Target:
    options: tuple[str, ...]  # pgBackRest restore options
    text: str  # for people
    epoch: float | None = None  # a time target, as a Unix time

    def refuse_future(self, now: float) -> None:
        if self.epoch is not None and self.epoch > now:
            raise OpsError(f"restore to {self.text}: that is in the future (now is "
                           f"{time.strftime('%Y-%m-%d %H:%M:%S+00', time.gmtime(now))}); nothing changed")


def target_of(to_time: str | None, to_latest: bool, backup_set: str | None, repo: int | None) -> Target:
    chosen = [x for x in (to_time, to_latest, backup_set) if x]
    if len(chosen) != 1:
        raise OpsError("restore: give one of ID (a logical backup), --to-time, --to-latest or --set")
    repo_opt = (f"--repo={repo}",) if repo else ()
    where = f" from repo{repo}" if repo else ""
    if to_time:
        if not _TIME.fullmatch(to_time):
            raise OpsError(f"--to-time {to_time!r}: a time with its offset, e.g. '2026-12-01 10:32:05+00'")
        try:
            epoch = datetime.fromisoformat(to_time).timestamp()
        except ValueError:
            raise OpsError(f"--to-time {to_time!r}: not a valid date and time") from None
        return Target(("--type=time", f"--target={to_time}", "--target-action=promote", *repo_opt),
                      f"the state at {to_time}{where}", epoch)
    if backup_set:
        if not _LABEL.fullmatch(backup_set):
            raise OpsError(f"--set {backup_set!r}: a base backup label such as 20261201-103000F (see `backups`)")
        return Target((f"--set={backup_set}", "--type=immediate", "--target-action=promote", *repo_opt),
                      f"base backup {backup_set}{where}")
    return Target(("--type=default", *repo_opt), f"the newest archived WAL{where}")


def require_pitr(s: StackSettings) -> pitr_model.PitrSettings:
    if s.pitr is None:
        raise OpsError(f"stack {s.stack} has no point-in-time recovery (stock-analyzer:pitr is false in "
                       f"Pulumi.{s.stack}.yaml; docs/recovery.md)")
    return s.pitr


def _runner(s: StackSettings, engine: Engine) -> Container:
    assert s.pitr_runner is not None
    c = engine.container(s.pitr_runner.container_name)
    if c is None or c.status != "running":
        raise OpsError(f"{s.pitr_runner.container_name} is not running: start the stack first")
    return c


def base_backup(s: StackSettings, engine: Engine, kind: str) -> int:
    require_pitr(s)
    progress = Progress(1)
    with progress.step(f"{kind} base backup into every repository, then a mark (row counts at a restore point)"):
        code, out = engine.sh(_runner(s, engine), f"sh {PITR_SCRIPT} backup {kind}", user="", check=False,
                              stdout_only=True)
    labels = [line for line in out.splitlines() if line.startswith("repo")]
    if code != 0:
        raise OpsError(f"base backup failed for at least one repository ({', '.join(labels) or 'none made'} "
                       "succeeded); see `docker logs` of db-pitr")
    print("\n".join(labels))
    return 0


def drill(s: StackSettings, engine: Engine, repo: int) -> int:
    p = require_pitr(s)
    if repo not in p.repos:
        raise OpsError(f"--repo {repo}: stack {s.stack} has repositories {', '.join(map(str, p.repos))}")
    progress = Progress(1)
    with progress.step(f"restore the newest backup of repo{repo} into a scratch server, compare every table "
                       "with its mark, remove the scratch"):
        code, _ = engine.sh(_runner(s, engine), f"sh {PITR_SCRIPT} drill {repo}", user="", check=False)
    status = status_of(s, engine)
    line = (f"drill of repo{repo} {status.get('drill.label', '?')}: {status.get('drill.result', '?')} in "
            f"{status.get('drill.seconds', '?')} s ({status.get('drill.detail', '')})")
    if code != 0:
        raise OpsError(line)
    print(line)
    return 0


def status_of(s: StackSettings, engine: Engine) -> dict[str, str]:
    _, out = engine.sh(_runner(s, engine), f"sh {PITR_SCRIPT} status", user="", check=False, stdout_only=True)
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def _when(epoch: str | None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(epoch))) if epoch and epoch.isdigit() else "never"


def status_lines(s: StackSettings, engine: Engine) -> list[str]:
    """What `backups` adds with pitr: per repository the newest base backup, the WAL queue, the last drill."""
    p = require_pitr(s)
    st = status_of(s, engine)
    lines = []
    for repo in p.repos:
        k = f"backup-repo{repo}"
        lines.append(f"base backup repo{repo} ({'local' if repo == 1 else 'off-host, encrypted'}): "
                     f"{st.get(k + '.label') or 'none yet'} ({st.get(k + '.type', '-')}, "
                     f"{st.get(k + '.result', '-')}, {_when(st.get(k + '.time'))})")
    lines.append(f"WAL archive: {st.get('archive.ready', '?')} segment(s) waiting, lag "
                 f"{st.get('archive.lag_seconds', '?')} s, last archived {_when(st.get('archive.last_archived'))}, "
                 f"{st.get('archive.failed_count', '?')} failure(s) counted (pg_stat_archiver)")
    lines.append(f"last drill: {st.get('drill.result', 'none yet')} ({st.get('drill.label', '-')}, "
                 f"{_when(st.get('drill.time'))}; {st.get('drill.detail', '')})")
    return lines


# -- restore -------------------------------------------------------------------------------------------


def _secret_files(pg: Container, s: StackSettings) -> dict[str, tuple[str, int, int]]:
    """The repository secrets as the server has them (archive API: never on a stdout or in a log)."""
    files = {}
    for m in s.postgres.secrets:
        if m.secret.name.startswith("pitr_"):
            stream, _ = pg.get_archive(m.secret.path)
            with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
                member = tar.next()
                data = tar.extractfile(member) if member is not None else None
                if data is None:
                    raise OpsError(f"{pg.name} has no {m.secret.path}")
                files[m.secret.path] = (data.read().decode(), POSTGRES_UID, 0o400)
    return files


def _files(s: StackSettings, pg: Container) -> dict[str, tuple[str, int, int]]:
    p = require_pitr(s)
    return {**{path: (text, POSTGRES_UID, 0o444) for path, text in pitr_files(p)}, **_secret_files(pg, s)}


def _pgbackrest_restore(s: StackSettings, engine: Engine, pg: Container, volume: str, target: Target,
                        delta: bool) -> None:
    p = require_pitr(s)
    env = f"PITR_REPOS={' '.join(map(str, p.repos))}"
    command = ["env", env, "sh", f"{pitr_model.PITR_TARGET}/pgbackrest.sh", "--stanza=main", f"--pg1-path={PGDATA}",
               *(["--delta"] if delta else []), *target.options, "restore"]
    engine.run(p.image, command, {volume: (PGDATA, "rw"), s.volumes[VOL_PITR_REPO]: (pitr_model.REPO_DIR, "rw")},
               user=f"{POSTGRES_UID}:{POSTGRES_UID}", files=_files(s, pg), network=s.networks["backend"])


_NOT_ON_THE_PATH = "[058]"  # pgBackRest: the backup was taken after the target timeline forked from its own


def _restore_from_a_compatible_set(s: StackSettings, engine: Engine, pg: Container, volume: str, target: Target,
                                   progress: Progress) -> None:
    """The newest base backup, or, when pgBackRest says it lies after the fork of the target's timeline (a
    restore went back to before it), the newest earlier one that does not."""
    try:
        _pgbackrest_restore(s, engine, pg, volume, target, delta=True)
        return
    except OpsError as err:
        if _NOT_ON_THE_PATH not in str(err) or any(o.startswith("--set=") for o in target.options):
            raise
        first = err
    repo = next((o.split("=", 1)[1] for o in target.options if o.startswith("--repo=")), "1")
    for label in reversed(_backup_sets(s, engine, pg, repo)[:-1]):
        progress.say(f"    the newest backup of repo{repo} was taken after the target's timeline forked; trying "
                     f"{label}")
        try:
            _pgbackrest_restore(s, engine, pg, volume, Target((*target.options, f"--set={label}"), target.text),
                                delta=True)
            return
        except OpsError as err:
            if _NOT_ON_THE_PATH not in str(err):
                raise
    raise first


def _same_cluster(s: StackSettings, engine: Engine, pg: Container) -> bool:
    """Whether the running server is the cluster the repositories hold (pgBackRest refuses to archive any
    other's WAL); True when no repository knows a cluster yet."""
    code, ident = _psql(pg, s, "SELECT system_identifier FROM pg_control_system()")
    if code != 0 or not ident.isdigit():
        raise OpsError(f"cannot read the server's system identifier ({ident or 'no answer'})")
    p = require_pitr(s)
    out = engine.run(p.image, ["env", f"PITR_REPOS={_env(p)['PITR_REPOS']}", "sh",
                               f"{pitr_model.PITR_TARGET}/pgbackrest.sh", "--stanza=main", "--output=json",
                               "--log-level-console=off", "info"],
                     {s.volumes[VOL_PITR_REPO]: (pitr_model.REPO_DIR, "ro")}, user=f"{POSTGRES_UID}:{POSTGRES_UID}",
                     files=_files(s, pg), network=s.networks["backend"])
    known = set(re.findall(r'"system-id":([0-9]+)', out))
    return not known or ident in known


def _backup_sets(s: StackSettings, engine: Engine, pg: Container, repo: str) -> list[str]:
    """Labels of a repository's base backups, oldest first."""
    p = require_pitr(s)
    out = engine.run(p.image, ["env", f"PITR_REPOS={_env(p)['PITR_REPOS']}", "sh",
                               f"{pitr_model.PITR_TARGET}/pgbackrest.sh", "--stanza=main", f"--repo={repo}",
                               "--output=json", "--log-level-console=off", "info"],
                     {s.volumes[VOL_PITR_REPO]: (pitr_model.REPO_DIR, "ro")}, user=f"{POSTGRES_UID}:{POSTGRES_UID}",
                     files=_files(s, pg), network=s.networks["backend"])
    return re.findall(r'"label":"([0-9]{8}-[0-9]{6}F(?:_[0-9]{8}-[0-9]{6}[DI])?)"', out)


def _psql(c: Container, s: StackSettings, query: str) -> tuple[int, str]:
    # Its own commits never wait for the synchronous receiver: a restore must work while it is away.
    code, out = c.exec_run(["psql", "-X", "-A", "-t", "-q", "-h", pitr_model.SOCKET_DIR, "-U", s.db_superuser,
                            "-d", s.db_name, "-c", query], user="postgres", demux=True,
                           environment={"PGOPTIONS": "-c synchronous_commit=local"})
    return int(code or 0), (out[0] or b"").decode().strip() if isinstance(out, tuple) else ""


def wait_promoted(c: Container, s: StackSettings, timeout_s: float = RECOVERY_TIMEOUT_S,
                  psql: Callable[[Container, StackSettings, str], tuple[int, str]] = _psql) -> tuple[str, int]:
    """Until recovery has reached its target and the server accepts writes; returns what was reached (the last
    replayed commit's time) and the new timeline, or raises with the server's last log lines."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        c.reload()
        if c.status != "running":
            lines = c.logs(tail=40).decode(errors="replace").strip().splitlines()
            why = [line for line in lines if re.search(r"\b(FATAL|PANIC|ERROR):", line)] or lines[-3:]
            raise OpsError(f"the server stopped during recovery: {' | '.join(why[-2:])}")
        code, out = psql(c, s, "SELECT pg_is_in_recovery()")
        if code == 0 and out == "f":
            _, out = psql(c, s, "SELECT coalesce('last commit replayed ' || pg_last_xact_replay_timestamp(), "
                                "'the end of the base backup (no later commit replayed)') || '|' "
                                "|| (SELECT timeline_id FROM pg_control_checkpoint())")
            reached, _, timeline = out.rpartition("|")
            if timeline.isdigit():
                return f"{reached}, timeline {timeline}", int(timeline)
            return out, 0
        time.sleep(0.5)
    raise OpsError(f"recovery did not finish within {timeout_s:.0f} s")


def restore_live(s: StackSettings, engine: Engine, target: Target, stop: Callable[[list[Container]], None],
                 start_again: Callable[[list[Container]], None]) -> int:
    """Safety copy (proven identical), pgBackRest restore into the data volume, recovery, provisioning; on any
    failure the safety copy goes back, proven identical, and the stack starts as it was."""
    p = require_pitr(s)
    data = s.volumes[VOL_DATA]
    target.refuse_future(time.time())
    pg = engine.container(s.postgres.container_name)
    if pg is None:
        raise OpsError(f"{s.postgres.container_name} does not exist: run `up` once first; nothing done")
    free, used = engine.space(p.image, data)
    if free < 2 * used:
        raise OpsError(f"{free / 2**20:.0f} MiB free on the engine's volume disk; a restore needs about "
                       f"{2 * used / 2**20:.0f} MiB (the safety copy and the restored data); nothing changed")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    safety = f"{data}_pre-pitr-{stamp}"
    progress = Progress((8 if pg.status == "running" else 7) + (1 if p.sync_receiver else 0))
    running = [c for c in engine.stack_containers(s.stack) if c.status == "running"]
    progress.say(f"restoring {data} to {target.text}; stopping {len(running)} container(s) (downtime starts)")
    if pg.status == "running":
        try:
            with progress.step("archive the server's newest WAL (a clean stop does not), so nothing written is "
                               "left behind"):
                if _same_cluster(s, engine, pg):
                    archive_now(pg, s)
                else:
                    progress.say("    the running server is a new cluster, not the one the repositories hold (the "
                                 "volume was lost and initialised again): nothing of it is archived; its data "
                                 "goes into the safety copy")
        except OpsError as err:
            raise OpsError(f"restore failed ({err}); nothing changed") from None
    # The server exits by itself when recovery fails: its restart policy would start it again on the volume
    # this command is about to put back. Off for the operation, restored however it ends.
    policy = engine.restart_policy(pg, NO_RESTART)
    started = time.monotonic()
    original: str | None = None
    collected = False
    try:
        with progress.step("stop the stack's containers"):
            stop(running)
        with progress.step(f"keep the current data as {safety} (the safety copy), proven identical"):
            original = engine.tree_digest(p.image, data)
            engine.create_volume(safety, {SAFETY_LABEL: data, "stock-analyzer.stack": s.stack})
            engine.copy_volume(p.image, data, safety)
            if engine.tree_digest(p.image, safety) != original:
                raise OpsError(f"the copy {safety} differs from {data}")
        with progress.step(f"pgBackRest restore of {target.text} into {data} (delta: only what differs)"):
            _restore_from_a_compatible_set(s, engine, pg, data, target, progress)
        if p.sync_receiver:
            with progress.step("add the receiver's WAL (every acknowledged commit): its completed segments into the "
                               "repositories, its partial one into pg_wal; its directory set aside for a new "
                               "stream"):
                collected = True
                progress.say("    " + _walstream(s, engine, pg, "collect", stamp))
        with progress.step("replay WAL up to the target and promote, in a recovery server that archives nothing "
                           "(until the restore is committed, the repositories see nothing of it)"):
            rec = engine.recovery_server(recovery_name(s), p.image, data, repo=_repo(s), env=_env(p),
                                         files=_files(s, pg), network=s.networks["backend"], alias=DB_ALIAS)
            reached, timeline = wait_promoted(rec, s)
        with progress.step("run the provisioning job against it (roles, grants and passwords of today's stack)"):
            _provision(s, engine)
        with progress.step("stop the recovery server cleanly"):
            _, current = _psql(rec, s, "SELECT pg_walfile_name(pg_current_wal_lsn())")
            rec.stop(timeout=60)
            engine.remove_container(recovery_name(s))
            if timeline < 2 or len(current) != 24:
                raise OpsError(f"the recovery server reports timeline {timeline}, segment {current!r}")
        # The commit: the new timeline's history file (and any segment the recovery server completed) marked for
        # archiving, which the live server does first when it starts. Before this, the repositories saw nothing.
        with progress.step(f"commit: mark timeline {timeline}'s history for archiving by the live server"):
            _mark_ready(s, engine, pg, data, timeline, current)
    except BaseException as err:
        engine.remove_container(recovery_name(s))
        engine.restart_policy(pg, policy)
        if collected:
            try:
                _walstream(s, engine, pg, "uncollect", stamp)
            except Exception as back:  # the undo below must run whatever this was
                progress.say(f"    the receiver's WAL stays in superseded-{stamp} of {s.volumes[VOL_PITR_WALSTREAM]} "
                             f"({back}); every file of it is in the repositories already, the partial segment "
                             "too (as .partial)")
        raise OpsError(_undo(s, engine, progress, pg, running, safety, original, err, start_again)) from None
    # Committed: from here on a failure is reported, never undone (the repositories follow the new timeline).
    engine.restart_policy(pg, policy)
    try:
        pg.start()
        start_again([c for c in running if c.name != pg.name])
    except docker.errors.DockerException as err:
        raise OpsError(f"restored {data} to {target.text} (reached: {reached}), but starting the stack failed "
                       f"({err}): start it with `pulumi up` or `docker compose up -d`") from None
    print(f"restored {data} to {target.text} in {time.monotonic() - started:.1f} s; reached: {reached}. "
          f"The data it replaced is volume {safety}; once satisfied, remove it with docker volume rm {safety}. "
          f"Take a base backup now: python -m ops basebackup --stack {s.stack}")
    return 0


ARCHIVE_WAIT_S = 60


def archive_now(pg: Container, s: StackSettings, timeout_s: float = ARCHIVE_WAIT_S,
                psql: Callable[[Container, StackSettings, str], tuple[int, str]] = _psql) -> None:
    """A commit (so that a time target up to now is reachable), a WAL switch, and a wait until the switched
    segment is archived: a restore replaces pg_wal, and whatever was never archived would be gone."""
    code, segment = psql(pg, s, "SELECT pg_current_xact_id()")
    if code == 0:
        code, segment = psql(pg, s, "SELECT pg_walfile_name(pg_switch_wal())")
    if code != 0 or not segment:
        raise OpsError(f"cannot switch the server's WAL ({segment or 'no answer'})")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        # Segment names of one timeline sort in WAL order; a later timeline sorts after.
        _, last = psql(pg, s, "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")
        if last[:24] >= segment:
            return
        time.sleep(0.5)
    raise OpsError(f"the server could not archive {segment} within {timeout_s:.0f} s (archive_command failing? "
                   f"see docker logs {pg.name} and `python -m ops backups`); restoring now would lose what it "
                   "holds")


def _repo(s: StackSettings) -> tuple[str, str]:
    return s.volumes[VOL_PITR_REPO], pitr_model.REPO_DIR


def recovery_name(s: StackSettings) -> str:
    return f"{s.prefix}-pitr-recovery"


def _env(p: pitr_model.PitrSettings) -> dict[str, str]:
    return {"PITR_REPOS": " ".join(map(str, p.repos))}


def _walstream(s: StackSettings, engine: Engine, pg: Container, action: str, stamp: str) -> str:
    """pitr/walstream.sh beside the restored data directory, the repositories and the receiver's volume."""
    p = require_pitr(s)
    env = [f"{k}={v}" for k, v in {**receiver_env(s.db_name, s.db_superuser), **_env(p)}.items()]
    out = engine.run(p.image, ["env", *env, "sh", f"{pitr_model.PITR_TARGET}/walstream.sh", action, stamp],
                     {s.volumes[VOL_DATA]: (PGDATA, "rw"), s.volumes[VOL_PITR_REPO]: (pitr_model.REPO_DIR, "rw"),
                      s.volumes[VOL_PITR_WALSTREAM]: (pitr_model.WALSTREAM_DIR, "rw")},
                     user=f"{POSTGRES_UID}:{POSTGRES_UID}", files=_files(s, pg), network=s.networks["backend"])
    return next((line for line in reversed(out.splitlines()) if line.startswith("collected:")), "done")


def _mark_ready(s: StackSettings, engine: Engine, pg: Container, volume: str, timeline: int, current: str) -> None:
    p = require_pitr(s)
    engine.run(p.image, ["env", f"PGDATA={PGDATA}", "sh", f"{pitr_model.PITR_TARGET}/mark-ready.sh", f"{timeline:08X}",
                         current], {volume: (PGDATA, "rw")}, user=f"{POSTGRES_UID}:{POSTGRES_UID}",
               files=_files(s, pg))


def _provision(s: StackSettings, engine: Engine) -> None:
    job = engine.container(s.provision.container_name)
    if job is None:
        raise OpsError(f"{s.provision.container_name} does not exist")
    job.start()
    code = engine.wait_exit(job)
    if code != 0:
        raise OpsError(f"the provisioning job exited with {code}: see docker logs {job.name}")


def _undo(s: StackSettings, engine: Engine, progress: Progress, pg: Container, stopped: list[Container],
          safety: str, original: str | None, err: BaseException,
          start_again: Callable[[list[Container]], None]) -> str:
    p = require_pitr(s)
    data = s.volumes[VOL_DATA]
    reason = str(err).splitlines()[0] if str(err) else type(err).__name__
    try:
        engine.restart_policy(pg, NO_RESTART)
        pg.reload()
        if pg.status in ("running", "restarting"):
            pg.stop(timeout=60)
        pg.reload()
        if pg.status not in ("exited", "created", "dead"):
            raise OpsError(f"{pg.name} did not stop ({pg.status})")
        if original is None or engine.tree_digest(p.image, data) == original:
            engine.remove_volume(safety)
            start_again(stopped)
            return f"restore failed ({reason}); {data} was not changed and the stack is started again"
        progress.say(f"restore failed ({reason}): putting the safety copy {safety} back into {data}")
        engine.empty_volume(p.image, data)
        engine.copy_volume(p.image, safety, data)
        if engine.tree_digest(p.image, data) != original:
            raise OpsError(f"the copy back into {data} differs from {safety}")
        engine.remove_volume(safety)
        start_again(stopped)
    except (OpsError, docker.errors.DockerException, OSError) as undo:
        return (f"restore failed ({reason}) and the data could not be put back ({undo}): the data as it was is "
                f"in volume {safety}; put it back with: python -m ops restore --stack {s.stack} "
                f"--from-safety-copy {safety}")
    return (f"restore failed ({reason}); {data} holds the data as it was, proven identical to before, and the stack "
            "is started again")


def put_back(s: StackSettings, engine: Engine, safety: str, stop: Callable[[list[Container]], None],
             start_again: Callable[[list[Container]], None]) -> int:
    """The recovery command of a restore whose undo failed: the safety copy into the data volume, proven."""
    p = require_pitr(s)
    data = s.volumes[VOL_DATA]
    if safety not in engine.volumes_labelled(SAFETY_LABEL, data):
        raise OpsError(f"{safety} is not a safety copy of {data} (volumes labelled {SAFETY_LABEL})")
    running = [c for c in engine.stack_containers(s.stack) if c.status == "running"]
    progress = Progress(3)
    with progress.step("stop the stack's containers"):
        stop(running)
    wanted = engine.tree_digest(p.image, safety)
    with progress.step(f"copy {safety} into {data}, proven identical"):
        engine.empty_volume(p.image, data)
        engine.copy_volume(p.image, safety, data)
        if engine.tree_digest(p.image, data) != wanted:
            raise OpsError(f"the copy in {data} differs from {safety}: run the same command again")
    with progress.step("start the stack again"):
        start_again([*running, *([c] if (c := engine.container(s.postgres.container_name)) and c not in running
                                 else [])])
    print(f"{data} holds the data of {safety} again ({safety} is kept)")
    return 0


def restore_scratch(s: StackSettings, engine: Engine, target: Target, port: int) -> int:
    """Into a server of its own on 127.0.0.1:PORT, beside the live stack, which is not touched."""
    p = require_pitr(s)
    target.refuse_future(time.time())
    pg = engine.container(s.postgres.container_name)
    if pg is None:
        raise OpsError(f"{s.postgres.container_name} does not exist: run `up` once first; nothing done")
    if pg.status == "running":
        archive_now(pg, s)
    name, volume = scratch_names(s)
    if engine.container(name) or engine.volume_exists(volume):
        raise OpsError(f"a scratch server {name} exists already: remove it first with python -m ops restore "
                       f"--stack {s.stack} --drop-scratch")
    progress = Progress(2)
    started = time.monotonic()
    engine.create_volume(volume, {"stock-analyzer.stack": s.stack, "stock-analyzer.ops": "pitr-scratch"})
    try:
        with progress.step(f"pgBackRest restore of {target.text} into {volume}"):
            _pgbackrest_restore(s, engine, pg, volume, target, delta=False)
        with progress.step(f"start {name} on 127.0.0.1:{port}; replay WAL up to the target"):
            c = engine.recovery_server(name, p.image, volume, repo=_repo(s), env=_env(p), files=_files(s, pg),
                                       port=port, network=s.networks["backend"])
            reached, _ = wait_promoted(c, s)
    except BaseException:
        drop_scratch(s, engine, quiet=True)
        raise
    print(f"scratch server {name} holds {target.text} ({time.monotonic() - started:.1f} s); reached: {reached}. "
          f"Look: docker exec -it {name} psql -h {pitr_model.SOCKET_DIR} -U {s.db_superuser} -d {s.db_name} "
          f"(or psql -h 127.0.0.1 -p {port}, with the superuser password of that time). The live stack was not "
          f"touched. Remove: python -m ops restore --stack {s.stack} --drop-scratch")
    return 0


def scratch_names(s: StackSettings) -> tuple[str, str]:
    return f"{s.prefix}-pitr-scratch", f"{s.prefix}_pitr_inspect"


def drop_scratch(s: StackSettings, engine: Engine, quiet: bool = False) -> int:
    name, volume = scratch_names(s)
    engine.remove_container(name)
    engine.remove_volume(volume)
    if not quiet:
        print(f"removed {name} and its volume {volume}")
    return 0
