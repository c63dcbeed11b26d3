"""What the program and the exporters produce, pinned: the mock-captured resources and outputs of dev, prod
and swarm (type, name, URN, parent, inputs with their secretness, options), the compose files of dev and
prod, and the stack file of swarm. A change that moves code without meaning to change behaviour must
leave every file here identical; a change that means to change an output regenerates them and shows the
difference in review:

    python -m tests.test_pinned_outputs      # rewrites tests/pinned/

A changed URN is a replaced live resource: look at those lines first."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from pulumi.runtime import rpc

from tests.pulumi_mocks import ROOT, run_program

PINNED = Path(__file__).resolve().parent / "pinned"
STACKS = ("dev", "prod", "swarm")


def _marked(value: Any, secret: bool = False) -> Any:
    """Plain JSON with each secret as {"secret": ...}, every string inside it written as its length only: a
    secret that turns plain, or a value that becomes secret, shows; no (mock) password is written down."""
    if rpc.is_rpc_secret(value):
        return {"secret": _marked(rpc.unwrap_rpc_secret(value), True)}
    if isinstance(value, dict):
        return {k: _marked(v, secret) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [_marked(v, secret) for v in value]
    if secret and isinstance(value, str):
        return f"<{len(value)} characters>"
    return value


def program_snapshot(stack: str) -> str:
    """In a fresh interpreter: runs of the program under mocks in one process can see each other's
    resources (the SDK's settings are process-wide), and a pin must hold exactly one run."""
    result = subprocess.run([sys.executable, "-m", "tests.test_pinned_outputs", "--program", stack], cwd=ROOT,
                            capture_output=True, text=True, timeout=120, check=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join((str(ROOT), str(ROOT / "app")))})
    return result.stdout


def _program_snapshot_here(stack: str) -> str:
    rec = run_program(stack)  # registration order is asynchronous: sorted by URN below
    resources = [{
        "type": r.type, "name": r.name, "urn": r.urn, "parent": r.parent, "custom": r.custom,
        "inputs": _marked(r.inputs), "dependencies": r.dependencies, "protect": r.protect,
        "delete_before_replace": r.delete_before_replace, "retain_on_delete": r.retain_on_delete,
        "additional_secret_outputs": sorted(r.additional_secret_outputs),
    } for r in sorted(rec.resources, key=lambda r: r.urn)]
    names = [r["name"] for r in resources]
    assert len(set(names)) == len(names), "resource names are not unique: key the pins by URN"
    text = _flat({"resources": {r["name"]: r for r in resources}, "outputs": _marked(rec.outputs)})
    # The compose output names the build context by its absolute path: the checkout's place is no behaviour.
    return text.replace(str(ROOT), "<ROOT>")


def _flat(doc: Any) -> str:
    """One line per value, `path: text` for a string (newlines escaped) and `path = json` for anything else:
    a review diff names the exact input that changed, and no line reads like a quoted credential."""
    lines: list[str] = []

    def walk(value: Any, path: str) -> None:
        if isinstance(value, dict) and value:
            for key in sorted(value):
                walk(value[key], f"{path}.{key}" if path else key)
        elif isinstance(value, list) and value:
            for i, item in enumerate(value):
                walk(item, f"{path}[{i}]")
        elif isinstance(value, str):
            lines.append(f"{path}: {json.dumps(value)[1:-1]}")
        else:
            lines.append(f"{path} = {json.dumps(value)}")

    walk(doc, "")
    return "\n".join(lines) + "\n"


def export_snapshot(stack: str) -> str:
    """The compose file (single host) or the stack file (swarm) and the files beside it, secrets aside.
    The secrets are fixed for the export (a stack file names each by a hash of its content)."""
    from exporters import compose
    from model.settings import PATRONI_SECRETS, SECRET_SWARM_NAME_KEY, SECRETS

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        (out / "secrets").mkdir(parents=True, mode=0o700)
        for spec in (*SECRETS, *PATRONI_SECRETS, SECRET_SWARM_NAME_KEY):
            value = hashlib.sha256(f"pinned-{stack}-{spec.name}".encode()).hexdigest()[: spec.length]
            (out / "secrets" / spec.name).write_text(value)
            (out / "secrets" / spec.name).chmod(0o600)
        compose.export(stack, out, target="swarm" if stack == "swarm" else None)
        parts = []
        for path in sorted(p for p in out.rglob("*") if p.is_file() and "secrets" not in p.parts):
            text = path.read_text().replace(str(ROOT), "<ROOT>").replace(tmp, "<OUT>")
            parts.append(f"=== {path.relative_to(out)}\n{text}")
        return "".join(parts)


def _pinned(kind: str, stack: str) -> Path:
    return PINNED / f"{stack}.{kind}.txt"


SNAPSHOTS = {"program": program_snapshot, "export": export_snapshot}


@pytest.mark.parametrize("stack", STACKS)
@pytest.mark.parametrize("kind", sorted(SNAPSHOTS))
def test_outputs_are_as_pinned(kind: str, stack: str) -> None:
    assert SNAPSHOTS[kind](stack) == _pinned(kind, stack).read_text(), (
        f"{kind} of {stack} differs from tests/pinned/; if the change means it: python -m tests.test_pinned_outputs")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--program"]:
        sys.stdout.write(_program_snapshot_here(sys.argv[2]))
        sys.exit(0)
    PINNED.mkdir(exist_ok=True)
    for kind, snapshot in SNAPSHOTS.items():
        for stack in STACKS:
            _pinned(kind, stack).write_text(snapshot(stack))
            print(f"wrote {_pinned(kind, stack).relative_to(ROOT)}", file=sys.stderr)
