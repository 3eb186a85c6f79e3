"""Hostile and malformed messages for every subject the scheduler and the agents listen on.

Hypothesis builds a plausible body for a subject (known fields with good or hostile values,
unknown fields, huge strings and lists, unicode, negative sizes, request ids from a small pool so
that they repeat), then maybe mutates its bytes (truncation, a flipped byte, invalid UTF-8, deep
nesting, an oversized body, wrong top-level type).

What the fuzzer may *not* forge on an unauthenticated bus, because no check could refuse it: a
well-formed heartbeat for a real agent's own subject, or a well-formed current-generation command
for a real agent (access control is what stops those). So heartbeats on a real agent's subject
always name another host, and commands to a real agent carry stale generations (0; every placed
VM has generation >= 1) or start VMs the scheduler never created (orphans it must remove).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from hypothesis import strategies as st

from common import subjects
from common.config import AZURE_SIZES


class Kind(StrEnum):
    REQUEST = "request"
    """API request/reply: must get a typed reply."""
    NO_REPLY = "no_reply"
    """An API subject published without a reply inbox: dropped and logged."""
    JOB = "job"
    """The durable jobs stream: processed or rejected (an event), always acked."""
    HEARTBEAT = "heartbeat"
    COMMAND = "command"


@dataclass(frozen=True)
class Case:
    kind: Kind
    subject: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    mutation: str = "none"

    def __repr__(self) -> str:
        body = self.body if len(self.body) <= 300 else self.body[:300] + b"..."
        return f"Case({self.kind}, {self.subject!r}, {body!r}, {self.headers}, {self.mutation})"


VM_POOL = [f"fz-{i}" for i in range(10)]
"""VM names the fuzzer creates, changes and deletes through the API."""
FAKE_HOSTS = [f"fzh-{i}" for i in range(3)]
"""Hosts that exist only through fuzzed heartbeats (they go dead when those stop)."""
CAPTURE_REPORTS = subjects.host_captured(FAKE_HOSTS[0])
"""An agent's capture report subject: served by the scheduler like the API (typed replies)."""
REQUEST_IDS = [f"rq-{i}" for i in range(6)]
MSG_IDS = [f"mid-{i}" for i in range(6)]
SIZES = [size.name for size in AZURE_SIZES[:4]]

API_FIELDS: dict[str, tuple[str, ...]] = {
    subjects.VM_CREATE: ("name", "size", "image", "region", "availability_set", "data_disks_mib"),
    subjects.VM_GET: ("name",),
    subjects.VM_LIST: ("state", "host", "region"),
    subjects.VM_STOP: ("name",),
    subjects.VM_START: ("name",),
    subjects.VM_DELETE: ("name",),
    subjects.HOST_LIST: (),
    subjects.HOST_CORDON: ("host_id",),
    subjects.HOST_UNCORDON: ("host_id",),
    subjects.HOST_DRAIN: ("host_id",),
    subjects.SIZES_LIST: (),
    subjects.VM_CAPTURE: ("name", "image"),
    subjects.DISK_ATTACH: ("vm", "size_mib"),
    subjects.DISK_DETACH: ("vm", "disk_id"),
    subjects.IMAGE_LIST: (),
    subjects.IMAGE_UPLOAD: ("name", "sha256", "size_bytes", "os", "format"),
    subjects.IMAGE_DELETE: ("name",),
    subjects.VNET_CREATE: ("name", "cidr", "region"),
    subjects.VNET_GET: ("name",),
    subjects.VNET_LIST: ("region",),
    subjects.VNET_DELETE: ("name",),
    subjects.ENDPOINT_ADD: ("vm", "vm_port", "public_port", "protocol", "allow"),
    subjects.ENDPOINT_REMOVE: ("vm", "vm_port", "protocol"),
    CAPTURE_REPORTS: ("image", "vm", "host_id", "sha256", "size_bytes", "error"),
    subjects.USAGE_GET: ("since", "until"),
}
JOB_SUBJECTS = [
    subjects.job_subject(s)
    for s in (
        subjects.VM_CREATE,
        subjects.VM_STOP,
        subjects.VM_START,
        subjects.VM_DELETE,
        subjects.VNET_CREATE,
        subjects.ENDPOINT_ADD,
    )
] + ["stratus.jobs.vm.bogus", subjects.job_subject(subjects.IMAGE_DELETE)]

_GLYPHS = ["a", "-", "é", "\u4e2d", "\U0001f600", "\x00", "\u202e", ".", "*", ">", " "]

huge_text = st.builds(
    lambda glyph, n: glyph * n, st.sampled_from(_GLYPHS), st.sampled_from([64, 129, 5000, 70_000])
)
short_text = st.text(max_size=24)
texts = st.one_of(short_text, huge_text)
ints = st.one_of(
    st.integers(-5, 5),
    st.integers(-(2**70), 2**70),
    st.sampled_from([-1, 0, 2**31, 2**63 - 1, 2**63, 2**64]),
)
scalars = st.one_of(st.none(), st.booleans(), ints, st.floats(), texts)
any_json = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(short_text, inner, max_size=4)
    ),
    max_leaves=8,
)
small_scalars = st.one_of(st.none(), st.booleans(), ints, short_text)
huge_list = st.builds(lambda item, n: [item] * n, small_scalars, st.sampled_from([9, 300, 2000]))
hostile = st.one_of(any_json, huge_list, huge_text)

