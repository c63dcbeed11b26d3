"""The one place that reads stack config from the Pulumi engine (the compose CLI reads the stack file,
model/stack_yaml.py). Components never read config themselves."""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi.runtime

from model.settings import (
    PROJECT,
    SUPPLIED_SECRETS,
    USER_SECRETS,
    ConfigError,
    StackSettings,
    check_user_passwords,
    load_settings,
)
from model.stack_yaml import PREFIX as _PREFIX
from model.stack_yaml import as_config_string, drop_unset_secrets, refuse_plaintext_passwords
from model.swarm import APP_CREDENTIALS_SECRET, DeployedApp
from ops import swarm_state


def _engine_config() -> dict[str, Any]:
    # The SDK has no public "list all keys" call; these are where it keeps them (engine env and the
    # values set by tests through set_all_config).
    from pulumi.runtime.config import CONFIG

    return {**pulumi.runtime.get_config_env(), **CONFIG.get()}


def read_stack_config(stack: str) -> tuple[StackSettings, dict[str, pulumi.Output[str]]]:
    """Validate the engine's config for `stack`; return settings and any user-supplied passwords.

    Raises `pulumi.RunError` (a clean, one-message failure) before any resource is registered.
    """
    engine = {k[len(_PREFIX):]: as_config_string(v) for k, v in _engine_config().items() if k.startswith(_PREFIX)}
    secret_keys = {k for k in engine if pulumi.runtime.is_config_secret(_PREFIX + k)}
    # An empty plaintext value is Pulumi.yaml's default ("generate one"); an empty *secret* was set on purpose
    # and is refused below like any other unusable password.
    raw = {k: v for k, v in engine.items() if k in secret_keys or k in drop_unset_secrets(engine)}
    try:
        refuse_plaintext_passwords({k for k in raw if k not in secret_keys})
        settings = load_settings(raw, stack)
        check_user_passwords(raw)
        kind = settings.pitr.offhost_kind if settings.pitr else "none"
        for spec in settings.supplied_secrets:
            if not raw.get(spec.config_key, "").strip():
                raise ConfigError(f"config key '{PROJECT}:{spec.config_key}' is unset or empty; allowed: the "
                                  f"{spec.description}, set with `pulumi config set --secret "
                                  f"{spec.config_key}` (pitrOffhost is {kind})")
    except ConfigError as err:
        raise pulumi.RunError(str(err)) from None
    config = pulumi.Config(PROJECT)
    provided = {s.name: config.require_secret(s.config_key) for s in (*USER_SECRETS, *SUPPLIED_SECRETS)
                if s.config_key in raw}
    return settings, provided


def read_deployed_app(settings: StackSettings) -> DeployedApp | None:
    """On a swarm, what the API service runs now (its app secret and role label), read from the engine
    the provider uses, so the app role follows the deployment (model/swarm.py deployed_app_role).

    Raises `pulumi.RunError` with one line if the engine cannot be read: guessing could break live tasks.
    """
    host = pulumi.Config("docker").get("host")
    try:
        return swarm_state.deployed_app(host, f"{settings.prefix}_api", APP_CREDENTIALS_SECRET)
    except RuntimeError as err:
        raise pulumi.RunError(f"{err}; the app's login role is chosen from the running API service "
                              "(docs/swarm.md), so `pulumi up` needs the swarm manager") from None
