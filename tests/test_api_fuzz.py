"""The API against its OpenAPI document, under the real server with the deployment's limits."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import yaml
from stock_app.web import api_app

from tests.api_fuzz import OPENAPI, fuzz
from tests.raw_http import served
from tests.test_app import FakeStore


@pytest.fixture
def api() -> Iterator[str]:
    with served(api_app(FakeStore())) as port:
        yield f"http://127.0.0.1:{port}"


def test_api_matches_its_document_and_never_fails_with_5xx(api: str) -> None:
    sent = fuzz(api, max_examples=40)
    assert sent >= 5 * 20  # five operation-modes; most examples were not filtered away


def test_document_covers_what_the_app_serves() -> None:
    doc = yaml.safe_load(OPENAPI.read_text())
    assert {p: sorted(ops) for p, ops in doc["paths"].items()} == {"/health": ["get"], "/live": ["get"],
                                                                 "/prices": ["get", "post"]}
