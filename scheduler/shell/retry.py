"""Retries in the scheduler's shell: capped, jittered exponential backoff (stamina) around
idempotent JetStream calls while NATS does not answer (a nats-server restart, say).

Only NATS errors and timeouts are retried, each logged as a warning with what is retried; any
other error, and ``CancelledError`` (a ``BaseException``), goes straight through. The retry
never gives up: a scheduler waits for its NATS rather than exit while it restarts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import ParamSpec, TypeVar

import nats.errors
import stamina

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

WAIT_INITIAL_S = 0.1
"""The first retry comes this soon (plus jitter)."""
WAIT_MAX_S = 2.0
"""The cap on the wait between two attempts."""
WAIT_JITTER_S = 0.25
"""Up to this much random delay added to each wait, so restarted peers do not retry in step."""


def _unavailable(what: str) -> Callable[[Exception], bool]:
    def retry(exc: Exception) -> bool:
        if isinstance(exc, nats.errors.Error | TimeoutError):
            log.warning("%s, retrying error=%r", what, exc)
            return True
        return False

    return retry


def retry_while_nats_down(
    what: str,
) -> Callable[[Callable[P, Coroutine[object, None, T]]], Callable[P, Coroutine[object, None, T]]]:
    """Decorate an idempotent coroutine function: call it again, backing off, while NATS
    errors or times out. ``what`` starts the warning logged on each retry."""
    return stamina.retry(
        on=_unavailable(what),
        attempts=None,
        timeout=None,
        wait_initial=WAIT_INITIAL_S,
        wait_max=WAIT_MAX_S,
        wait_jitter=WAIT_JITTER_S,
    )
