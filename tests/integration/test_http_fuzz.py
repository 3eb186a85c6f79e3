"""Every HTTP endpoint fuzzed from the served OpenAPI document (schemathesis): valid and invalid
requests against a real scheduler and agent. No 500s, every status and body as documented,
invalid input refused."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode, checks as sc
from schemathesis.core.result import Ok

from common.config import SchedulerConfig
from common.natsserver import NatsServer
from rigs.cluster import FAST_TIMINGS, Cluster
from scheduler.shell.app import SchedulerApp

pytestmark = pytest.mark.integration

TOKEN = "fuzz-token-0c5f"
MAX_EXAMPLES = 30
"""Per operation and generation mode (valid, invalid)."""
NOT_FUZZED = {"/v1/events"}
"""A stream that never ends (tests/integration/test_http.py reads it)."""
SEMANTIC_400 = {"/v1/usage", "/v1/vms/{name}/disks/{disk_id}"}
"""Schema-valid requests it may still refuse with 400 (``since`` after ``until``; a disk id
that is not one of the VM's)."""
ACCEPTED = ["2xx", "401", "403", "404", "409", "422", "429", "5xx"]
"""What a schema-valid request may get (schemathesis' default and 422): 422 says the request
names something the cluster does not have, an image to create a VM from, or the bytes sent are
not a disk image, neither of which a schema can say."""
EVERY_OPERATION = {
    "/v1/vms",
    "/v1/vms/{name}",
    "/v1/vms/{name}/start",
    "/v1/vms/{name}/stop",
    "/v1/vms/{name}/capture",
    "/v1/vms/{name}/disks",
    "/v1/vms/{name}/disks/{disk_id}",
    "/v1/vms/{name}/console",
    "/v1/vms/{name}/console/tail",
    "/v1/vms/{name}/console/input",
    "/v1/hosts",
    "/v1/hosts/{host_id}/cordon",
    "/v1/hosts/{host_id}/uncordon",
    "/v1/hosts/{host_id}/drain",
    "/v1/sizes",
    "/v1/usage",
    "/v1/images",
    "/v1/images/{name}",
    "/v1/vnets",
    "/v1/vnets/{name}",
    "/v1/vms/{name}/endpoints",
    "/v1/vms/{name}/endpoints/{vm_port}",
    "/v1/vms/{name}/migrate",
    "/v1/vms/{name}/migrate/cancel",
}
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


def unique_request_ids(case: schemathesis.Case[Any]) -> None:
    """Give each case request ids of its own: generated ones repeat ("0"), and a request whose
    id was seen gets the first answer back (a retry, by design; tests/integration/test_api.py),
    which is no answer to this case's body. An id that is itself the invalid part is kept."""

    def valid(value: object) -> bool:
        return isinstance(value, str) and 1 <= len(value) <= 128

    fresh = uuid.uuid4().hex
    if case.headers and valid(case.headers.get("Idempotency-Key")):
        case.headers["Idempotency-Key"] = fresh
    if isinstance(case.body, dict) and valid(case.body.get("request_id")):
        case.body["request_id"] = fresh


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
        unique_request_ids(case)
        response = case.call(base_url=base_url, timeout=10)
        statuses[response.status_code] += 1
        case.validate_response(response, checks=checks)

    fuzz()
    return statuses


def test_every_endpoint_survives_fuzzing_and_answers_as_documented(base_url: str) -> None:
    config = schemathesis.Config.from_dict(
        {
            "auth": {"openapi": {"bearer": {"bearer": TOKEN}}},
            "checks": {"positive_data_acceptance": {"expected-statuses": ACCEPTED}},
        }
    )
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
    assert fuzzed == EVERY_OPERATION
    assert all(statuses.total() > 0 for statuses in cases.values()), cases
    # The token was sent: valid requests were carried out, none refused for want of it.
    assert cases["positive POST /v1/vms"][201] > 0, cases["positive POST /v1/vms"]
    assert not any(statuses[401] for label, statuses in cases.items() if "positive" in label)
