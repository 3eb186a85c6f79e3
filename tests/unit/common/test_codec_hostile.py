"""Every refusal of a typed decoder is a msgspec.DecodeError, whatever the bytes."""

from __future__ import annotations

import msgspec
import pytest

from common import codec


@pytest.mark.parametrize(
    "data",
    [b'{"name": "\xff\xfe"}', b'{"name": "ok", "request_id": "\xc3"}', b"\xff", b"", b"[[[[1"],
)
def test_malformed_bytes_raise_decode_error(data: bytes) -> None:
    with pytest.raises(msgspec.DecodeError):
        codec.vm_ref.decode(data)


def test_invalid_utf8_in_a_heartbeat_is_a_decode_error() -> None:
    # The type is the contract (every handler catches DecodeError); the wording is msgspec's own
    # or our wrapper's depending on the msgspec release, so it is not asserted.
    valid = b'{"host_id": "h", "seq": 0, "boot_id": "b", "capacity": {}}'
    assert codec.heartbeat.decode(valid).host_id == "h"
    with pytest.raises(msgspec.DecodeError):
        codec.heartbeat.decode(valid.replace(b'"h"', b'"h\x80"'))
