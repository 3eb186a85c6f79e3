"""Generate docs/protocol.md from the wire structs and the subjects, so the doc cannot drift.

    python tools/gen_protocol_doc.py > docs/protocol.md

The subjects, streams and error codes are described by hand below; the message types are
rendered from ``msgspec.json.schema_components`` over common/messages.py (by the sibling module
schema_markdown.py). Subjects or error codes missing from the hand-written part show up as
"undocumented" (and a test fails).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec
from schema_markdown import (
    cell,
    field_docs,
    link,
    ref_name,
    render_component,
    schema_list,
    union_line,
)

from common import list_messages as lm, messages as m, streams, subjects
from common.console_messages import ConsoleEvent, ConsoleInput, ConsoleReply, ConsoleTail
from common.image_messages import (
    ImageCaptured,
    ImageListReply,
    ImageRef,
    ImageReply,
    ListImages,
    UploadImage,
)
from common.migration_messages import MigrateVm
from common.network_messages import (
    AddEndpoint,
    CreateVnet,
    ListVnets,
    RemoveEndpoint,
    VnetListReply,
    VnetRef,
    VnetReply,
)
from common.resources import Resources
from common.usage_messages import UsageQuery, UsageReply

UNDOCUMENTED = "(undocumented)"


@dataclass(frozen=True)
class Subject:
    subject: str
    pattern: str  # request/reply, publish, JetStream
    publisher: str
    subscriber: str
    body: str
    reply: str = ""


PUBLISHERS = "publishers, CLI"
SCHEDULER = "scheduler"
SCHEDULER_QUEUE = "scheduler (queue group)"


def _api(subject: str, body: str, reply: str) -> Subject:
    return Subject(subject, "request/reply", PUBLISHERS, SCHEDULER_QUEUE, body, reply)


SUBJECTS: tuple[Subject, ...] = (
    _api(subjects.VM_CREATE, "CreateVm", "VmReply"),
    _api(subjects.VM_GET, "VmRef", "VmReply"),
    _api(subjects.VM_LIST, "ListVms", "VmListReply"),
    _api(subjects.VM_STOP, "VmRef", "VmReply"),
    _api(subjects.VM_START, "VmRef", "VmReply"),
    _api(subjects.VM_DELETE, "VmRef", "VmReply"),
    _api(subjects.HOST_LIST, "ListHosts", "HostListReply"),
    _api(subjects.HOST_CORDON, "HostRef", "HostReply"),
    _api(subjects.HOST_UNCORDON, "HostRef", "HostReply"),
    _api(subjects.HOST_DRAIN, "HostRef", "HostReply"),
    _api(subjects.SIZES_LIST, "ListSizes", "SizeListReply"),
    _api(subjects.USAGE_GET, "UsageQuery", "UsageReply"),
    _api(subjects.VM_CAPTURE, "CaptureVm", "VmReply"),
    _api(subjects.DISK_ATTACH, "AttachDisk", "VmReply"),
    _api(subjects.DISK_DETACH, "DetachDisk", "VmReply"),
    _api(subjects.IMAGE_LIST, "ListImages", "ImageListReply"),
    _api(subjects.IMAGE_UPLOAD, "UploadImage", "ImageReply"),
    _api(subjects.IMAGE_DELETE, "ImageRef", "ImageReply"),
    _api(subjects.VNET_CREATE, "CreateVnet", "VnetReply"),
    _api(subjects.VNET_GET, "VnetRef", "VnetReply"),
    _api(subjects.VNET_LIST, "ListVnets", "VnetListReply"),
    _api(subjects.VNET_DELETE, "VnetRef", "VnetReply"),
    _api(subjects.ENDPOINT_ADD, "AddEndpoint", "VmReply"),
    _api(subjects.ENDPOINT_REMOVE, "RemoveEndpoint", "VmReply"),
    _api(subjects.VM_MIGRATE, "MigrateVm", "VmReply"),
    _api(subjects.VM_MIGRATE_CANCEL, "VmRef", "VmReply"),
    Subject(
        subjects.job_subject(f"{subjects.ROOT}.api.<noun>.<verb>"),
        f"JetStream `{subjects.JOBS_STREAM}`",
        PUBLISHERS,
        f"scheduler (durable consumer `{subjects.JOBS_CONSUMER}`)",
        "as the API subject",
        "PubAck; failures: JobRejected",
    ),
    Subject(
        subjects.vm_event("<name>"),
        f"JetStream `{subjects.EVENTS_STREAM}`",
        SCHEDULER,
        "dashboards, publishers",
        "VmEvent",
    ),
    Subject(
        subjects.host_event("<host_id>"),
        f"JetStream `{subjects.EVENTS_STREAM}`",
        SCHEDULER,
        "dashboards, publishers",
        "HostEvent",
    ),
    Subject(
        subjects.JOB_REJECTED,
        f"JetStream `{subjects.EVENTS_STREAM}`",
        SCHEDULER,
        "publishers",
        "JobRejected",
    ),
    Subject(
        subjects.host_commands("<host_id>"), "publish", SCHEDULER, "host agent", "HostCommands"
    ),
    Subject(
        subjects.host_heartbeat("<host_id>"),
        "request/reply",
        "host agent",
        "scheduler (all: `" + subjects.HEARTBEAT_WILDCARD + "`)",
        "Heartbeat",
        "HeartbeatAck",
    ),
    Subject(
        subjects.host_captured("<host_id>"),
        "request/reply",
        "host agent (that host's only)",
        "scheduler (queue group; `host_id` must be the subject's host and the capture's)",
        "ImageCaptured",
        "ImageReply",
    ),
    Subject(
        subjects.console_output("<host_id>", "<name>"),
        "publish",
        "host agent running the VM (that host's only)",
        "`stratus vm console`, the HTTP console (publishers, dashboards)",
        "ConsoleEvent",
    ),
    Subject(
        subjects.console_tail("<host_id>", "<name>"),
        "request/reply",
        "publishers, dashboards, CLI (`vm logs`)",
        "host agent running the VM",
        "ConsoleTail",
        "ConsoleReply",
    ),
    Subject(
        subjects.console_input("<host_id>", "<name>"),
        "request/reply",
        "publishers, admins, CLI (`vm console`)",
        "host agent running the VM",
        "ConsoleInput",
        "ConsoleReply",
    ),
    Subject(
        subjects.STATE_SUBJECT,
        f"JetStream `{subjects.STATE_STREAM}`",
        "the leading scheduler (with `Nats-Expected-Last-Sequence`: its write fence)",
        "standby schedulers (by message get)",
        "one committed batch of the leader's store (msgpack), or a new leader's fence record",
    ),
    Subject(
        subjects.SIM_SILENCE,
        "request/reply",
        "benchmarks, tests",
        "simulated-host pools (`stratus agent --simulate N`)",
        "a host id (text): that simulated host goes silent",
        "`ok` from the pool that has the host",
    ),
)

WILDCARDS: dict[str, str] = {
    subjects.API_WILDCARD: "the scheduler serves every API subject (queue group)",
    subjects.JOBS_WILDCARD: f"captured by the `{subjects.JOBS_STREAM}` stream",
    subjects.EVENTS_WILDCARD: f"captured by the `{subjects.EVENTS_STREAM}` stream",
    subjects.HEARTBEAT_WILDCARD: "the scheduler receives every host's heartbeat",
    subjects.CAPTURED_WILDCARD: "the scheduler receives every host's capture reports (queue group)",
    subjects.CONSOLE_WILDCARD: "each agent serves the consoles of its own VMs "
    "(`stratus.console.<host_id>.*.tail|in`)",
}

ERROR_CODES: dict[str, str] = {
    m.ErrorCode.INVALID_REQUEST: "the body does not decode or a field breaks its constraints",
    m.ErrorCode.UNKNOWN_SIZE: "the size is not in the catalogue (`stratus.api.sizes.list`)",
    m.ErrorCode.CONFLICT: "a VM of that name exists with another spec (same spec: it is returned)",
    m.ErrorCode.NOT_FOUND: "no such VM, host or image",
    m.ErrorCode.INSUFFICIENT_CAPACITY: "the VM is larger than every host (in its region), or a "
    "drain has nowhere to move the host's VMs",
    m.ErrorCode.INVALID_STATE: "not allowed in the VM's current state (e.g. being deleted)",
    m.ErrorCode.TOO_LARGE: "the body is larger than the scheduler accepts (or one listed item "
    "alone is larger than a reply may be)",
    m.ErrorCode.UNAVAILABLE: "no scheduler answered (clients report this, e.g. no responders)",
    m.ErrorCode.INTERNAL: "an unexpected failure in the scheduler",
    m.ErrorCode.INVALID_NETWORK: "a network range the cluster cannot take (not IPv4, larger "
    "than /16 or smaller than /29, reserved, overlapping another network), an address outside "
    "its network or reserved in it (network, gateway, broadcast), a network of another region "
    "than the VM, two NICs in one network, an endpoint on a VM without a NIC, a bad `allow` "
    "range",
    m.ErrorCode.ADDRESS_IN_USE: "the address asked for is another VM's, or the public port asked "
    "for is taken on the VM's host (nothing changed)",
    m.ErrorCode.NETWORK_IN_USE: "the network still has VMs with a NIC in it (stopped ones too: "
    "they keep their addresses); delete them first",
}

GROUPS: tuple[tuple[str, tuple[object, ...]], ...] = (
    (
        "API requests",
        (
            *(m.CreateVm, m.VmRef, m.HostRef, lm.ListVms, lm.ListHosts, lm.ListSizes, UsageQuery),
            *(m.CaptureVm, m.AttachDisk, m.DetachDisk),
            *(ListImages, UploadImage, ImageRef),
            *(CreateVnet, VnetRef, ListVnets, AddEndpoint, RemoveEndpoint),
            MigrateVm,
        ),
    ),
    (
        "API replies",
        (
            *(m.VmReply, m.HostReply, lm.VmListReply, lm.HostListReply, lm.SizeListReply),
            *(UsageReply, ImageReply, ImageListReply, VnetReply, VnetListReply, m.ErrorReply),
        ),
    ),
    ("Agent protocol", (m.HostCommands, m.Heartbeat, m.HeartbeatAck, ImageCaptured)),
    ("Events", (m.Event,)),
    ("Console", (ConsoleEvent, ConsoleTail, ConsoleInput, ConsoleReply)),
)


# --------------------------------------------------------------------------- document parts


def message_types() -> list[type]:
    """Every struct and enum defined in common/messages.py (plus Resources, which it uses)."""
    found: list[type] = [Resources]
    for value in vars(m).values():
        if isinstance(value, type) and value.__module__ == m.__name__:
            found.append(value)
    return found


def render_types() -> list[str]:
    grouped = [member for _, members in GROUPS for member in members]
    leftovers = [cls for cls in message_types() if cls not in grouped]
    top, components = msgspec.json.schema_components(
        [*grouped, *leftovers], ref_template="#/$defs/{name}"
    )
    docs = field_docs(
        [*message_types(), *(m for _, ms in GROUPS for m in ms if isinstance(m, type))]
    )
    shown: set[str] = set()
    lines: list[str] = []
    position = 0
    for title, members in GROUPS:
        lines += [f"## {title}", ""]
        for schema in top[position : position + len(members)]:
            name = ref_name(schema)
            if name is None:  # a tagged union
                lines += [union_line(schema), ""]
                names = [ref_name(option) for option in schema_list(schema.get("anyOf"))]
            else:
                names = [name]
            for member in filter(None, names):
                lines += render_component(member, components[member], docs.get(member, {}))
                shown.add(member)
        position += len(members)
    lines += ["## Shared types", ""]
    for name in sorted(set(components) - shown):
        lines += render_component(name, components[name], docs.get(name, {}))
    return lines


def render_subjects() -> list[str]:
    lines = [
        "| subject | pattern | publisher | subscriber | body | reply |",
        "|---|---|---|---|---|---|",
    ]
    for row in SUBJECTS:
        body = link(row.body) if row.body[:1].isupper() else row.body
        reply = link(row.reply) if row.reply.isidentifier() else row.reply
        lines.append(
            f"| `{row.subject}` | {row.pattern} | {row.publisher} | {row.subscriber} | "
            f"{body} | {reply} |"
        )
    lines += ["", "Subscriptions by wildcard:", ""]
    lines += [f"- `{wildcard}`: {text}" for wildcard, text in WILDCARDS.items()]
    missing = undocumented_subjects()
    if missing:
        lines += ["", f"{UNDOCUMENTED}: " + ", ".join(f"`{s}`" for s in missing)]
    return [*lines, ""]


def subject_constants() -> list[str]:
    """Every fixed subject (or wildcard) constant of common/subjects.py."""
    prefix = subjects.ROOT + "."
    return [
        value
        for name, value in vars(subjects).items()
        if name.isupper() and isinstance(value, str) and value.startswith(prefix)
    ]


def undocumented_subjects() -> list[str]:
    described = {row.subject for row in SUBJECTS} | set(WILDCARDS)
    return [subject for subject in subject_constants() if subject not in described]


def render_errors() -> list[str]:
    """Meanings come from ERROR_CODES, else from the member's docstring in messages.py."""
    docs = field_docs([m.ErrorCode]).get(m.ErrorCode.__name__, {})
    lines = ["| code | meaning |", "|---|---|"]
    for code in m.ErrorCode:
        meaning = ERROR_CODES.get(code) or docs.get(code.name, UNDOCUMENTED)
        lines.append(f"| `{code}` | {cell(meaning)} |")
    return [*lines, ""]


