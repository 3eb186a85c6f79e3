"""The heartbeat report: its inventory (left out when the scheduler holds it already), the
reports sent recently (to match their acks), and the timing an ack brings. Pure.

An inventory the scheduler says it holds (its ack names the digest) is sent as the digest alone:
at 10,000 hosts, decoding unchanged inventories was half of the scheduler's work.
"""

from __future__ import annotations

from dataclasses import dataclass

from msgspec.structs import replace

from common import codec
from common.messages import Heartbeat, HeartbeatAck, ObservedVm
from hostagent.stimuli import Instruction, Note


class InventoryReport:
    """Leaves an inventory out of a heartbeat when the scheduler holds it already."""

    __slots__ = ("_digest", "_digested", "held")

    def __init__(self) -> None:
        self.held = ""
        """The digest the scheduler last said it holds for this host."""
        self._digested: list[ObservedVm] | None = None
        self._digest = ""
        """The digest of the inventory ``_digested`` (an inventory is never changed once made:
        a report that carries the same list again has the same digest)."""

    def fill(self, heartbeat: Heartbeat) -> Heartbeat:
        """``heartbeat`` (with its full inventory) as it goes on the wire."""
        if heartbeat.vms is not self._digested:
            self._digested, self._digest = heartbeat.vms, codec.inventory_digest(heartbeat.vms)
        digest = self._digest
        if digest == self.held:
            return replace(heartbeat, vms=[], inventory_digest=digest, vms_omitted=True)
        return replace(heartbeat, inventory_digest=digest)

    def adopt(self, ack: HeartbeatAck, omitted: str) -> bool:
        """Take in an ack of a heartbeat that left out the inventory of digest ``omitted``
        ("" if it left nothing out). True when the scheduler lacked that inventory: the next
        heartbeat must carry it, and soon."""
        self.held = ack.inventory_digest
        return omitted != "" and ack.inventory_digest != omitted


def omitted_digest(heartbeat: Heartbeat) -> str:
    return heartbeat.inventory_digest if heartbeat.vms_omitted else ""


@dataclass(frozen=True, slots=True)
class Sent:
    seq: int
    sent_at_s: float
    omitted: str
    """The digest of the inventory the report left out ("" if it left nothing out)."""


class SentReports:
    """The heartbeats sent within the last ``window_s`` (the agent passes ``fence_after_s``):
    an ack counts only for one of them. An ack later than that would renew nothing anyway (a
    lease runs from its heartbeat's send); an earlier one, however late, is safe to count, as
    the scheduler declares the host dead no sooner than ``dead_after_s`` after it *received*
    that heartbeat. (The window was one heartbeat interval: a loaded scheduler answering in
    1.0 to 1.3 s had every ack dropped, and healthy hosts fenced their VMs.)"""

    __slots__ = ("_sent", "seq")

    def __init__(self) -> None:
        self.seq = 0
        self._sent: dict[int, Sent] = {}
        """By seq, oldest first."""

    def sent(self, heartbeat: Heartbeat, now_s: float, window_s: float) -> None:
        while self._sent:
            oldest = next(iter(self._sent.values()))
            if now_s - oldest.sent_at_s <= window_s:
                break
            del self._sent[oldest.seq]  # its ack would come too late to count
        self._sent[heartbeat.seq] = Sent(heartbeat.seq, now_s, omitted_digest(heartbeat))

    def match(self, ack: HeartbeatAck, now_s: float, window_s: float) -> Sent | None:
        sent = self._sent.get(ack.seq)
        if sent is None or now_s - sent.sent_at_s > window_s:
            return None
        return sent


def timing_of(ack: HeartbeatAck, out: list[Instruction]) -> tuple[float, float] | None:
    """The (heartbeat interval, fence after) an ack brings, if they make sense."""
    interval_s, fence_after_s = ack.heartbeat_interval_s, ack.fence_after_s
    if 0 < interval_s < fence_after_s:
        return interval_s, fence_after_s
    out.append(
        Note.warning(
            "heartbeat ack timing ignored heartbeat_interval_s=%s fence_after_s=%s",
            interval_s,
            fence_after_s,
        )
    )
    return None