vm_names = st.one_of(st.sampled_from(VM_POOL), st.from_regex(r"\A[a-z0-9-]{1,63}\Z"), texts)
host_ids = st.one_of(st.sampled_from(FAKE_HOSTS), st.from_regex(r"\A[A-Za-z0-9_-]{1,63}\Z"))

GOOD: dict[str, st.SearchStrategy[Any]] = {
    "name": vm_names,
    "vm": vm_names,
    "size": st.one_of(st.sampled_from(SIZES), texts),
    "image": st.sampled_from(["tiny", "fz-img", "no-such-image"]),
    "region": st.sampled_from(["local", "elsewhere"]),
    "availability_set": st.sampled_from(["as-1", "as-2"]),
    "data_disks_mib": st.lists(ints, max_size=10),
    "state": st.sampled_from(["running", "pending", "deleted", "nonsense"]),
    "host": host_ids,
    "host_id": host_ids,
    "size_mib": ints,
    "size_bytes": ints,
    "disk_id": st.sampled_from(["d-1", "fz-0-data-0", ""]),
    "sha256": st.one_of(st.from_regex(r"\A[0-9a-f]{64}\Z"), short_text),
    "os": st.sampled_from(["linux", "windows"]),
    "format": st.sampled_from(["qcow2", "raw", "vhd", ""]),
    "error": short_text,
    "since": st.sampled_from(["2026-01-01T00:00:00Z", "2030-01-01T00:00:00+02:00", "yesterday"]),
    "until": st.sampled_from(["2026-01-02T00:00:00Z", "2000-01-01T00:00:00Z"]),
    "cidr": st.sampled_from(["10.1.0.0/24", "10.1.0.0/16", "10.1.0.5/24", "10.0.0.0/8", "x/24"]),
    "vm_port": st.one_of(st.integers(-1, 70_000), texts),
    "public_port": st.one_of(st.none(), st.integers(-1, 70_000)),
    "protocol": st.sampled_from(["tcp", "udp", "sctp"]),
    "allow": st.lists(st.sampled_from(["0.0.0.0/0", "203.0.113.7/24", "nope"]), max_size=20),
}


@st.composite
def json_object(draw: st.DrawFn, fields: tuple[str, ...], extra: dict[str, Any]) -> dict[str, Any]:
    """Some of ``fields`` with good or hostile values, maybe an unknown field."""
    body: dict[str, Any] = {}
    for name in fields:
        choice = draw(st.integers(0, 9))
        if choice < 7:
            body[name] = draw(GOOD[name]) if name in GOOD else draw(hostile)
        elif choice < 9:
            body[name] = draw(hostile)
    body.update(extra)
    if draw(st.integers(0, 9)) == 0:
        body[draw(short_text)] = draw(any_json)
    return body


request_ids = st.one_of(st.none(), st.sampled_from(REQUEST_IDS), texts)


MAX_BODY = 512 * 1024
"""Bodies are cut here: NATS refuses payloads above its max_payload (1 MiB) at the client."""


@st.composite
def mutated(draw: st.DrawFn, body: bytes) -> tuple[bytes, str]:
    """The body itself most of the time, or a hostile variant of its bytes (at most MAX_BODY)."""
    raw, how = draw(_mutated(body[:MAX_BODY]))
    return raw[:MAX_BODY], how


@st.composite
def _mutated(draw: st.DrawFn, body: bytes) -> tuple[bytes, str]:
    how = draw(
        st.sampled_from(
            ["none"] * 6
            + ["truncate", "flip", "utf8", "nest", "oversize", "empty", "wrap", "scalar"]
        )
    )
    if how == "truncate" and body:
        return body[: draw(st.integers(0, len(body) - 1))], how
    if how == "flip" and body:
        at = draw(st.integers(0, len(body) - 1))
        return body[:at] + bytes([draw(st.integers(0, 255))]) + body[at + 1 :], how
    if how == "utf8":
        return body[:1] + b"\xff\xfe\xc3" + body[1:], how
    if how == "nest":
        depth = draw(st.sampled_from([50, 5000, 100_000]))
        return b"[" * depth + body + b"]" * depth, how
    if how == "oversize":
        return b'{"name":"' + b"x" * (70 * 1024) + b'"}', how
    if how == "empty":
        return b"", how
    if how == "wrap":
        return b"[" + body + b"]", how
    if how == "scalar":
        return draw(st.sampled_from([b"null", b"0", b'"x"', b"true", b"-1e999"])), how
    return body, "none"


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, allow_nan=True).encode("utf-8", "surrogatepass")


