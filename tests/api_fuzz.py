"""Property-based fuzzing of the API against its OpenAPI document (app/openapi.yaml), with schemathesis.

Shared by the unit suite (the app in-process, an in-memory store that refuses what the table refuses)
and the Docker suite (the real API container with Postgres behind it). Bounded: a fixed number of
examples per operation and mode, derandomized so that a run is repeatable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import checks
from schemathesis.generation.modes import GenerationMode

OPENAPI = Path(__file__).resolve().parent.parent / "app" / "openapi.yaml"
# No 5xx, and every response as documented (status, content type, headers, body schema); schema-invalid
# input is refused and schema-valid input accepted.
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
    checks.negative_data_rejection,
    checks.positive_data_acceptance,
]


def fuzz(base_url: str, max_examples: int, accept_503: bool = False) -> int:
    """Run every operation in both modes; returns the number of requests sent. Raises on the first failure.

    `accept_503`: a 503 (database down) is documented; the unit run keeps it out so positive data must be
    accepted; the Docker run has a live database and needs no exception either (it passes False).
    """
    schema = schemathesis.openapi.from_path(str(OPENAPI))
    sent = 0
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]  # an invalid document raises here
        # An operation without parameters or body has no invalid input to generate.
        has_input = bool(len(operation.query) or len(operation.body))
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)[:2 if has_input else 1]:
            strategy = operation.as_strategy(generation_mode=mode)

            @given(case=strategy)
            @settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck), print_blob=False)
            def run(case: schemathesis.Case[Any]) -> None:
                nonlocal sent
                sent += 1
                case.call_and_validate(base_url=base_url, checks=CHECKS, timeout=10)

            run()
    return sent

