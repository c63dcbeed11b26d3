"""`python -m stock_app {api,frontend,admin} --port N`: serve one of the apps with waitress."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import urllib.request
from pathlib import Path
from typing import Any

from stock_app import metrics
from stock_app.config import DbConfig, read_secret
from stock_app.store import PostgresStore
from stock_app.web import MAX_BODY, WsgiApp, admin_app, api_app, frontend_app

# Server-side limits, enforced by waitress before the app sees a request (its defaults: 1 GiB bodies,
# spooled to the container's small /tmp, and 120 s idle connections).
SERVER_LIMITS: dict[str, Any] = {
    "max_request_body_size": MAX_BODY,  # larger bodies get 413 from the server itself
    "max_request_header_size": 32 * 1024,
    "inbuf_overflow": MAX_BODY + 1,  # bodies stay in memory (bounded by the two limits below), never in /tmp
    "connection_limit": 100,
    "channel_timeout": 15,  # seconds a connection may sit idle (no byte in or out) before it is closed
    "threads": 8,
    "asyncore_use_poll": True,
    "expose_tracebacks": False,
    "ident": "stock-app",
}


def build(role: str) -> WsgiApp:
    if role == "api":
        return api_app(PostgresStore(DbConfig.from_env()))
    if role == "admin":
        status_file = os.environ.get("BACKUP_STATUS_FILE", "")
        pitr_dir = os.environ.get("PITR_STATUS_DIR", "")
        return admin_app(PostgresStore(DbConfig.from_env()), os.environ.get("ADMIN_USER", "admin"),
                         lambda: read_secret("ADMIN_PASSWORD"), lambda: backup_summary(status_file, pitr_dir),
                         lambda: metrics.render(status_file, pitr_dir))
    api_url = os.environ.get("API_URL", "http://api:5000").rstrip("/")

    def fetch() -> list[dict[str, str]]:
        with urllib.request.urlopen(f"{api_url}/prices?limit=50", timeout=3) as resp:  # noqa: S310 (fixed scheme)
            data: list[dict[str, str]] = json.load(resp)
            return data

    return frontend_app(fetch)


def last_good_backup(status_file: str) -> str:
    """From the backup container's status file (key=value lines): when, and which, or why not."""
    if not status_file:
        return "not configured"
    try:
        with open(status_file, encoding="utf-8") as f:
            status = dict(line.rstrip("\n").split("=", 1) for line in f if "=" in line)
    except OSError:
        return "none yet"
    good = status.get("last_good") or "none yet"
    if status.get("last_good_id"):
        good += f" ({status['last_good_id']})"
    if status.get("last_result") == "failed":
        good += f"; the last attempt at {status.get('last_attempt', '?')} FAILED"
    return good


def backup_summary(status_file: str, pitr_dir: str) -> str:
    """The logical backups' line, and with point-in-time recovery its base backups, archive and drill."""
    text = last_good_backup(status_file)
    if not pitr_dir:
        return text
    d = Path(pitr_dir)
    parts = []
    for f in sorted(d.glob("backup-repo[0-9]")):
        st = metrics.read_status(f)
        parts.append(f"{f.name.removeprefix('backup-')} {st.get('label') or 'none'} ({st.get('result', '-')})")
    archive, drill = metrics.read_status(d / "archive"), metrics.read_status(d / "drill")
    parts.append(f"WAL archive lag {archive.get('lag_seconds', '?')} s")
    parts.append(f"last drill {drill.get('result', 'none yet')}")
    return f"{text}; base backups: {', '.join(parts)}"


def main() -> None:
    parser = argparse.ArgumentParser(prog="stock_app")
    parser.add_argument("role", choices=("api", "frontend", "admin"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="0.0.0.0", help="inside the container; Docker decides the host side")
    args = parser.parse_args()
    import waitress

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # PID 1 in its container: without a handler the kernel drops SIGTERM, and `docker stop` waits out its
    # whole grace period before killing the server.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    waitress.serve(build(args.role), host=args.host, port=args.port, **SERVER_LIMITS)


if __name__ == "__main__":
    main()
