"""One API, three faces: every operation of the NATS API (each ``stratus.api.<noun>.<verb>``
subject in common/subjects.py) has its HTTP endpoint, its operation in the OpenAPI document
(bearer-secured when it changes anything) and its CLI verb. A new subject without the other
faces fails here."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from cli.main import build_parser
from common import subjects
from scheduler.shell.api import MUTATIONS, is_read
from scheduler.shell.http.openapi import build_openapi
from scheduler.shell.http.server import build_registry

API_PREFIX = f"{subjects.ROOT}.api."
CLI_NAMES = {
    subjects.VM_GET: ("vm", "show"),
    subjects.VNET_GET: ("vnet", "show"),
    subjects.SIZES_LIST: ("sizes",),
    subjects.USAGE_GET: ("usage",),
    subjects.VM_MIGRATE_CANCEL: ("vm", "migrate-cancel"),
}
"""CLI verbs not spelled like their subject's ``<noun> <verb>``."""


def api_subjects() -> set[str]:
    """Every request/reply subject of the NATS API, as common/subjects.py declares them."""
    return {
        value
        for name, value in vars(subjects).items()
        if name.isupper()
        and isinstance(value, str)
        and value.startswith(API_PREFIX)
        and not value.endswith(">")
    }


def cli_verbs(
    parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
) -> set[tuple[str, ...]]:
    found: set[tuple[str, ...]] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.add((*prefix, name))
                found |= cli_verbs(sub, (*prefix, name))
    return found


def cli_name(subject: str) -> tuple[str, ...]:
    return CLI_NAMES.get(subject, tuple(subject.removeprefix(API_PREFIX).split(".")))


def openapi_operations() -> dict[str, dict[str, Any]]:
    """x-nats-subject -> the operation, in the document of a scheduler with a token."""
    document = build_openapi(build_registry(), version="0", token=True, token_for_reads=False)
    return {
        op["x-nats-subject"]: op
        for path in document["paths"].values()
        for op in path.values()
        if "x-nats-subject" in op
    }


SUBJECTS = sorted(api_subjects())


def test_the_nats_api_is_enumerated() -> None:
    assert len(SUBJECTS) >= 18, SUBJECTS
    served = set(MUTATIONS) | {s for s in SUBJECTS if is_read(s)} | {subjects.USAGE_GET}
    assert served == set(SUBJECTS), "the scheduler serves exactly the declared subjects"


@pytest.mark.parametrize("subject", SUBJECTS)
def test_every_nats_operation_has_an_http_endpoint(subject: str) -> None:
    endpoints = [e for e in build_registry() if e.subject == subject]
    assert len(endpoints) == 1, f"{subject}: {len(endpoints)} HTTP endpoints"


@pytest.mark.parametrize("subject", SUBJECTS)
def test_every_nats_operation_is_in_the_openapi_document(subject: str) -> None:
    operations = openapi_operations()
    assert subject in operations, f"{subject} is not in /openapi.json"
    mutating = subject in MUTATIONS
    assert ("security" in operations[subject]) == mutating, subject


@pytest.mark.parametrize("subject", SUBJECTS)
def test_every_nats_operation_has_a_cli_verb(subject: str) -> None:
    assert cli_name(subject) in cli_verbs(build_parser()), f"no `stratus {cli_name(subject)}`"


def test_the_bearer_scheme_is_declared_even_without_a_token() -> None:
    document = build_openapi(build_registry(), version="0", token=False, token_for_reads=False)
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
