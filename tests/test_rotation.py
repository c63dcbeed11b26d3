"""Rotation triggers under mocks: a bumped version changes exactly the password and what must follow it."""

from __future__ import annotations

import json

import pytest

from tests.pulumi_mocks import PROJECT, Recording, committed_config, is_secret, plain, run_program

# (config key, changed resources). Issue #4: an app-role rotation must not touch the Postgres server
# or any volume; the app containers read the rotated credential from a volume, so they stay too.
EXPECTED = {
    "appDbPasswordVersion": {"credentials-app-db-password", "database-provision"},
    # The server container carries only the bootstrap password: it stays (issue #8: no restart, 0 failures).
    # The backup container logs in as its own role (issue #17): a superuser rotation leaves it alone.
    "postgresPasswordVersion": {"credentials-postgres-password", "database-provision"},
    "adminPasswordVersion": {"credentials-admin-password", "app-admin"},
    # The job sets the backup role's new password; the backup container gets the new file.
    "backupDbPasswordVersion": {"credentials-backup-db-password", "database-provision", "backup-runner"},
}
# Stack output names, not values.
OUTPUT = {"appDbPasswordVersion": "app_db_password",  # pragma: allowlist secret
          "postgresPasswordVersion": "postgres_password",  # pragma: allowlist secret
          "adminPasswordVersion": "admin_password",  # pragma: allowlist secret
          "backupDbPasswordVersion": "backup_db_password"}  # pragma: allowlist secret


def _inputs(rec: Recording) -> dict[str, str]:
    return {r.name: json.dumps(plain(r.inputs), sort_keys=True) for r in rec.resources}


@pytest.mark.parametrize("stack", ["dev", "prod"])
@pytest.mark.parametrize("key", sorted(EXPECTED))
def test_bumped_version_changes_exactly_what_must_follow(stack: str, key: str) -> None:
    before = run_program(stack)
    cfg = committed_config(stack)
    cfg[f"{PROJECT}:{key}"] = "2"
    after = run_program(stack, cfg)
    old, new = _inputs(before), _inputs(after)
    assert set(old) == set(new), "a rotation adds or removes no resource"
    changed = {name for name in old if old[name] != new[name]}
    assert changed == EXPECTED[key]
    for volume in ("database-data", "database-app-credentials", "database-provision-state"):
        assert volume not in changed
    out = OUTPUT[key]
    assert is_secret(after.outputs[out])
    assert plain(after.outputs[out]) != plain(before.outputs[out])
    password = after.named(f"credentials-{out.replace('_', '-')}")
    assert password.inputs["keepers"] == {"version": "2"}


def test_unchanged_versions_change_nothing() -> None:
    assert _inputs(run_program("dev")) == _inputs(run_program("dev", committed_config("dev")))
