"""The one exception hierarchy of Stratus (STYLE.md section 8)."""

from __future__ import annotations


class StratusError(Exception):
    """Base of every error Stratus raises on purpose."""


class ProtocolError(StratusError):
    """A message could not be decoded or does not respect the protocol."""


class StoreError(StratusError):
    """The scheduler's store failed or holds data it cannot read."""


class ConfigError(StratusError):
    """A configuration file or flag is invalid."""


class DriverError(StratusError):
    """A hypervisor driver could not carry out an operation."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class ApiError(StratusError):
    """An API call answered with an error reply (raised by clients such as the CLI)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


class NetworkError(StratusError):
    """A host could not build (or tear down) part of its guest networking."""
