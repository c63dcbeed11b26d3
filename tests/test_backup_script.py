"""backup/backup.sh without a database: retention tiers, health and the listing, run by the host's POSIX sh
on files laid out as the script lays them out. The expected sets are worked out by hand from the rules
(docs/operations.md), not taken from the script."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "backup" / "backup.sh"
DB = "stock_analysis"

pytestmark = pytest.mark.skipif(not all(shutil.which(t) for t in ("sh", "flock", "date", "sha256sum")),
                                reason="needs sh, flock, GNU date and sha256sum")


def run(backup_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {"PATH": os.environ["PATH"], "BACKUP_DIR": str(backup_dir), "PGDATABASE": DB, **env}
    return subprocess.run(["sh", str(SCRIPT), *args], env=full_env, capture_output=True, text=True, timeout=60,
                          check=False)


def lay_out(backup_dir: Path, backups: dict[str, str]) -> None:
    """timestamp (YYYYmmddTHHMMSSZ) -> kind; a dump and its record each."""
    for ts, kind in backups.items():
        (backup_dir / f"{DB}-{ts}.dump").write_bytes(b"PGDMP")
        (backup_dir / f"{DB}-{ts}.meta").write_text(f"id={DB}-{ts}\nkind={kind}\n")


def kept(backup_dir: Path) -> set[str]:
    return {p.name.removeprefix(f"{DB}-").removesuffix(".dump") for p in backup_dir.glob("*.dump")}


TIERS = {"BACKUP_KEEP": "3", "BACKUP_KEEP_DAILY": "3", "BACKUP_KEEP_WEEKLY": "2", "BACKUP_KEEP_MONTHLY": "2"}


def test_retention_keeps_each_tier_and_a_burst_does_not_empty_the_older_days(tmp_path: Path) -> None:
    # 2026-12-01 is a Tuesday (ISO week 49); 11-30 Monday (49); 11-29 Sunday and 11-28 Saturday (48);
    # 11-20 Friday (47).
    burst = {f"20261201T{h:02d}0000Z": "on-demand" for h in (10, 9, 8, 7, 6)}
    older = {"20261130T050000Z": "scheduled", "20261129T050000Z": "scheduled", "20261128T050000Z": "scheduled",
             "20261120T050000Z": "scheduled", "20261015T050000Z": "scheduled", "20260910T050000Z": "scheduled"}
    safety = {"20260801T120000Z": "pre-restore"}
    lay_out(tmp_path, {**burst, **older, **safety})
    result = run(tmp_path, "prune", **TIERS)
    assert result.returncode == 0, result.stderr
    assert kept(tmp_path) == {
        # the newest three (keep last)
        "20261201T100000Z", "20261201T090000Z", "20261201T080000Z",
        # daily: Dec 1 (already kept), Nov 30, Nov 29; weekly: W49 (Dec 1), W48 (Nov 29);
        # monthly: Dec (Dec 1), Nov (Nov 30)
        "20261130T050000Z", "20261129T050000Z",
        # never pruned by count
        "20260801T120000Z",
    }
    # The pruned ones lose their record too.
    assert {p.stem for p in tmp_path.glob("*.meta")} == {p.stem for p in tmp_path.glob("*.dump")}


def test_monthly_tier_reaches_back_past_the_daily_ones(tmp_path: Path) -> None:
    lay_out(tmp_path, {"20261201T000000Z": "scheduled", "20261101T000000Z": "scheduled",
                       "20261001T000000Z": "scheduled", "20260901T000000Z": "scheduled"})
    run(tmp_path, "prune", BACKUP_KEEP="1", BACKUP_KEEP_DAILY="1", BACKUP_KEEP_WEEKLY="0", BACKUP_KEEP_MONTHLY="3")
    assert kept(tmp_path) == {"20261201T000000Z", "20261101T000000Z", "20261001T000000Z"}


def test_a_backup_without_a_record_counts_as_scheduled(tmp_path: Path) -> None:
    (tmp_path / f"{DB}-20261201T000000Z.dump").write_bytes(b"PGDMP")
    (tmp_path / f"{DB}-20261130T000000Z.dump").write_bytes(b"PGDMP")
    run(tmp_path, "prune", BACKUP_KEEP="1", BACKUP_KEEP_DAILY="0", BACKUP_KEEP_WEEKLY="0", BACKUP_KEEP_MONTHLY="0")
    assert kept(tmp_path) == {"20261201T000000Z"}


def _status(backup_dir: Path, result: str, good_age_s: int | None) -> None:
    lines = [f"last_result={result}", "last_detail=x"]
    if good_age_s is not None:
        lines.append(f"last_good_epoch={int(time.time()) - good_age_s}")
    (backup_dir / "status").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(("result", "age", "healthy"), [
    ("ok", 10, True),
    ("ok", 3500, True),  # within twice the interval (1800 s)
    ("ok", 3700, False),  # older than twice the interval: the loop stopped working
    ("failed", 10, False),  # the last attempt failed
    ("ok", None, False),  # no good backup recorded
])
def test_health(tmp_path: Path, result: str, age: int | None, healthy: bool) -> None:
    _status(tmp_path, result, age)
    assert (run(tmp_path, "health", BACKUP_INTERVAL_S="1800").returncode == 0) is healthy


def test_no_status_is_unhealthy(tmp_path: Path) -> None:
    assert run(tmp_path, "health").returncode != 0


def test_ids_outside_the_pattern_are_refused_before_anything(tmp_path: Path) -> None:
    for bad in ("../status", f"{DB}-2026", f"{DB}-20261201T000000Z;rm", ""):
        result = run(tmp_path, "restore", bad)
        assert result.returncode == 1 and "no such backup ID" in result.stderr, (bad, result.stderr)
    assert list(tmp_path.iterdir()) == []


def test_every_restore_applies_the_jobs_own_privilege_model() -> None:
    """One file: what the provisioning job grants is what a restore grants again, inside its transaction."""
    from model.stack_yaml import settings_from_file

    s = settings_from_file("prod")
    job = dict(s.provision.uploads)["/provision/privileges.sql"]
    assert dict(s.backup.uploads)["/backup/privileges.sql"] == job
    assert "\\ir privileges.sql" in dict(s.provision.uploads)["/provision/provision.sql"]
    assert "privileges.sql" in SCRIPT.read_text()
