"""Container hardening (CIS Docker Benchmark, where Docker allows it) in both outputs, one test per item."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from exporters.compose import compose_document
from model.settings import load_settings
from model.stack_yaml import settings_from_file
from tests.pulumi_mocks import PROJECT, Recording, committed_config, plain, run_program

STACKS = ("dev", "prod")
# What each process needs back after dropping every capability (issue #5): only the provisioning job,
# to hand the credential file to the app's uid.
CAP_ADD = {"db-provision": ["CHOWN"]}


@pytest.fixture(scope="module", params=STACKS)
def both(request: pytest.FixtureRequest) -> tuple[Recording, dict[str, Any]]:
    stack = str(request.param)
    return run_program(stack), compose_document(settings_from_file(stack))


def test_capabilities_dropped_to_what_each_process_needs(both: tuple[Recording, dict[str, Any]]) -> None:
    rec, doc = both
    for svc, c in rec.containers().items():
        caps = plain(c.inputs["capabilities"])
        assert caps.get("drops") == ["ALL"]
        assert caps.get("adds", []) == CAP_ADD.get(svc, [])
        assert doc["services"][svc]["cap_drop"] == ["ALL"]
        assert doc["services"][svc].get("cap_add", []) == CAP_ADD.get(svc, [])


def test_no_new_privileges(both: tuple[Recording, dict[str, Any]]) -> None:
    rec, doc = both
    for svc, c in rec.containers().items():
        assert c.inputs["securityOpts"] == ["no-new-privileges:true"]
        assert doc["services"][svc]["security_opt"] == ["no-new-privileges:true"]


def test_read_only_root_with_tmpfs(both: tuple[Recording, dict[str, Any]]) -> None:
    rec, doc = both
    for svc, c in rec.containers().items():
        # Pulumi: read-only unless the provider must upload files (tests/test_program.py covers that).
        assert c.inputs["readOnly"] is (not plain(c.inputs.get("uploads", [])))
        tmpfs = c.inputs["tmpfs"]
        assert "/tmp" in tmpfs and "noexec" in tmpfs["/tmp"] and "nosuid" in tmpfs["/tmp"]
        assert doc["services"][svc]["read_only"] is True
        assert sorted(doc["services"][svc]["tmpfs"]) == sorted(f"{k}:{v}" for k, v in tmpfs.items())
    # Postgres writes its socket and lock file there; it must belong to the postgres uid.
    assert "uid=999" in rec.containers()["postgres"].inputs["tmpfs"]["/var/run/postgresql"]


def test_pid_limits_in_compose(both: tuple[Recording, dict[str, Any]]) -> None:
    _, doc = both
    for svc in doc["services"].values():
        assert 0 < svc["pids_limit"] <= 256


def test_every_long_running_process_is_non_root(both: tuple[Recording, dict[str, Any]]) -> None:
    rec, doc = both
    for svc, c in rec.containers().items():
        uid = c.inputs["user"].split(":")[0]
        if svc == "db-provision":
            # The one reviewed exception: a one-shot job that must chown; it carries the label saying why.
            labels = {x["label"]: x["value"] for x in c.inputs["labels"]}
            assert labels["stock-analyzer.policy-exception.prod-non-root"]
            assert uid == "0"
            continue
        assert uid not in ("0", "root", "")
        assert doc["services"][svc]["user"] == c.inputs["user"]


def test_restart_is_bounded_when_configured_on_failure() -> None:
    cfg = committed_config("dev")
    cfg[f"{PROJECT}:restartPolicy"] = "on-failure"
    cfg[f"{PROJECT}:restartMaxRetries"] = "4"
    rec = run_program("dev", cfg)
    for svc, c in rec.containers().items():
        if svc == "db-provision":
            assert c.inputs["restart"] == "no"
            continue
        assert c.inputs["restart"] == "on-failure" and c.inputs["maxRetryCount"] == 4
    raw = {k.split(":", 1)[1]: v for k, v in cfg.items()}
    doc = yaml.safe_load(yaml.safe_dump(compose_document(load_settings(raw, "dev"))))
    assert doc["services"]["api"]["restart"] == "on-failure:4"
    assert doc["services"]["db-provision"]["restart"] == "no"


def test_jobs_never_restart(both: tuple[Recording, dict[str, Any]]) -> None:
    rec, doc = both
    assert rec.containers()["db-provision"].inputs["restart"] == "no"
    assert doc["services"]["db-provision"]["restart"] == "no"
