"""Settings from the environment; secrets from `*_FILE` files, re-read on every use so a rotated
secret file takes effect without a restart."""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass


class MissingSetting(RuntimeError):  # noqa: N818 (reads better at call sites)
    pass


def usable_secret(value: str, source: str) -> str:
    """The value as it is (no stripping, so every reader sees the same bytes), or MissingSetting.

    Empty, whitespace-only and control characters (a trailing newline included) are refused: the
    deployment never writes them, and an empty admin password must never mean "no password".
    """
    if not value.strip():
        raise MissingSetting(f"{source} is empty")
    if any(unicodedata.category(c).startswith("C") for c in value):
        raise MissingSetting(f"{source} holds control characters (a trailing newline?)")
    return value


def read_secret(name: str, env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    path = env.get(f"{name}_FILE")
    if path:
        with open(path, encoding="utf-8") as f:
            return usable_secret(f.read(), path)
    value = env.get(name)
    if value is None:
        raise MissingSetting(f"set {name}_FILE (preferred) or {name}")
    return usable_secret(value, name)


@dataclass(frozen=True)
class DbConfig:
    host: str
    port: int
    name: str
    env: Mapping[str, str]

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DbConfig:
        env = dict(os.environ if env is None else env)
        try:
            config = cls(env["DB_HOST"], int(env.get("DB_PORT", "5432")), env["DB_NAME"], env)
        except KeyError as err:
            raise MissingSetting(f"set {err.args[0]}") from None
        if "DB_CREDENTIALS_FILE" not in env and "DB_USER" not in env:
            raise MissingSetting("set DB_CREDENTIALS_FILE, or DB_USER with DB_PASSWORD_FILE or DB_PASSWORD")
        return config

    def credentials(self) -> tuple[str, str]:
        """(user, password), read anew for every connection.

        DB_CREDENTIALS_FILE holds the user on its first line and the password on its second; the
        deployment swaps it atomically when it rotates the app's role. Otherwise DB_USER and
        DB_PASSWORD_FILE (or DB_PASSWORD).
        """
        path = self.env.get("DB_CREDENTIALS_FILE")
        if path:
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
            if len(lines) < 2 or not lines[0] or not lines[1]:
                raise MissingSetting(f"{path}: expected the user and the password on two lines")
            return lines[0], lines[1]
        return self.env["DB_USER"], read_secret("DB_PASSWORD", self.env)
