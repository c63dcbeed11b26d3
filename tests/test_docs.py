"""The docs cannot drift from the code: every project command they show (in code blocks and inline code)
names a real file or module, and every subcommand and flag it uses is in that CLI's own `--help`.
Docker compose commands are checked against `docker compose SUB --help` where the docker CLI exists.
Commands of other tools (pulumi, curl, psql, ssh) are not checked here: their CLIs are not installed."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MODULES = {"exporters.compose", "ops", "bench.bench", "bench.data_bench", "bench.pitr_bench", "bench.receiver_bench",
           "tests.docker.standins",
           "stock_app"}
# Every package of the project: `python -m components.compose` (the name before the layout of issue 19)
# is one of ours, and no CLI any more.
PACKAGES = {"model", "components", "exporters", "ops", "bench", "tests", "stock_app", "policy", "tools"}
PLACEHOLDER = re.compile(r"[A-Z][A-Z_]*|<[^>]+>|\.\.\.")


def commands(text: str) -> list[str]:
    """Shell lines of fenced code blocks (continuations joined, comments dropped) and inline code spans."""
    found: list[str] = []
    for block in re.findall(r"```(?:bash|sh|console)?\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                found.extend(part.strip() for part in re.split(r"\s*(?:&&|;|\|\|)\s*", line))
    for span in re.findall(r"(?<!`)`((?:python3? -m|\./deploy\.sh|bash |docker compose )[^`]*)`", text):
        found.extend(part.strip() for part in re.split(r"\s*(?:&&|;|\|\|)\s*", span))
    # <placeholders> are one word
    return [re.sub(r"<[^>]+>", "X", c) for c in found if c]


@cache
def help_text(*argv: str) -> str:
    out = subprocess.run([sys.executable, "-m", *argv, "--help"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, env={"PYTHONPATH": f"{ROOT}:{ROOT / 'app'}", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, f"{' '.join(argv)} --help failed: {out.stderr}"
    return out.stdout


@cache
def docker_help(*sub: str) -> str:
    out = subprocess.run(["docker", "compose", *sub, "--help"], capture_output=True, text=True, timeout=60)
    return out.stdout if out.returncode == 0 else ""


def problems(command: str) -> list[str]:
    try:
        words = shlex.split(command)
    except ValueError:
        return []
    if words[:1] == ["sudo"]:
        words = words[1:]
    if len(words) >= 3 and words[0] in ("python", "python3") and words[1] == "-m":
        module, args = words[2], words[3:]
        if module.split(".")[0] not in PACKAGES:
            return []  # another tool's module (venv, pip, pytest)
        if module not in MODULES:
            return [f"{command}: module {module} is not one of the project's CLIs {sorted(MODULES)}"]
        if module in ("tests.docker.standins", "stock_app"):
            return []
        argv = [module]
        if module == "ops" and args and not args[0].startswith("-"):
            if args[0] not in re.findall(r"^\s{4}(\w+)\s", help_text(module), re.M):
                return [f"{command}: no subcommand {args[0]!r} in `python -m {module} --help`"]
            argv.append(args[0])
        text = help_text(*argv)
        return [f"{command}: {flag} is not in `python -m {' '.join(argv)} --help`"
                for flag in (a.split("=")[0] for a in args if a.startswith("--")) if flag not in text]
    if words[:1] in (["./deploy.sh"], ["bash"]):
        script = words[0] if words[0] != "bash" else (words[1] if len(words) > 1 else "")
        if not (ROOT / script).is_file():
            return [f"{command}: no file {script}"]
        if (script == "./deploy.sh" and len(words) > 1 and not PLACEHOLDER.fullmatch(words[1])
                and not (ROOT / f"Pulumi.{words[1]}.yaml").is_file()):
            return [f"{command}: no stack {words[1]}"]
        return []
    if words[:2] == ["docker", "compose"] and shutil.which("docker"):
        rest = [w for w in words[2:]]
        while rest and rest[0] in ("-f", "-p"):
            rest = rest[2:]
        if not rest or PLACEHOLDER.fullmatch(rest[0]):
            return []
        if not docker_help(rest[0]):
            return [] if not rest else [f"{command}: no `docker compose {rest[0]}`"]
        text = docker_help(rest[0])
        return [f"{command}: {flag} is not in `docker compose {rest[0]} --help`"
                for flag in (a.split("=")[0] for a in rest[1:] if a.startswith("--")) if flag not in text]
    return []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_command_shown_exists_with_its_flags(page: Path) -> None:
    found = [p for c in commands(page.read_text()) for p in problems(c)]
    assert found == []


def test_the_checker_can_fail() -> None:
    assert problems("python -m ops backup --stack dev --no-such-flag")
    assert problems("python -m ops frobnicate --stack dev")
    assert problems("python -m exporters.compose --stack dev --out d --rotate-all")
    assert problems("./deploy.sh staging")
    assert problems("bash tools/no-such-script.sh")
    assert problems("python -m components.nothing")
    assert problems("python -m components.ops backup --stack dev")  # the entry point before issue 19
    assert problems("python -m ops restore --stack dev ID") == []


def test_the_readme_is_a_front_page() -> None:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    assert [line.split("#")[0].strip() for line in blocks[0].strip().splitlines()] == ["./deploy.sh", "bash .ci/run"]
    assert "```mermaid" in text and len(text) < 6000
    for link in re.findall(r"\]\((docs/[^)#]+)", text):
        assert (ROOT / link).is_file(), link


def test_the_repository_stands_on_its_own() -> None:
    """A clone has nothing beside it: no tracked file reaches outside the repository for a tool."""
    import subprocess

    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    reaches_out = re.compile(r"\.\./shared|\"shared\" /")  # the folder beside the checkout, as text or as a path
    outside = [f for f in files if (ROOT / f).is_file() and reaches_out.search((ROOT / f).read_text(errors="replace"))]
    assert outside == []
    for tool in ("tools/docker-engine.sh", "tests/docker/swarm-lab.sh"):
        assert (ROOT / tool).stat().st_mode & 0o111, tool
