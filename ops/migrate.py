"""Copy a database from one data directory (any major from 13) into the stack's data volume at the stack's
major, by dump and restore, and prove the copy: `adopt` (from the legacy volume) and `upgrade` (from the
stack's own data, kept aside for rollback) are this one pipeline.

The source volume is never written: it is mounted read-only and copied into a scratch volume, where a
server of the source's major runs. The target is initialised by the stack's own image (its entrypoint),
filled with `pg_dump | pg_restore`, compared object by object (ops/sql/inventory.sql), and
given a superuser password that the provisioning job finds in its state volume and moves to the stack's
configured one on the first `up`.
"""

from __future__ import annotations

import secrets
import string
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from docker.models.containers import Container

from model.settings import (
    PGDATA,
    POSTGRES_PORT,
    POSTGRES_UID,
    VOL_DATA,
    VOL_PROVISION_STATE,
    StackSettings,
    image_major,
)
from ops.engine import Engine, OpsError, Progress

INVENTORY_SQL = (Path(__file__).resolve().parent / "sql" / "inventory.sql").read_text(encoding="utf-8")
CARRY_SQL = (Path(__file__).resolve().parent / "sql" / "carry.sql").read_text(encoding="utf-8")
REVIEW_SQL = (Path(__file__).resolve().parent / "sql" / "review.sql").read_text(encoding="utf-8")
# The provisioning job's record of the superuser password the server has (provision/provision.sh, su_known).
SUPERUSER_RECORD = "postgres_password"
_ALPHABET = string.ascii_letters + string.digits


@dataclass(frozen=True)
class Source:
    volume: str  # a data directory at the volume's root (the official image's PGDATA)
    image: str  # a server of the data's major
    user: str
    database: str
    password: str


@dataclass(frozen=True)
class Comparison:
    rows: list[tuple[str, str, str, str]]  # kind, name, source value, target value
    review: tuple[str, ...] = ()  # what runs with the superuser's rights, one line each (review.sql)

    @property
    def mismatches(self) -> list[tuple[str, str, str, str]]:
        return [r for r in self.rows if r[2] != r[3]]

    def table(self) -> str:
        width = max((len(f"{k} {n}") for k, n, _, _ in self.rows), default=10)
        lines = [f"{'object':<{width}}  {'source':<44}  {'copy':<44}  ok"]
        for kind, name, src, dst in self.rows:
            lines.append(f"{kind + ' ' + name:<{width}}  {src:<44}  {dst:<44}  {'yes' if src == dst else 'NO'}")
        return "\n".join(lines)


def data_major(engine: Engine, image: str, volume: str) -> int:
    text = engine.read_file(image, volume, "PG_VERSION")
    if text is None or not text.strip().isdigit():
        raise OpsError(f"volume {volume} holds no PostgreSQL data directory at its root (no PG_VERSION)")
    return int(text.strip())


def generate_password(length: int = 32) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def scratch_names(s: StackSettings) -> dict[str, str]:
    return {"network": f"{s.prefix}_ops", "snapshot": f"{s.prefix}_ops_source",
            "source": f"{s.prefix}-ops-source", "target": f"{s.prefix}-ops-target"}


def volume_labels(s: StackSettings) -> dict[str, str]:
    """As the program labels its volumes (components/database.py), so `up` adopts them unchanged."""
    return {"stock-analyzer.environment": s.environment, "stock-analyzer.stack": s.stack}


