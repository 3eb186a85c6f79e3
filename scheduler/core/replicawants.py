"""What the scheduler wants each host's replica set to be, as last computed and sent, and the
way there from what the host reports. Pure data (kept in ``Carry``; scheduler/core/hostreplicas.py
keeps it up to date).

The trail is the digests the host was led through since the set was last sent whole (or
computed whole, when the host reported having it): the first with its set's disk ids
(``start``), each next one with the disk ids its update added and removed. A host reporting a
digest on the trail holds that set; its disk ids follow from the ones it held before by the
steps between, in O(those steps), never by visiting the set.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from common.replica_messages import ConfigureReplicas, UpdateReplicas
from common.replicaset import ReplicaSet

TRAIL = 64
"""How many updates a host is remembered to be on the way through."""


@dataclass(frozen=True, slots=True)
class Passed:
    """One digest of the trail, and what the update leading there added and removed."""

    digest: str
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()


@dataclass(slots=True)
class ReplicaWant:
    replicas: ReplicaSet
    """The set as last sent (``existing``: the copies made, as the records say)."""
    trail: list[Passed]
    start: set[str]
    """The disk ids of the set at the trail's first digest."""
    reported: str | None = None
    """The digest the host reported last, when not the wanted one (and since when)."""
    reported_since_s: float = 0.0
    whole_sent_s: float = float("-inf")
    """When the whole set was last sent."""

    @classmethod
    def of(cls, replicas: ReplicaSet) -> ReplicaWant:
        return cls(replicas, [Passed(replicas.digest)], set(replicas.specs))

    @property
    def digest(self) -> str:
        return self.replicas.digest

    def whole(self, now_s: float) -> ConfigureReplicas:
        """The set in full, to send now: the trail starts again from it."""
        self.trail = [Passed(self.digest)]
        self.start = set(self.replicas.specs)
        self.whole_sent_s = self.reported_since_s = now_s
        return self.replicas.whole()

    def passed(self, update: UpdateReplicas) -> None:
        """``update`` (applied to ``replicas``) is sent."""
        added = tuple(s.disk_id for s in update.added)
        self.trail.append(Passed(update.digest, added, tuple(update.removed)))
        if len(self.trail) > TRAIL:
            del self.trail[0]
            first = self.trail[0]
            self.start.difference_update(first.removed)
            self.start.update(first.added)
            self.trail[0] = Passed(first.digest)

    def walk(self, held: set[str], held_digest: str, digest: str) -> list[str] | None:
        """The host reports ``digest``: bring ``held`` (the disk ids of the set at
        ``held_digest``) to those of the set at ``digest``, and return the disk ids it gained;
        None (``held`` unchanged) when ``digest`` is not on the trail. The trail then starts
        at ``digest``: the host cannot go back (one that does lost what it had)."""
        digests = [p.digest for p in self.trail]
        end = _last(digests, digest, len(digests))
        if end is None:
            return None
        begin = _last(digests, held_digest, end + 1)
        if begin is None:  # from the start (what it held is not on the trail any more)
            now = set(self.start)
            _follow(now, self.trail[1 : end + 1])
            gained = [d for d in now if d not in held]
            held.clear()
            held.update(now)
        else:
            steps = self.trail[begin + 1 : end + 1]
            candidates = {d for p in steps for d in p.added if d not in held}
            _follow(held, steps)
            gained = [d for d in candidates if d in held]
        if end:
            _follow(self.start, self.trail[1 : end + 1])
            self.trail[: end + 1] = [Passed(digest)]
        return gained


def _last(digests: list[str], digest: str, end: int) -> int | None:
    """The last index of ``digest`` in ``digests[:end]`` (None: not there)."""
    for i in range(end - 1, -1, -1):
        if digests[i] == digest:
            return i
    return None


def _follow(held: set[str], steps: Iterable[Passed]) -> None:
    for p in steps:
        held.difference_update(p.removed)
        held.update(p.added)
