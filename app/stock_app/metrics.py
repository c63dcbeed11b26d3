"""Backup health in Prometheus text format (version 0.0.4), for the admin UI's /metrics: read from the status
files the backup containers write (db-backup's `status`, db-pitr's backup-repoN, archive and drill), so a
scrape never touches the database. monitoring/alerts.yml holds the rules that read these."""

from __future__ import annotations

import calendar
import os
import time
from collections.abc import Iterator
from pathlib import Path


def read_status(path: Path) -> dict[str, str]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return {}
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def _iso_epoch(value: str) -> float | None:
    try:
        return float(calendar.timegm(time.strptime(value, "%Y-%m-%dT%H:%M:%SZ")))
    except ValueError:
        return None


def _num(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "", "-") else None
    except ValueError:
        return None


def _metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float | None]]) -> Iterator[str]:
    present = [(labels, v) for labels, v in samples if v is not None]
    if not present:
        return
    yield f"# HELP {name} {help_text}"
    yield f"# TYPE {name} {kind}"
    for labels, v in present:
        yield f"{name}{labels} {v:.0f}" if float(v).is_integer() else f"{name}{labels} {v}"


def render(backup_status_file: str, pitr_dir: str) -> str:
    """Every metric whose source exists; a missing file leaves its metrics out (alerts use absent())."""
    lines: list[str] = []
    logical = read_status(Path(backup_status_file)) if backup_status_file else {}
    lines += _metric("stock_backup_last_good_timestamp_seconds", "gauge",
                     "When the last good logical backup (pg_dump) was taken.",
                     [("", _iso_epoch(logical.get("last_good", "")))])
    lines += _metric("stock_backup_last_attempt_success", "gauge", "1 when the last logical backup attempt succeeded.",
                     [("", {"ok": 1.0, "failed": 0.0}.get(logical.get("last_result", "")))])
    if pitr_dir and os.path.isdir(pitr_dir):
        lines += _pitr(Path(pitr_dir))
    return "\n".join(lines) + "\n"


def _pitr(d: Path) -> list[str]:
    repos = sorted(p.name.removeprefix("backup-repo") for p in d.glob("backup-repo*") if not p.name.endswith(".tmp"))
    backups = {r: read_status(d / f"backup-repo{r}") for r in repos}
    archive, drill = read_status(d / "archive"), read_status(d / "drill")
    ok = {"ok": 1.0, "failed": 0.0}
    lines: list[str] = []
    lines += _metric("stock_pitr_last_backup_timestamp_seconds", "gauge",
                     "When the last base backup attempt into a repository ended.",
                     [(f'{{repo="{r}"}}', _num(b.get("time"))) for r, b in backups.items()])
    lines += _metric("stock_pitr_last_backup_success", "gauge", "1 when the last base backup into a repository "
                     "succeeded.", [(f'{{repo="{r}"}}', ok.get(b.get("result", ""))) for r, b in backups.items()])
    lines += _metric("stock_pitr_archive_ready_segments", "gauge", "WAL segments waiting to be archived.",
                     [("", _num(archive.get("ready")))])
    lines += _metric("stock_pitr_archive_lag_seconds", "gauge", "Age of the oldest WAL segment waiting to be archived.",
                     [("", _num(archive.get("lag_seconds")))])
    lines += _metric("stock_pitr_archive_failed_total", "counter", "Failed archive attempts (pg_stat_archiver).",
                     [("", _num(archive.get("failed_count")))])
    if archive.get("receiver", "-") != "-":
        lines += _metric("stock_pitr_receiver_synchronous", "gauge", "1 while the synchronous WAL receiver streams "
                         "(with pitrSyncReceiver; while 0, commits wait).",
                         [("", 1.0 if archive.get("receiver") == "sync" else 0.0)])
    lines += _metric("stock_pitr_archive_status_timestamp_seconds", "gauge", "When db-pitr last read the archive "
                     "state (a stale value means db-pitr is not running).", [("", _num(archive.get("time")))])
    lines += _metric("stock_pitr_last_drill_timestamp_seconds", "gauge", "When the last restore drill ended.",
                     [("", _num(drill.get("time")))])
    lines += _metric("stock_pitr_last_drill_success", "gauge", "1 when the last restore drill restored the backup, "
                     "started it and found every table's rows and checksum as recorded.",
                     [("", ok.get(drill.get("result", "")))])
    return lines
