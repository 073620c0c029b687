"""The backend against its own OpenAPI schema: schemathesis fuzzes the live backend.

Every operation of ``/openapi.json`` (but the speech upload, whose audio
bodies have their own tests) gets generated requests, valid and invalid by
the schema, with an agent's key and a caller's key, against the real backend
under uvicorn. Each answer must not be a server error, must have a status
the schema documents for the operation, and must fit the documented body and
content type. Bounded and deterministic: a fixed number of examples per
operation, derandomized, no shrinking.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.transfer.conftest import TransferEnv

pytestmark = [pytest.mark.integration]

# Examples per operation, key and generation mode.
EXAMPLES = {GenerationMode.POSITIVE: 30, GenerationMode.NEGATIVE: 15}
# Keys the fuzzer uses: identities no other test uses.
KEYS = ("agent-a-397", "caller-397")
# The speech upload is fuzzed by its own tests; the event stream never ends (its own test).
NOT_FUZZED = {"/v1/speech", "/v1/events"}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    response_schema_conformance,
    content_type_conformance,
]


@dataclasses.dataclass
class Report:
    """What the fuzzing did."""

    operations: set[str] = dataclasses.field(default_factory=set)
    examples: int = 0
    statuses: dict[int, int] = dataclasses.field(default_factory=dict)
    failures: list[str] = dataclasses.field(default_factory=list)
    elapsed_s: float = 0.0


def fuzz(base_url: str, keys: dict[str, str]) -> Report:
    """Fuzz every operation but :data:`NOT_FUZZED` (blocking: run in a thread)."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    report = Report()
    started = time.monotonic()
    with requests.Session() as session:
        for result in schema.get_all_operations():
            operation = result.ok()
            if operation.path in NOT_FUZZED:
                continue
            report.operations.add(f"{operation.method.upper()} {operation.path}")
            for identity, key in keys.items():
                headers = {"Authorization": f"Bearer {key}"}
                for mode, examples in EXAMPLES.items():
                    _run(operation, mode, examples, headers, session, report, identity)
    report.elapsed_s = time.monotonic() - started
    return report


def _run(
    operation: Any,
    mode: GenerationMode,
    examples: int,
    headers: dict[str, str],
    session: requests.Session,
    report: Report,
    identity: str,
) -> None:
    @hypothesis.settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        report.examples += 1
        try:
            res = case.call_and_validate(
                session=session, headers=headers, checks=CHECKS, timeout=30
            )
            report.statuses[res.status_code] = report.statuses.get(res.status_code, 0) + 1
        except (Failure, FailureGroup) as exc:
            report.failures.append(f"[{identity}, {mode}] {exc}"[:3000])

    try:
        run()
    except hypothesis.errors.Unsatisfiable:
        # Nothing invalid can be generated for an operation without inputs.
        if mode is not GenerationMode.NEGATIVE:
            raise


async def test_backend_conforms_to_its_schema(backend_env: TransferEnv) -> None:
    backend = backend_env.backend
    assert backend is not None
    keys = {identity: backend.keys[identity] for identity in KEYS}
    report = await asyncio.to_thread(fuzz, backend.url, keys)
    print(
        f"schemathesis {schemathesis.__version__}: {len(report.operations)} operations, "
        f"{report.examples} examples in {report.elapsed_s:.1f} s, statuses {report.statuses}, "
        f"{len(report.failures)} failures"
    )
    assert report.failures == [], "\n\n".join(report.failures[:5])
    assert len(report.operations) >= 13
    assert report.examples >= 13 * 2 * 30
    # Not everything was refused: the fuzzer reached the routes' work.
    assert any(200 <= s < 300 for s in report.statuses)
