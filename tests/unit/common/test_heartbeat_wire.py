"""Heartbeats and their acks leave fields at their default off the wire, and read the same
either way: an agent or scheduler that spells every field out is understood as before."""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import given, strategies as st

from common import codec
from common.messages import Heartbeat, HeartbeatAck, ObservedState, ObservedVm
from common.replica_messages import ReplicaState, ReplicaStatus
from common.resources import Resources

RUNNING = ObservedState.RUNNING
STEADY = Heartbeat(
    host_id="host-00001",
    seq=41,
    boot_id="4f1c2a0e9b7d4c3a",
    capacity=Resources(16000, 65536),
    vms_omitted=True,
    inventory_digest="ab" * 8,
)

OPTIONAL: dict[str, Any] = {
    "region": st.sampled_from(["local", "west"]),
    "fault_domain": st.sampled_from(["fd-0", "fd-2"]),
    "labels": st.sampled_from([{}, {"gpu": "yes"}]),
    "cpu_overcommit": st.sampled_from([None, 2.0]),
    "driver": st.sampled_from(["fake", "qemu"]),
    "fenced": st.booleans(),
    "vms": st.sampled_from(
        [[], [ObservedVm(name="web-1", generation=3, state=RUNNING, cpu_milli=500, mem_mib=512)]]
    ),
    "underlay_ip": st.sampled_from(["", "10.0.0.7"]),
    "network_digest": st.sampled_from(["", "cd" * 8]),
    "disk_capacity_mib": st.sampled_from([0, 4096]),
    "replica_port": st.sampled_from([0, 10809]),
    "replica_digest": st.sampled_from(["", "ef" * 8]),
    "replicas": st.sampled_from([[], [ReplicaStatus(disk_id="d-1", state=ReplicaState.FILLING)]]),
}
"""Every field a heartbeat may leave at its default, each with its default and another value."""


def spelled_out(message: msgspec.Struct) -> bytes:
    """``message`` as a sender that writes every field (defaults included) puts it."""
    return msgspec.json.encode(msgspec.structs.asdict(message))


def test_a_steady_report_carries_only_what_differs_from_the_defaults() -> None:
    wire = msgspec.json.decode(codec.encode(STEADY))
    assert set(wire) == {
        "host_id",
        "seq",
        "boot_id",
        "capacity",
        "vms_omitted",
        "inventory_digest",
    }
    assert len(codec.encode(STEADY)) < len(spelled_out(STEADY)) * 0.6


def test_every_optional_heartbeat_field_is_covered() -> None:
    defaulted = Heartbeat.__struct_fields__[-len(Heartbeat.__struct_defaults__) :]
    assert set(OPTIONAL) | {"inventory_digest", "vms_omitted"} == set(defaulted)


@given(st.fixed_dictionaries(OPTIONAL))
def test_a_heartbeat_reads_the_same_with_or_without_its_defaults(fields: dict[str, Any]) -> None:
    heartbeat = msgspec.structs.replace(STEADY, **fields)
    assert codec.heartbeat.decode(codec.encode(heartbeat)) == heartbeat
    assert codec.heartbeat.decode(spelled_out(heartbeat)) == heartbeat


def test_an_ack_reads_the_same_with_or_without_its_defaults() -> None:
    ack = HeartbeatAck(
        host_id="host-00001",
        seq=41,
        scheduler_id="sched-1",
        heartbeat_interval_s=1.0,
        fence_after_s=4.0,
        inventory_digest="ab" * 8,
        claim_after_s=8.0,
    )
    decoder = msgspec.json.Decoder(HeartbeatAck)
    assert b"refused" not in codec.encode(ack) and b"epoch" not in codec.encode(ack)
    assert decoder.decode(codec.encode(ack)) == ack == decoder.decode(spelled_out(ack))
    assert decoder.decode(codec.encode(ack)).refused == ""  # the agent reads: not refused
