"""Names must match as a whole: a trailing newline, a leading space or an embedded control
character is refused wherever a name enters (API bodies, agent reports, ids, disk ids).

A name such as ``"web\\n"`` used to pass ``^...$`` (``$`` matches before a final newline and
msgspec patterns use search semantics); its events could then never be published.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

from common import (
    codec,
    console_messages,
    ids,
    image_messages,
    list_messages as lm,
    messages as m,
    network_messages,
    usage_messages,
)
from common.errors import ProtocolError
from common.image_messages import ImageCaptured, ImageRef, UploadImage

BAD_SUFFIXES = ["\n", "\r\n", " ", "\t", "\x00", "\n\n"]
BAD_PREFIXES = ["\n", " ", "\t"]
SHA = "0" * 64


def _pattern_fields() -> Iterator[tuple[str, str]]:
    """(struct.field, pattern) for every string field of a wire struct that has a pattern."""
    modules = (m, console_messages, usage_messages, image_messages, network_messages)
    for obj in {v for mod in modules for v in vars(mod).values() if isinstance(v, type)}:
        if not (isinstance(obj, type) and issubclass(obj, msgspec.Struct)):
            continue
        info = msgspec.inspect.type_info(obj)
        assert isinstance(info, msgspec.inspect.StructType)
        for field in info.fields:
            yield from ((f"{obj.__name__}.{field.name}", p) for p in _patterns(field.type))


def _patterns(t: msgspec.inspect.Type) -> Iterator[str]:
    match t:
        case msgspec.inspect.StrType(pattern=str() as pattern):
            yield pattern
        case msgspec.inspect.Metadata(type=inner):
            yield from _patterns(inner)
        case msgspec.inspect.UnionType(types=types):
            for sub in types:
                yield from _patterns(sub)
        case msgspec.inspect.ListType(item_type=item):
            yield from _patterns(item)
        case _:
            return


PATTERN_FIELDS = sorted(set(_pattern_fields()))


def test_every_name_bearing_field_is_found() -> None:
    names = {name for name, _ in PATTERN_FIELDS}
    assert {"CreateVm.name", "HostRef.host_id", "UploadImage.sha256", "CaptureVm.image"} <= names


@pytest.mark.parametrize(("field", "pattern"), PATTERN_FIELDS, ids=[f for f, _ in PATTERN_FIELDS])
def test_every_pattern_refuses_padding(field: str, pattern: str) -> None:
    compiled = re.compile(pattern)
    samples = ("web-1", "tiny", SHA, "host-1", "52:54:00:12:34:56")
    valid = next(v for v in samples if compiled.search(v))
    for bad in [valid + s for s in BAD_SUFFIXES] + [p + valid for p in BAD_PREFIXES]:
        assert compiled.search(bad) is None, f"{field} accepts {bad!r}"


def _decode_cases() -> Iterator[tuple[str, msgspec.json.Decoder[Any], dict[str, Any], str]]:
    yield "create_vm", msgspec.json.Decoder(m.CreateVm), {"name": "web", "size": "s"}, "name"
    yield "vm_ref", msgspec.json.Decoder(m.VmRef), {"name": "web"}, "name"
    yield "host_ref", msgspec.json.Decoder(m.HostRef), {"host_id": "h1"}, "host_id"
    yield "list_vms", msgspec.json.Decoder(lm.ListVms), {"host": "h1"}, "host"
    yield "attach", msgspec.json.Decoder(m.AttachDisk), {"vm": "web", "size_mib": 1}, "vm"
    yield "capture_name", msgspec.json.Decoder(m.CaptureVm), {"name": "web", "image": "i"}, "name"
    yield "capture_image", msgspec.json.Decoder(m.CaptureVm), {"name": "web", "image": "i"}, "image"
    upload = {"name": "img", "sha256": SHA, "size_bytes": 1}
    yield "upload_name", msgspec.json.Decoder(UploadImage), upload, "name"
    yield "upload_sha", msgspec.json.Decoder(UploadImage), upload, "sha256"
    yield "image_ref", msgspec.json.Decoder(ImageRef), {"name": "img"}, "name"
    captured = {"image": "img", "vm": "web", "host_id": "h1"}
    for key in ("image", "vm", "host_id"):
        yield f"captured_{key}", msgspec.json.Decoder(ImageCaptured), captured, key


DECODE_CASES = list(_decode_cases())


@pytest.mark.parametrize(
    ("decoder", "body", "key"), [c[1:] for c in DECODE_CASES], ids=[c[0] for c in DECODE_CASES]
)
@pytest.mark.parametrize("pad", ["suffix_newline", "suffix_crlf", "prefix_space", "suffix_space"])
def test_padded_names_are_refused_on_decode(
    decoder: msgspec.json.Decoder[Any], body: dict[str, Any], key: str, pad: str
) -> None:
    decoder.decode(msgspec.json.encode(body))  # the unpadded body is fine
    value = body[key]
    padded = {
        "suffix_newline": value + "\n",
        "suffix_crlf": value + "\r\n",
        "prefix_space": " " + value,
        "suffix_space": value + " ",
    }[pad]
    with pytest.raises(msgspec.ValidationError):
        decoder.decode(msgspec.json.encode({**body, key: padded}))


def test_api_decoder_refuses_a_vm_name_with_a_trailing_newline() -> None:
    with pytest.raises(msgspec.DecodeError):
        codec.vm_ref.decode(b'{"name": "web\\n"}')


@pytest.mark.parametrize("bad", ["web\n", " web", "web ", "web\r\n", "we\nb"])
def test_id_constructors_refuse_padding(bad: str) -> None:
    with pytest.raises(ProtocolError):
        ids.vm_name(bad)
    with pytest.raises(ProtocolError):
        ids.host_id(bad)


def test_disk_ids_refuse_a_trailing_newline() -> None:
    from hostagent.disks import DISK_ID_RE

    assert DISK_ID_RE.search("web-os-1")
    assert DISK_ID_RE.search("web-os-1\n") is None
