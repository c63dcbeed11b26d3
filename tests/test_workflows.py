"""The GitHub workflows keep secrets where reviewers can see who gets them (docs/reviewing.md).
actionlint checks their syntax (tools/scan.sh); these tests check the rules actionlint does not know."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
LOCAL_ACTIONS = sorted((ROOT / ".github" / "actions").glob("*/action.yml"))
# Environments whose secrets open prod; both have required reviewers (set in the repository settings).
PROD_ENVIRONMENTS = {"production", "production-preview"}
STACK_ENVIRONMENTS = {"dev": {"dev"}, "prod": PROD_ENVIRONMENTS}
MAIN_ONLY = "github.ref == 'refs/heads/main'"
SAME_REPO = "github.event.pull_request.head.repo.full_name == github.repository"


def _load(path: Path) -> dict[str, Any]:
    raw: dict[Any, Any] = yaml.safe_load(path.read_text())
    # YAML 1.1 reads the key `on` as the boolean true.
    return {("on" if k is True else str(k)): v for k, v in raw.items()}


def _jobs() -> list[tuple[str, str, dict[str, Any]]]:
    return [(p.name, name, job) for p in WORKFLOWS for name, job in _load(p)["jobs"].items()]


def _steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    return list(job.get("steps") or [])


def _stack(job: dict[str, Any]) -> str | None:
    for step in _steps(job):
        if str(step.get("uses", "")).startswith("./.github/actions/pulumi"):
            return str(step["with"]["stack"])
    return None


def test_there_are_workflows_to_check() -> None:
    assert {p.name for p in WORKFLOWS} == {"preview.yml", "deploy.yml"}
    assert len(_jobs()) == 5


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_nothing_is_granted_by_default(path: Path) -> None:
    assert _load(path)["permissions"] == {}
    assert "pull_request_target" not in _load(path)["on"]


@pytest.mark.parametrize(("workflow", "name", "job"), _jobs(), ids=[f"{w}:{n}" for w, n, _ in _jobs()])
def test_each_job_asks_for_its_own_permissions(workflow: str, name: str, job: dict[str, Any]) -> None:
    perms = job["permissions"]
    assert perms.get("contents") == "read"
    assert set(perms) <= {"contents", "pull-requests"}
    comments = any(s.get("with", {}).get("comment-on-pr") == "true" for s in _steps(job))
    assert (perms.get("pull-requests") == "write") == comments, "pull-requests: write only where it comments"


@pytest.mark.parametrize(("workflow", "name", "job"), _jobs(), ids=[f"{w}:{n}" for w, n, _ in _jobs()])
def test_checkouts_do_not_persist_credentials(workflow: str, name: str, job: dict[str, Any]) -> None:
    checkouts = [s for s in _steps(job) if str(s.get("uses", "")).startswith("actions/checkout@")]
    assert checkouts
    for step in checkouts:
        assert step.get("with", {}).get("persist-credentials") is False


@pytest.mark.parametrize(("workflow", "name", "job"), _jobs(), ids=[f"{w}:{n}" for w, n, _ in _jobs()])
def test_secrets_come_from_the_stacks_environment(workflow: str, name: str, job: dict[str, Any]) -> None:
    uses_secrets = "secrets." in yaml.safe_dump(job)  # pragma: allowlist secret (a pattern, no value)
    stack = _stack(job)
    if not uses_secrets:
        assert stack is None, "a Pulumi run needs the stack's secrets"
        return
    assert stack in STACK_ENVIRONMENTS, "secrets only in jobs that run one fixed stack (no matrix over stacks)"
    assert job["environment"] in STACK_ENVIRONMENTS[stack], (stack, job["environment"])
    assert "strategy" not in job


def test_pull_requests_reach_prod_secrets_only_through_approval() -> None:
    preview = _load(ROOT / ".github/workflows/preview.yml")
    prod = [job for job in preview["jobs"].values() if _stack(job) == "prod"]
    assert len(prod) == 1 and prod[0]["environment"] == "production-preview"
    for job in preview["jobs"].values():
        if _stack(job):
            assert job["if"] == SAME_REPO, "forks get no secrets; their previews are skipped"
            assert job["needs"] == "checks", "no secret is handed out before the checks pass"


def test_deploys_run_from_main_only() -> None:
    deploy = _load(ROOT / ".github/workflows/deploy.yml")
    assert deploy["on"]["push"] == {"branches": ["main"]}
    for name, job in deploy["jobs"].items():
        assert job["if"] == MAIN_ONLY, name
        assert job["concurrency"] == {"group": f"pulumi-stack-{_stack(job)}", "cancel-in-progress": False}
    assert deploy["jobs"]["prod"]["environment"] == "production" and deploy["jobs"]["prod"]["needs"] == "dev"


def test_the_shared_action_is_pinned_and_holds_no_secret() -> None:
    (action,) = LOCAL_ACTIONS
    text = action.read_text()
    assert "secrets." not in text
    for ref in re.findall(r"uses: (\S+)", text):
        assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", ref), ref
    for path in WORKFLOWS:
        for ref in re.findall(r"uses: (\S+)", path.read_text()):
            assert ref.startswith("./") or re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", ref), ref
