"""The folder tree is the architecture (docs/architecture.md): each room imports only what its purpose
allows, checked in a fresh interpreter per room so that nothing else loaded first hides an import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# room -> top-level packages it must never load (directly or through anything it imports)
FORBIDDEN = {
    "model": {"pulumi", "pulumi_docker", "pulumi_random", "docker", "components", "exporters", "ops"},
    "exporters": {"pulumi", "pulumi_docker", "pulumi_random", "docker", "components", "ops"},
    "ops": {"pulumi", "pulumi_docker", "pulumi_random", "components", "exporters"},
    "policy": {"pulumi_docker", "pulumi_random", "docker", "components", "exporters", "ops"},
}


def _modules(room: str) -> list[str]:
    return sorted(".".join(p.relative_to(ROOT).with_suffix("").parts) for p in (ROOT / room).rglob("*.py")
                  if p.name != "__main__.py" or room == "ops")


def _loaded(modules: list[str]) -> set[str]:
    code = (f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
            "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                         timeout=60)
    return set(out.stdout.split())


@pytest.mark.parametrize("room", sorted(FORBIDDEN))
def test_each_room_imports_only_what_its_purpose_allows(room: str) -> None:
    modules = _modules(room)
    assert modules, room
    assert _loaded(modules) & FORBIDDEN[room] == set(), f"{room} loads {_loaded(modules) & FORBIDDEN[room]}"


def test_the_check_can_fail() -> None:
    assert "pulumi" in _loaded(["components.app"])


def test_components_hold_only_pulumi_components_and_the_provider_mapping() -> None:
    """Every module of components/ defines a pulumi.ComponentResource, except the one mapping to the
    provider (containers.py) and the one place that reads pulumi.Config (config.py)."""
    import ast

    for path in sorted((ROOT / "components").glob("*.py")):
        if path.name in ("__init__.py", "containers.py", "config.py"):
            continue
        tree = ast.parse(path.read_text())
        bases = {ast.unparse(b) for node in ast.walk(tree) if isinstance(node, ast.ClassDef) for b in node.bases}
        assert "pulumi.ComponentResource" in bases, path.name