def migrate(engine: Engine, s: StackSettings, source: Source, target_image: str, superuser_password: str,
            progress: Progress, whole_cluster: bool = False) -> Comparison:
    """Fill the stack's (empty) data volume from `source`; returns the comparison. On any failure the
    scratch containers, network and volume are removed and the target data volume is emptied again.
    `whole_cluster`: the source is the stack's own cluster (upgrade), so anything in it beyond the stack's
    database and managed roles would be lost: refuse it."""
    names = scratch_names(s)
    data_volume = s.volumes[VOL_DATA]
    target_filled = False
    try:
        with progress.step(f"copy {source.volume} to a scratch volume (the source stays read-only)"):
            engine.remove_volume(names["snapshot"])
            engine.create_volume(names["snapshot"], {"stock-analyzer.ops": "scratch"})
            engine.copy_volume(source.image, source.volume, names["snapshot"])
            # A server that was killed leaves its pid file: the copy is ours to start.
            engine.run(source.image, ["rm", "-f", "/v/postmaster.pid"], {names["snapshot"]: ("/v", "rw")},
                       caps=("DAC_OVERRIDE",))
        engine.network(names["network"])
        with progress.step(f"start PostgreSQL {image_major_or(source.image)} on the copy"):
            src = engine.start(names["source"], source.image, user=f"{POSTGRES_UID}:{POSTGRES_UID}",
                               env={"PGDATA": PGDATA}, mounts={names["snapshot"]: (PGDATA, "rw")},
                               network=names["network"], aliases=["source"], command=["postgres"],
                               files={"/run/ops/carry.sql": (CARRY_SQL, POSTGRES_UID, 0o444)})
            engine.wait_ready(src)
        with progress.step("log in to the source with the given password"
                           + ("; check that it holds nothing the copy would leave behind" if whole_cluster else "")):
            # Over the network (its own alias), not 127.0.0.1: the official image trusts loopback logins.
            code, out = engine.sh(src, 'psql -X -q -h source -U "$U" -d "$D" -c "SELECT 1"',
                                  {"PGPASSWORD": source.password, "U": source.user, "D": source.database}, check=False)
            if code != 0:
                reason = "wrong password" if "password authentication failed" in out else out.strip().splitlines()[-1]
                raise OpsError(f"the source refused user {source.user!r} on database {source.database!r}: {reason}")
            if whole_cluster:
                _refuse_what_would_stay_behind(engine, src, source)
        target_filled = True
        with progress.step(f"initialise a PostgreSQL {image_major(target_image)} data directory in {data_volume}"):
            if not engine.volume_exists(data_volume):
                engine.create_volume(data_volume, volume_labels(s))
            tgt = engine.start(
                names["target"], target_image, user=f"{POSTGRES_UID}:{POSTGRES_UID}",
                env={"PGDATA": PGDATA, "POSTGRES_USER": s.db_superuser, "POSTGRES_DB": s.db_name,
                     "POSTGRES_PASSWORD_FILE": "/run/ops/superuser"},
                mounts={data_volume: (PGDATA, "rw")}, network=names["network"], aliases=["target"],
                files={"/run/ops/superuser": (superuser_password, POSTGRES_UID, 0o400),
                       "/run/ops/inventory.sql": (INVENTORY_SQL, POSTGRES_UID, 0o444),
                       "/run/ops/review.sql": (REVIEW_SQL, POSTGRES_UID, 0o444)},
                # Load settings for this one run (the stack starts it with its own): no WAL for data that
                # is COPYed into tables created in the same transaction (wal_level=minimal, one
                # transaction), the relation files fsynced at commit; more memory for index builds.
                command=["postgres", "-c", "wal_level=minimal", "-c", "max_wal_senders=0",
                         "-c", "maintenance_work_mem=256MB", "-c", "max_wal_size=2GB"])
            engine.wait_ready(tgt)
        # The source's inventory is computed while the copy runs (the source does not change: it is the
        # scratch copy, and nothing else connects to it).
        with ThreadPoolExecutor(max_workers=1) as pool:
            src_future = pool.submit(_inventory, engine, tgt, "source", source.user, source.database,
                                     source.password)
            with progress.step(f"copy database {source.database} (pg_dump | pg_restore, PostgreSQL "
                               f"{image_major(target_image)} tools; the source's checksums alongside)"):
                # Objects end up owned by the stack's superuser (--no-owner) and without the legacy grants
                # (--no-acl): the provisioning job grants the app's group what it needs.
                engine.sh(tgt, 'pg_dump -h source -p 5432 -U "$U" -d "$D" -Fc -Z0 '
                               '| pg_restore -h /var/run/postgresql -U "$SU" -d "$DB" --no-owner --no-acl '
                               '--exit-on-error --single-transaction',
                          {"PGPASSWORD": source.password, "U": source.user, "D": source.database,
                           "SU": s.db_superuser, "DB": s.db_name})
            with progress.step("compare every table (rows, checksum), sequence, view, function, index"):
                dst_inv = _inventory(engine, tgt, "/var/run/postgresql", s.db_superuser, s.db_name, None)
                src_inv = src_future.result()
        keys = sorted(set(src_inv) | set(dst_inv))
        review = _sql_file(engine, tgt, "/var/run/postgresql", s.db_superuser, s.db_name, None, "review.sql")
        comparison = Comparison([(k[0], k[1], src_inv.get(k, "missing"), dst_inv.get(k, "missing")) for k in keys],
                                tuple(review))
        if comparison.mismatches:
            raise OpsError(f"the copy differs from the source in {len(comparison.mismatches)} object(s):\n"
                           + comparison.table())
        with progress.step("record the superuser password for the provisioning job; stop cleanly"):
            engine.stop(tgt)
            state = s.volumes[VOL_PROVISION_STATE]
            if not engine.volume_exists(state):
                engine.create_volume(state, volume_labels(s))
            engine.put_file(target_image, state, SUPERUSER_RECORD, superuser_password, 0, 0o600)
        target_filled = False
        return comparison
    finally:
        for name in (names["target"], names["source"]):
            engine.remove_container(name)
        engine.remove_network(names["network"])
        engine.remove_volume(names["snapshot"])
        if target_filled and engine.volume_exists(data_volume):
            engine.empty_volume(target_image, data_volume)


def _refuse_what_would_stay_behind(engine: Engine, src: Container, source: Source) -> None:
    extra = _sql_file(engine, src, "source", source.user, source.database, source.password, "carry.sql")
    if extra:
        raise OpsError(f"the cluster holds what the upgrade would not carry (it copies database {source.database} "
                       f"and the stack's own roles): {'; '.join(extra)}. Move or drop them first "
                       "(docs/operations.md, Major upgrades)")


def image_major_or(image: str) -> str:
    try:
        return str(image_major(image))
    except ValueError:
        return image


def _inventory(engine: Engine, container: Container, host: str, user: str, db: str,
               password: str | None) -> dict[tuple[str, str], str]:
    result = {}
    for line in _sql_file(engine, container, host, user, db, password, "inventory.sql"):
        parts = line.split("|", 2)
        if len(parts) == 3:
            result[(parts[0], parts[1])] = parts[2]
    return result


def _sql_file(engine: Engine, container: Container, host: str, user: str, db: str, password: str | None,
              name: str) -> list[str]:
    """The non-empty result lines of one of ops/sql/ (uploaded to /run/ops/), fields separated by `|`; the
    file may use the variables db and su (the database and the user it runs as)."""
    env = {"H": host, "U": user, "D": db, **({"PGPASSWORD": password} if password else {})}
    _, out = engine.sh(container,
                       'psql -X -q -A -t -F "|" -v ON_ERROR_STOP=1 -h "$H" -p ' + str(POSTGRES_PORT)
                       + f' -U "$U" -d "$D" -v db="$D" -v su="$U" -f /run/ops/{name}', env)
    return [line for line in out.splitlines() if line.strip()]
