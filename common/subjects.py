"""Every NATS subject, stream and consumer name of Stratus is built here."""

from __future__ import annotations

from typing import assert_never

from common.ids import HostId, VmName
from common.messages import Event, HostEvent, JobRejected, VmEvent

ROOT = "stratus"

# Publisher API (request/reply): stratus.api.<noun>.<verb>
API_WILDCARD = f"{ROOT}.api.>"
VM_CREATE = f"{ROOT}.api.vm.create"
VM_GET = f"{ROOT}.api.vm.get"
VM_LIST = f"{ROOT}.api.vm.list"
VM_STOP = f"{ROOT}.api.vm.stop"
VM_START = f"{ROOT}.api.vm.start"
VM_DELETE = f"{ROOT}.api.vm.delete"
HOST_LIST = f"{ROOT}.api.host.list"
HOST_CORDON = f"{ROOT}.api.host.cordon"
HOST_UNCORDON = f"{ROOT}.api.host.uncordon"
HOST_DRAIN = f"{ROOT}.api.host.drain"
SIZES_LIST = f"{ROOT}.api.sizes.list"
VM_CAPTURE = f"{ROOT}.api.vm.capture"
DISK_ATTACH = f"{ROOT}.api.disk.attach"
DISK_DETACH = f"{ROOT}.api.disk.detach"
IMAGE_LIST = f"{ROOT}.api.image.list"
IMAGE_UPLOAD = f"{ROOT}.api.image.upload"
"""Register an image whose bytes the caller put in the images bucket (named by sha256)."""
IMAGE_DELETE = f"{ROOT}.api.image.delete"
IMAGES_BUCKET = "STRATUS_IMAGES"
"""JetStream object store of image bytes; each object is named by its sha256 (hex)."""
USAGE_GET = f"{ROOT}.api.usage.get"
VNET_CREATE = f"{ROOT}.api.vnet.create"
VNET_GET = f"{ROOT}.api.vnet.get"
VNET_LIST = f"{ROOT}.api.vnet.list"
VNET_DELETE = f"{ROOT}.api.vnet.delete"
ENDPOINT_ADD = f"{ROOT}.api.vm.endpoint.add"
ENDPOINT_REMOVE = f"{ROOT}.api.vm.endpoint.remove"
VM_MIGRATE = f"{ROOT}.api.vm.migrate"
"""Move a running VM to another host, live (``MigrateVm``)."""
VM_MIGRATE_CANCEL = f"{ROOT}.api.vm.migrate_cancel"
"""End a VM's live migration without a switchover (``VmRef``)."""

# Durable submission (JetStream): stratus.jobs.<noun>.<verb>, same bodies as the API.
JOBS_STREAM = "STRATUS_JOBS"
JOBS_WILDCARD = f"{ROOT}.jobs.>"
JOBS_CONSUMER = "scheduler"


def job_subject(api_subject: str) -> str:
    """``stratus.api.vm.create`` -> ``stratus.jobs.vm.create``."""
    return api_subject.replace(f"{ROOT}.api.", f"{ROOT}.jobs.", 1)


def api_subject_of_job(job_subject_: str) -> str:
    return job_subject_.replace(f"{ROOT}.jobs.", f"{ROOT}.api.", 1)


# The control plane's own (JetStream): the leader lease and the replicated state log. Only the
# scheduler role may write them (cli/natsconfig.py).
LEASE_BUCKET = "STRATUS_LEADER"
"""KV bucket holding the leader lease (scheduler/shell/leader.py)."""
STATE_STREAM = "STRATUS_STATE"
STATE_SUBJECT = f"{ROOT}.state.log"
"""The leader's committed batches (scheduler/shell/statelog.py)."""
SNAPSHOT_BUCKET = "STRATUS_STATE_SNAP"
"""Object store of state snapshots (a copy of the leader's store)."""


# Events (JetStream): stratus.events.vm.<name>, stratus.events.host.<id>
EVENTS_STREAM = "STRATUS_EVENTS"
EVENTS_WILDCARD = f"{ROOT}.events.>"
JOB_REJECTED = f"{ROOT}.events.job.rejected"


def vm_event(name: VmName | str) -> str:
    return f"{ROOT}.events.vm.{name}"


def host_event(host: HostId | str) -> str:
    return f"{ROOT}.events.host.{host}"


# Host agents: stratus.host.<id>.cmd (scheduler -> agent), stratus.host.<id>.hb (agent -> scheduler)
HEARTBEAT_WILDCARD = f"{ROOT}.host.*.hb"
CAPTURED_WILDCARD = f"{ROOT}.host.*.captured"


def host_commands(host: HostId | str) -> str:
    return f"{ROOT}.host.{host}.cmd"


def host_heartbeat(host: HostId | str) -> str:
    return f"{ROOT}.host.{host}.hb"


def host_captured(host: HostId | str) -> str:
    """Agent -> scheduler (request/reply): a capture on that host finished (or failed). Only
    that host's agent may publish here, and the scheduler checks the body names the same host."""
    return f"{ROOT}.host.{host}.captured"


# Consoles: stratus.console.<host>.<vm>.<kind>, answered by the agent running the VM.
CONSOLE_WILDCARD = f"{ROOT}.console.>"


def console_output(host: HostId | str, vm: VmName | str) -> str:
    """Agent -> readers: ``ConsoleEvent`` (only that host's agent may publish here)."""
    return f"{ROOT}.console.{host}.{vm}.out"


def console_tail(host: HostId | str, vm: VmName | str) -> str:
    """Reader -> agent (request/reply): ``ConsoleTail`` -> ``ConsoleReply``."""
    return f"{ROOT}.console.{host}.{vm}.tail"


def console_input(host: HostId | str, vm: VmName | str) -> str:
    """Operator -> agent (request/reply): ``ConsoleInput`` -> ``ConsoleReply``."""
    return f"{ROOT}.console.{host}.{vm}.in"


def vm_of_console(subject: str) -> str:
    """The VM name inside ``stratus.console.<host>.<vm>.<kind>``."""
    return subject.split(".")[3]


# Simulated-host pools (``stratus agent --simulate N``): body is a host id, the owner answers ok.
SIM_SILENCE = f"{ROOT}.sim.silence"


def host_of_heartbeat(subject: str) -> str:
    """The host id inside ``stratus.host.<id>.hb`` (or any ``stratus.host.<id>.<kind>``)."""
    return subject.split(".")[2]


def of_event(event: Event) -> str:
    """The events-stream subject an event is published on."""
    match event:
        case VmEvent():
            return vm_event(event.name)
        case HostEvent():
            return host_event(event.host_id)
        case JobRejected():
            return JOB_REJECTED
        case _:
            assert_never(event)
