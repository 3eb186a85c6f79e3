"""A host's replica set as replicas by disk id, with its digest kept as replicas come and go.
Pure; used by the scheduler (what it wants a host to hold) and the agents (what they hold).

The digest of a set is the sum, modulo 2**64, of a hash of each replica's spec (its canonical
encoding), as a host's network configuration's is (common/netconfig.py): a sum does not depend
on order, and a replica added, removed or changed moves it by that replica's hashes alone, so an
``UpdateReplicas`` costs what it changes on both sides, and its result's digest can be checked
against the one the scheduler computed. The empty set's digest is "" (what an agent that holds
nothing reports). Which replicas were made before (``existing``) is not part of the digest.

:meth:`ReplicaSet.problem` says whether an update can apply (it removes and changes only what
is there, adds only what is not, names no disk twice, and leads to the digest it names);
:meth:`ReplicaSet.apply` assumes it can.
"""

from __future__ import annotations

from common import codec
from common.replica_messages import ConfigureReplicas, ReplicaSpec, UpdateReplicas
from common.sumdigest import digest_text, hash64


def replica_hash(spec: ReplicaSpec) -> int:
    return hash64(codec.encode(spec))


class ReplicaSet:
    __slots__ = ("_text", "_text_of", "existing", "specs", "total")

    def __init__(self) -> None:
        self.specs: dict[str, tuple[ReplicaSpec, int]] = {}
        """The replicas by disk id, each with its hash."""
        self.existing: set[str] = set()
        """The disk ids of the replicas named that were made before."""
        self.total = 0
        """The sum of the replicas' hashes."""
        self._text, self._text_of = "", 0
        """``digest``, and the total it is of: a steady host's heartbeat compares it twice."""

    @property
    def digest(self) -> str:
        if self._text_of != self.total:
            self._text, self._text_of = digest_text(self.total), self.total
        return self._text

    def __len__(self) -> int:
        return len(self.specs)

    def __contains__(self, disk_id: object) -> bool:
        return disk_id in self.specs

    @classmethod
    def of(cls, config: ConfigureReplicas) -> ReplicaSet:
        made = cls()
        for spec in config.replicas:
            made.put(spec)
        made.existing = set(config.existing) & made.specs.keys()
        return made

    def copy(self) -> ReplicaSet:
        made = ReplicaSet()
        made.specs, made.existing, made.total = dict(self.specs), set(self.existing), self.total
        return made

    def whole(self, digest: str | None = None) -> ConfigureReplicas:
        """The set in full, by disk id (as the scheduler sends it)."""
        ordered = sorted(self.specs)
        return ConfigureReplicas(
            replicas=[self.specs[d][0] for d in ordered],
            digest=self.digest if digest is None else digest,
            existing=[d for d in ordered if d in self.existing],
        )

    def spec(self, disk_id: str) -> ReplicaSpec | None:
        found = self.specs.get(disk_id)
        return found[0] if found is not None else None

    def put(self, spec: ReplicaSpec, hashed: int | None = None) -> None:
        """Name ``spec`` (in place of the spec its disk id had, if any); ``hashed``: its hash,
        if known."""
        old = self.specs.get(spec.disk_id)
        if old is not None:
            if old[0] == spec:
                return
            self.total -= old[1]
        if hashed is None:
            hashed = replica_hash(spec)
        self.specs[spec.disk_id] = (spec, hashed)
        self.total += hashed

    def drop(self, disk_id: str) -> None:
        old = self.specs.pop(disk_id, None)
        if old is not None:
            self.total -= old[1]
        self.existing.discard(disk_id)

    # ------------------------------------------------------------------ updates

    def problem(self, update: UpdateReplicas) -> str | None:
        """Why ``update`` cannot apply to this set (None: it can): it is based on another one,
        names a disk twice, removes or changes what is not there, adds what is, or does not
        lead to the digest it names."""
        return self._misfit(update) or self._misled(update, self._hashes(update))

    def apply_checked(self, update: UpdateReplicas) -> str | None:
        """Apply ``update`` if it can (None), else say why not and change nothing: ``problem``
        and ``apply`` with each new spec hashed once (the agents' way)."""
        why = self._misfit(update)
        if why is not None:
            return why
        hashes = self._hashes(update)
        why = self._misled(update, hashes)
        if why is None:
            self.apply(update, hashes)
        return why

    def _misfit(self, update: UpdateReplicas) -> str | None:
        if update.base != self.digest:
            return f"based on {update.base or 'nothing'}, not {self.digest or 'nothing'}"
        named = [
            *update.removed,
            *(s.disk_id for s in update.added),
            *(s.disk_id for s in update.changed),
        ]
        if len(set(named)) != len(named):
            return "names a disk twice"
        if any(d not in self.specs for d in update.removed):
            return "removes a replica not in the set"
        if any(s.disk_id not in self.specs for s in update.changed):
            return "changes a replica not in the set"
        if any(s.disk_id in self.specs for s in update.added):
            return "adds a replica in the set"
        return None

    @staticmethod
    def _hashes(update: UpdateReplicas) -> list[int]:
        """The hashes of ``update``'s new specs (added, then changed)."""
        return [replica_hash(s) for s in (*update.added, *update.changed)]

    def _misled(self, update: UpdateReplicas, hashes: list[int]) -> str | None:
        """Why ``update`` (which fits) does not lead to the digest it names (None: it does)."""
        moved = sum(hashes) - sum(self.specs[d][1] for d in update.removed)
        moved -= sum(self.specs[s.disk_id][1] for s in update.changed)
        reached = digest_text(self.total + moved)
        if reached != update.digest:
            return f"leads to {reached or 'nothing'}, not {update.digest or 'nothing'}"
        return None

    def apply(self, update: UpdateReplicas, hashes: list[int] | None = None) -> None:
        """Apply ``update`` (``problem`` said it can; ``hashes``: its new specs', if known);
        O(its size)."""
        for disk_id in update.removed:
            self.drop(disk_id)
        specs = (*update.added, *update.changed)
        known: list[int | None] = list(hashes) if hashes is not None else [None] * len(specs)
        for spec, hashed in zip(specs, known, strict=True):
            self.put(spec, hashed)
        self.existing.update(update.existing)


def digest_of(config: ConfigureReplicas) -> str:
    """The digest of ``config`` (its own ``digest`` field is not read)."""
    return ReplicaSet.of(config).digest
