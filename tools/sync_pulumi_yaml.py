"""Rewrite the `config:` block of Pulumi.yaml and the config table of docs/configuration.md from CONFIG_KEYS.

    python tools/sync_pulumi_yaml.py

model.settings.CONFIG_KEYS is the source of truth; tests/test_components.py fails when
Pulumi.yaml or docs/configuration.md drifts from it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from model.settings import CONFIG_KEYS  # noqa: E402


def config_block() -> dict[str, Any]:
    block: dict[str, Any] = {}
    for key in CONFIG_KEYS:
        # Secret keys are not flagged `secret: true` here: their default is empty ("generate one"), and the
        # program itself refuses a plaintext value (components/config.py, model/stack_yaml.py).
        spec: dict[str, Any] = {"type": key.type, "description": key.description}
        if key.default is not None or key.secret:
            default = key.default or ""
            spec["default"] = int(default) if key.type == "integer" else (default == "true") \
                if key.type == "boolean" else default
        block[key.name] = spec
    return block


def readme_table() -> str:
    rows = ["| key | type | default | description |", "| --- | --- | --- | --- |"]
    for key in CONFIG_KEYS:
        if key.secret:
            default = "(generated)"
        elif key.default is None:
            default = "(required)"
        else:
            default = f"`{key.default}`" if key.default else "(none)"
        kind = f"{key.type} (secret)" if key.secret else key.type
        rows.append(f"| `{key.name}` | {kind} | {default} | {key.description} |")
    return "\n".join(rows)


def main() -> None:
    path = ROOT / "Pulumi.yaml"
    head = path.read_text().split("\nconfig:\n")[0]
    body = yaml.safe_dump({"config": config_block()}, sort_keys=False, width=120)
    path.write_text(head.rstrip("\n") + "\n" + body)
    readme = ROOT / "docs" / "configuration.md"
    text = readme.read_text()
    start = text.index("| key | type | default | description |")
    end = text.index("\n\n", start)
    readme.write_text(text[:start] + readme_table() + text[end:])


if __name__ == "__main__":
    main()