def render_streams() -> list[str]:
    jobs, events = streams.jobs_stream_config(), streams.events_stream_config()
    window_h = (jobs.duplicate_window or 0) / 3600
    max_age_d = (events.max_age or 0) / 86400
    return [
        f"- **`{jobs.name}`** (`{subjects.JOBS_WILDCARD}`): durable submission. Publish a "
        "mutation body on `stratus.jobs.<noun>.<verb>` with the header `Nats-Msg-Id: "
        "<request id>`; JetStream stores a republished id once within "
        f"{window_h:g} h, and the PubAck means the job is durable. Retention is work-queue: "
        f"the scheduler's durable consumer `{subjects.JOBS_CONSUMER}` acks a job only after it "
        "committed its effect. A job that cannot be carried out produces a `JobRejected` event "
        f"on `{subjects.JOB_REJECTED}`; the others show up as VM and host events.",
        f"- **`{events.name}`** (`{subjects.EVENTS_WILDCARD}`): one event per state change, "
        f"numbered by `seq`, kept {max_age_d:g} days. Consumers replay from any sequence; "
        "events carry `Nats-Msg-Id` so a republished event is stored once. An event whose "
        "publication was lost (nats-server stopped as it went out) is published again once "
        "its ack is overdue, after events numbered later: the stream's order is not always "
        "`seq` order, so a consumer that keeps a VM's state ignores an event older (lower "
        "`seq`) than the last it applied for that VM.",
        f"- **`{subjects.IMAGES_BUCKET}`** (JetStream object store): image bytes, one object per "
        "image named by its sha256 (hex). An uploader stages the chunks (`$O."
        f"{subjects.IMAGES_BUCKET}.C.<nuid>`, no metadata), then registers them with "
        f"`{subjects.IMAGE_UPLOAD}` naming the `nuid`; the scheduler checks their size and "
        "digest and writes the object's metadata itself. Agents fetch images by digest into "
        "their cache.",
        f"- **`{subjects.LEASE_BUCKET}`** (JetStream KV, TTL = the lease): the leader lease (key "
        "`leader`: the leading scheduler's node); its revision when won is the leader's epoch.",
        f"- **`{subjects.STATE_STREAM}`** (`{subjects.STATE_SUBJECT}`) and "
        f"**`{subjects.SNAPSHOT_BUCKET}`** (object store): the leader's committed batches and "
        "snapshots of its store, from which a standby keeps its own store (docs/operations.md).",
        "",
    ]


