"""The fleet key epochs a node holds a share of, each with its own partial cache.

Normally one epoch. During a fleet key rotation two: the old epoch k (envelopes not yet
re-wrapped still need it, for this node and its peers) and the new epoch k+1. When the
admin-signed retirement of k arrives, its partials are wiped and its share dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from flashgate.bridge.partials import PartialCache
from flashgate.fleet.epoch_dealing import EpochKey


@dataclass(eq=False)
class EpochSlot:
    key: EpochKey
    partials: PartialCache
    #: Node id -> share index: the nodes dealt a share of this epoch (its descriptor).
    members: Mapping[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.members = self.key.members

    @property
    def epoch(self) -> int:
        return self.key.epoch

    def __repr__(self) -> str:
        return f"EpochSlot(epoch={self.epoch}, index={self.key.share.index})"


class KeyRing:
    def __init__(self, first: EpochKey, *, workers: int | None = None) -> None:
        self._workers = workers
        self.slots: dict[int, EpochSlot] = {}
        self.retired: set[int] = set()
        self.add(first)

    def __repr__(self) -> str:
        return f"KeyRing(epochs={sorted(self.slots)}, retired={sorted(self.retired)})"

    def add(self, key: EpochKey) -> EpochSlot:
        slot = EpochSlot(key, PartialCache(key.share, key.public, workers=self._workers))
        self.slots[key.epoch] = slot
        return slot

    def epochs(self) -> set[int]:
        return set(self.slots)

    @property
    def current(self) -> EpochSlot:
        """The newest epoch held (the one new envelopes are written under after a rotation)."""
        return self.slots[max(self.slots)]

    def members_of(self, epoch: int) -> Mapping[str, int] | None:
        """The nodes dealt a share of ``epoch`` (None: an epoch this node does not hold)."""
        slot = self.slots.get(epoch)
        return None if slot is None else slot.members

    def partials_for(self, epoch: int) -> PartialCache | None:
        slot = self.slots.get(epoch)
        return None if slot is None else slot.partials

    def rotation(self) -> tuple[int, int] | None:
        """(from, to) while two epochs are held: envelopes under ``from`` are re-wrapped."""
        if len(self.slots) < 2:
            return None
        epochs = sorted(self.slots)
        return epochs[0], epochs[-1]

    def retire(self, epoch: int) -> EpochSlot | None:
        """Drop ``epoch`` once a newer one is held and wipe its cached partials. The caller
        closes the returned slot's engine (which waits for a running computation)."""
        slot = self.slots.get(epoch)
        if slot is None or epoch >= max(self.slots):
            return None
        del self.slots[epoch]
        self.retired.add(epoch)
        slot.partials.purge()
        return slot

    @property
    def computed(self) -> int:
        return sum(s.partials.computed for s in self.slots.values())

    def purge(self) -> None:
        for slot in self.slots.values():
            slot.partials.purge()

    def close(self) -> None:
        for slot in self.slots.values():
            slot.partials.close()
