"""Settings from the environment; secrets from `*_FILE` files, re-read on every use so a rotated
secret file takes effect without a restart."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


class MissingSetting(RuntimeError):  # noqa: N818 (reads better at call sites)
    pass


def read_secret(name: str, env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    path = env.get(f"{name}_FILE")
    if path:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    value = env.get(name)
    if value is None:
        raise MissingSetting(f"set {name}_FILE (preferred) or {name}")
    return value


@dataclass(frozen=True)
class DbConfig:
    host: str
    port: int
    name: str
    user: str
    env: Mapping[str, str]

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DbConfig:
        env = dict(os.environ if env is None else env)
        try:
            return cls(env["DB_HOST"], int(env.get("DB_PORT", "5432")), env["DB_NAME"], env["DB_USER"], env)
        except KeyError as err:
            raise MissingSetting(f"set {err.args[0]}") from None

    def password(self) -> str:
        return read_secret("DB_PASSWORD", self.env)
