"""Stack config from Pulumi.<stack>.yaml without the Pulumi CLI or SDK, for the compose export and the
tools (the Pulumi program reads the engine's config instead: components/config.py). Pure: no Pulumi
import, so the export runs where Pulumi is not installed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from model.settings import PROJECT, SUPPLIED_SECRETS, USER_SECRETS, ConfigError, StackSettings, load_settings

# Keys whose values are credentials: set only as secrets; unset (empty) means generate, or for the off-host
# repository's keys, absent.
_SECRET_KEYS = (*USER_SECRETS, *SUPPLIED_SECRETS)

PROJECT_DIR = Path(__file__).resolve().parent.parent
PREFIX = f"{PROJECT}:"


def as_config_string(value: Any) -> str:
    """Render a YAML value the way the Pulumi CLI hands it to the program."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def refuse_plaintext_passwords(plaintext_keys: set[str]) -> None:
    for spec in _SECRET_KEYS:
        if spec.config_key in plaintext_keys:
            raise ConfigError(
                f"config key '{PREFIX}{spec.config_key}' holds a plaintext value; allowed: a secret, set with "
                f"`pulumi config set --secret {spec.config_key}`, or unset to generate one"
            )


def drop_unset_secrets(raw: dict[str, str]) -> dict[str, str]:
    """Pulumi.yaml declares each password key with an empty default, meaning "generate one"."""
    return {k: v for k, v in raw.items() if not (v == "" and k in {s.config_key for s in _SECRET_KEYS})}


def stack_file(stack: str, project_dir: Path = PROJECT_DIR) -> Path:
    return project_dir / f"Pulumi.{stack}.yaml"


def read_stack_file(stack: str, project_dir: Path = PROJECT_DIR) -> dict[str, str]:
    """Raw project config from Pulumi.<stack>.yaml, without the Pulumi CLI.

    Encrypted (`secure:`) values cannot be read here; their keys are kept with a placeholder so that
    validation still sees them.
    """
    path = stack_file(stack, project_dir)
    if not path.is_file():
        known = sorted(p.name[len("Pulumi."):-len(".yaml")] for p in project_dir.glob("Pulumi.*.yaml"))
        raise ConfigError(f"unknown stack {stack!r}: no {path.name}; known stacks: {', '.join(known) or 'none'}")
    doc = yaml.safe_load(path.read_text()) or {}
    config = doc.get("config") or {}
    if not isinstance(config, dict):
        raise ConfigError(f"{path.name}: 'config' must be a mapping")
    raw = drop_unset_secrets({
        k[len(PREFIX):]: "<secure>" if isinstance(v, dict) else as_config_string(v)
        for k, v in config.items() if k.startswith(PREFIX)
    })
    # The same rule as under the engine: a password in the stack file must be encrypted (`secure:`).
    refuse_plaintext_passwords({k[len(PREFIX):] for k, v in config.items()
                                 if k.startswith(PREFIX) and not isinstance(v, dict)} & set(raw))
    return raw


def settings_from_file(stack: str, project_dir: Path = PROJECT_DIR) -> StackSettings:
    return load_settings(read_stack_file(stack, project_dir), stack)