@st.composite
def api_cases(draw: st.DrawFn) -> Case:
    subject = draw(st.sampled_from([*API_FIELDS, "stratus.api.vm.bogus"]))
    extra = {"request_id": draw(request_ids)} if draw(st.booleans()) else {}
    body, how = draw(mutated(_dumps(draw(json_object(API_FIELDS.get(subject, ()), extra)))))
    kind = Kind.NO_REPLY if draw(st.integers(0, 19)) == 0 else Kind.REQUEST
    return Case(kind, subject, body, mutation=how)


@st.composite
def valid_traffic(draw: st.DrawFn) -> Case:
    """Well-formed creates, stops, starts and deletes of the pool: state for the hostile rest."""
    name = draw(st.sampled_from(VM_POOL))
    subject = draw(st.sampled_from([subjects.VM_CREATE] * 3 + list(_VM_CHANGES)))
    body: dict[str, Any] = {"name": name}
    if subject == subjects.VM_CREATE:
        body["size"] = draw(st.sampled_from(SIZES[:2]))
    if draw(st.booleans()):
        body["request_id"] = draw(st.sampled_from(REQUEST_IDS))
    return Case(Kind.REQUEST, subject, _dumps(body))


_VM_CHANGES = (subjects.VM_STOP, subjects.VM_START, subjects.VM_DELETE)


@st.composite
def job_cases(draw: st.DrawFn) -> Case:
    subject = draw(st.sampled_from(JOB_SUBJECTS))
    fields = API_FIELDS.get(subjects.api_subject_of_job(subject), ("name",))
    extra = {"request_id": draw(request_ids)} if draw(st.booleans()) else {}
    body, how = draw(mutated(_dumps(draw(json_object(fields, extra)))))
    headers = {"Nats-Msg-Id": draw(st.sampled_from(MSG_IDS))} if draw(st.booleans()) else {}
    return Case(Kind.JOB, subject, body, headers, how)


def observed_vm(name: str, generation: int, state: str) -> dict[str, Any]:
    return {
        "name": name,
        "generation": generation,
        "state": state,
        "cpu_milli": 1000,
        "mem_mib": 1024,
    }


@st.composite
def heartbeat_cases(draw: st.DrawFn, real_hosts: tuple[str, ...]) -> Case:
    """A heartbeat on a fake host's subject (maybe well formed: it registers that host), or on
    any subject with a body that names another host."""
    on = draw(st.sampled_from([*FAKE_HOSTS, *real_hosts]))
    named = (
        on
        if on in FAKE_HOSTS and draw(st.booleans())
        else draw(st.sampled_from([h for h in (*FAKE_HOSTS, *real_hosts) if h != on]))
    )
    vms = draw(
        st.lists(
            st.builds(
                observed_vm,
                vm_names,
                st.one_of(st.integers(0, 4), ints),
                st.sampled_from(["running", "paused", "failed", "bogus"]),
            ),
            max_size=3,
        )
    )
    body = {
        "host_id": named,
        "seq": draw(st.one_of(st.integers(0, 1000), ints)),
        "boot_id": draw(st.sampled_from(["b-1", "b-2"])),
        "capacity": draw(
            st.sampled_from(
                [{"cpu_milli": 8000, "mem_mib": 16384}, {"cpu_milli": -1, "mem_mib": 0}, {}]
            )
        ),
        "vms": vms,
    }
    if draw(st.integers(0, 4)) == 0:
        body["fenced"] = draw(hostile)
    raw, how = draw(mutated(_dumps(body)))
    return Case(Kind.HEARTBEAT, subjects.host_heartbeat(on), raw, mutation=how)


@st.composite
def command_cases(draw: st.DrawFn, real_hosts: tuple[str, ...]) -> Case:
    """Commands to a real agent: stale generations, orphans, another host's id, junk."""
    to = draw(st.sampled_from(real_hosts))
    name = draw(st.sampled_from(VM_POOL))
    commands = draw(
        st.lists(
            st.one_of(
                st.builds(
                    lambda op: {"type": op, "name": name, "generation": 0},
                    st.sampled_from(["stop_vm", "delete_vm", "resume_vm"]),
                ),
                st.builds(
                    lambda n: {
                        "type": "start_vm",
                        "generation": 1,
                        "vm": {
                            "name": f"fzo-{n}",
                            "size": "Small",
                            "cpu_milli": 500,
                            "mem_mib": 256,
                            "image": "tiny",
                        },
                    },
                    st.integers(0, 3),
                ),
                st.builds(lambda g: {"type": "stop_vm", "name": name, "generation": g}, ints),
                st.builds(lambda t: {"type": t, "name": name}, texts),
            ),
            max_size=4,
        )
    )
    named = to if draw(st.integers(0, 3)) else draw(st.sampled_from([*FAKE_HOSTS, "x"]))
    raw, how = draw(mutated(_dumps({"host_id": named, "commands": commands})))
    return Case(Kind.COMMAND, subjects.host_commands(to), raw, mutation=how)


def cases(real_hosts: tuple[str, ...]) -> st.SearchStrategy[Case]:
    return st.one_of(
        valid_traffic(),
        api_cases(),
        api_cases(),
        api_cases(),
        job_cases(),
        heartbeat_cases(real_hosts),
        command_cases(real_hosts),
    )
