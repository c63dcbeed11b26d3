"""A Patroni member's start: patroni/patroni.yml plus the passwords from /run/secrets, written to tmpfs
(mode 0600) and handed to Patroni, which then replaces this process. Passwords never enter the environment.
`start.py ctl ARGS` does the same for patronictl (ops' one-shot jobs, ops/cluster.py).

The roles (names fixed in model/settings.py, created by Patroni at bootstrap): the superuser (its bootstrap
password; the provisioning job moves it on, Patroni itself connects by socket), the replication role, the
rewind role (only what pg_rewind needs), and the REST API's user for unsafe calls (switchover, restart)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import yaml

BASE = Path("/etc/patroni/patroni.yml")
OUT = Path("/tmp/patroni/patroni.yml")  # noqa: S108 (the container's own tmpfs)
SECRETS = Path("/run/secrets")


def secret(variable: str) -> str:
    """The password in the file that `variable` names (the official image's `_FILE` convention)."""
    path = Path(env(variable))
    if path.parent != SECRETS:
        sys.exit(f"patroni start: {variable}={path} is not a file under {SECRETS}")
    value = path.read_text(encoding="utf-8").strip()
    if not value:
        sys.exit(f"patroni start: {path} is empty")
    return value


def env(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        sys.exit(f"patroni start: {name} is not set")
    return value


def config() -> dict[str, object]:
    conf = yaml.safe_load(BASE.read_text(encoding="utf-8"))
    api = {"username": env("PATRONI_API_USER"), "password": secret("PATRONI_API_PASSWORD_FILE")}
    conf["restapi"]["authentication"] = api
    conf["ctl"] = {"authentication": dict(api)}
    conf["postgresql"]["authentication"] = {
        "superuser": {"username": env("POSTGRES_USER"), "password": secret("POSTGRES_PASSWORD_FILE")},
        "replication": {"username": env("PATRONI_REPLICATION_USER"),
                        "password": secret("PATRONI_REPLICATION_PASSWORD_FILE")},
        "rewind": {"username": env("PATRONI_REWIND_USER"), "password": secret("PATRONI_REWIND_PASSWORD_FILE")},
    }
    return conf


def main(argv: list[str]) -> None:
    OUT.parent.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(OUT, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        yaml.safe_dump(config(), f)
    if argv[:1] == ["ctl"]:
        # `start.py ctl ARGS`: patronictl with this configuration, for ops' one-shot jobs (ops/cluster.py).
        os.execvp("patronictl", ["patronictl", "-c", str(OUT), *argv[1:]])  # noqa: S606 (no shell)
    os.execvp("patroni", ["patroni", str(OUT)])  # noqa: S606 (becomes Patroni: no shell, fixed arguments)


if __name__ == "__main__":
    main(sys.argv[1:])