INTRO = """\
# Stratus protocol

Generated by `tools/gen_protocol_doc.py` from `common/messages.py` and `common/subjects.py`;
do not edit by hand (`python tools/gen_protocol_doc.py > docs/protocol.md`).

Every body is JSON (msgspec). Readers ignore unknown fields and new fields always have
defaults, so old readers keep working with newer writers. Tagged unions carry their tag in
the `type` field.

## Conventions

- **API** (`stratus.api.<noun>.<verb>`): NATS request/reply, answered by the scheduler. A
  mutation is answered only after the scheduler has committed it. Replies carry either the
  result or `error: {code, detail}`; an empty request body means `{}`.
- **Paging**: list requests take `limit` (1-1000) and `marker`, and a list reply carries `next`
  while more items remain: ask again with `marker` set to it. Items come in name order (sizes
  in the catalogue's), filters apply before paging, and a page never exceeds the server's
  `max_payload`, so it may hold fewer than `limit` items: only a reply without `next` is the
  last. Without `limit` a page holds as many items as fit; a client that ignores `next` gets
  the whole list when it fits in one message, and its first page when it does not.
- **Idempotency**: mutations take an optional `request_id`; a retry with the same id returns
  the original result. Agent commands are idempotent by `(name, generation)`.
- **Generations**: every placement of a VM gets a higher generation. An agent runs a VM only
  at the generation it was told, destroys copies with an older one, and resumes a fenced
  (paused) VM only when the scheduler confirms its generation is current.
"""


def render() -> str:
    lines = [INTRO, "## Subjects", ""]
    lines += render_subjects()
    lines += ["## Streams", ""]
    lines += render_streams()
    lines += ["## Error codes", ""]
    lines += render_errors()
    lines += render_types()
    return "\n".join(lines).rstrip() + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
