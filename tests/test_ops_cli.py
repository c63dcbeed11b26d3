"""The operations CLI's own checks, without an engine: image arguments judged whole, and a protected stack
that will not restore on a script's word alone."""

from __future__ import annotations

import argparse

import pytest
import requests

from model.stack_yaml import settings_from_file
from ops.__main__ import _confirm, image_argument
from ops.engine import Engine, OpsError

DIGEST = "sha256:" + "0123456789abcdef" * 4


@pytest.mark.parametrize(("value", "major"), [
    ("postgres:17.6-trixie", 17),
    (f"postgres:17.6-trixie@{DIGEST}", 17),
    (f"registry.example.internal:5000/library/postgres:16.4@{DIGEST}", 16),
])
def test_image_arguments_with_tags_and_digests(value: str, major: int) -> None:
    assert image_argument("--to-image", value) == (value, major)


@pytest.mark.parametrize(("value", "why"), [
    (f"postgres@{DIGEST}", "names no PostgreSQL major"),
    ("postgres:latest", "names no PostgreSQL major"),
    ("postgres:17 ; rm -rf /", "not an image reference"),
    (f"postgres:17@{DIGEST[:-1]}", "not an image reference"),
    ("Postgres:17", "not an image reference"),
    ("", "not an image reference"),
])
def test_bad_image_arguments_are_one_clear_error(value: str, why: str) -> None:
    with pytest.raises(OpsError, match=why) as err:
        image_argument("--from-image", value)
    assert "--from-image" in str(err.value) and "\n" not in str(err.value)


def test_a_protected_stack_needs_yes_without_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    prod = settings_from_file("prod")
    assert prod.protect_data
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    with pytest.raises(OpsError, match="--yes"):
        _confirm(prod, argparse.Namespace(yes=False), "restore replaces 5 rows")
    _confirm(prod, argparse.Namespace(yes=True), "restore replaces 5 rows")  # confirmed: no question
    _confirm(settings_from_file("dev"), argparse.Namespace(yes=False), "x")  # dev protects nothing


class _SlowContainer:
    """A helper container that is still at work for the first `busy` waits."""

    def __init__(self, busy: int) -> None:
        self.busy = busy

    def wait(self, timeout: int) -> dict[str, int]:
        if self.busy:
            self.busy -= 1
            raise requests.exceptions.ReadTimeout("read timed out")
        return {"StatusCode": 0}


def test_a_long_copy_has_no_fixed_limit_and_says_it_is_at_work(capsys: pytest.CaptureFixture[str]) -> None:
    assert Engine._wait(_SlowContainer(busy=3), "cp", every_s=1) == 0  # type: ignore[arg-type]
    assert capsys.readouterr().err.count("cp still running after") == 3
