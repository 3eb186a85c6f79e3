"""Every HTTP endpoint fuzzed from the served OpenAPI document (schemathesis): valid and invalid
requests against a real scheduler and agent. No 500s, every status and body as documented,
invalid input refused."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis import checks as sc
from schemathesis.core.result import Ok

from common.config import SchedulerConfig
from common.natsserver import NatsServer
from scheduler.shell.app import SchedulerApp
from tests.integration.cluster import FAST_TIMINGS, Cluster

pytestmark = pytest.mark.integration

TOKEN = "fuzz-token-0c5f"
MAX_EXAMPLES = 30
"""Per operation and generation mode (valid, invalid)."""
NOT_FUZZED = {"/v1/events"}
"""A stream that never ends (tests/integration/test_http.py reads it)."""
SEMANTIC_400 = {"/v1/usage"}
"""Schema-valid requests it may still refuse with 400 (``since`` after ``until``)."""
CHECKS: list[schemathesis.CheckFunction] = [
    sc.not_a_server_error,
    sc.status_code_conformance,
    sc.content_type_conformance,
    sc.response_schema_conformance,
    sc.response_headers_conformance,
    sc.negative_data_rejection,
    sc.positive_data_acceptance,
]


class ThreadedScheduler:
    """A SchedulerApp on its own event loop in a thread, for synchronous HTTP clients."""

    def __init__(self, config: SchedulerConfig) -> None:
        self.app = SchedulerApp(config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scheduler", daemon=True)
        self._error: BaseException | None = None

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            task = asyncio.create_task(self.app.run())
            ready = asyncio.create_task(self.app.ready.wait())
            await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
            self._ready.set()
            await task

        try:
            asyncio.run(main())
        except BaseException as exc:  # reported by start()/stop() in the test's thread
            self._error = exc
            self._ready.set()

    def start(self) -> str:
        self._thread.start()
        assert self._ready.wait(timeout=15) and self._error is None, self._error
        return f"http://127.0.0.1:{self.app.http_port}"

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.app.stop)
        self._thread.join(timeout=15)
        assert not self._thread.is_alive() and self._error is None, self._error


@pytest.fixture
def base_url(nats_server: NatsServer, cluster: Cluster, tmp_path: Path) -> Iterator[str]:
    config = msgspec.convert(
        {
            "nats_url": nats_server.url,
            "db_path": str(tmp_path / "scheduler.db"),
            "http_listen": "127.0.0.1:0",
            "api_token": TOKEN,
            **FAST_TIMINGS,
        },
        SchedulerConfig,
    )
    scheduler = ThreadedScheduler(config)
    url = scheduler.start()
    cluster.start_agent("h1", capacity="16c/64g")
    try:
        yield url
    finally:
        scheduler.stop()


def fuzz_operation(
    operation: schemathesis.APIOperation[Any, Any, Any, Any],
    mode: GenerationMode,
    base_url: str,
    checks: list[schemathesis.CheckFunction],
) -> Counter[int]:
    """Run up to MAX_EXAMPLES generated cases; returns how many got each status. Fails on the
    first problem (with a curl line to reproduce it)."""
    statuses: Counter[int] = Counter()

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case: schemathesis.Case[Any]) -> None:
        response = case.call(base_url=base_url, timeout=10)
        statuses[response.status_code] += 1
        case.validate_response(response, checks=checks)

    fuzz()
    return statuses


def test_every_endpoint_survives_fuzzing_and_answers_as_documented(base_url: str) -> None:
    config = schemathesis.Config.from_dict({"auth": {"openapi": {"bearer": {"bearer": TOKEN}}}})
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json", config=config)
    cases: dict[str, Counter[int]] = {}
    started = time.monotonic()
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        operation = result.ok()
        if operation.path in NOT_FUZZED:
            continue
        has_input = bool(
            operation.path_parameters or operation.query or operation.headers or operation.body
        )
        checks = [
            c
            for c in CHECKS
            if not (c is sc.positive_data_acceptance and operation.path in SEMANTIC_400)
        ]
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            if mode is GenerationMode.NEGATIVE and not has_input:
                continue  # nothing to make invalid
            label = f"{mode.value} {operation.method.upper()} {operation.path}"
            cases[label] = fuzz_operation(operation, mode, base_url, checks)
    elapsed_s = time.monotonic() - started
    total = sum(sum(statuses.values()) for statuses in cases.values())
    print(f"schemathesis: {total} cases in {len(cases)} runs, {elapsed_s:.1f}s")
    fuzzed = {label.split(" ", 2)[2] for label in cases}
    assert fuzzed >= {"/v1/vms", "/v1/vms/{name}", "/v1/hosts/{host_id}/drain", "/v1/sizes"}
    assert all(statuses.total() > 0 for statuses in cases.values()), cases
    # The token was sent: valid requests were carried out, none refused for want of it.
    assert cases["positive POST /v1/vms"][201] > 0, cases["positive POST /v1/vms"]
    assert not any(statuses[401] for label, statuses in cases.items() if "positive" in label)
