"""What a node knows of its peers: roster status, liveness, latency, misbehaviour.

Which nodes provide the partials for a ciphertext is decided by rendezvous hashing over
the live, active, well-behaved nodes: every node ranks the candidates the same way, so
all nodes loading the same secret ask the same t nodes, and each partial is computed
once fleet-wide. A node is skipped after failures (until it is heard from again) and
excluded for good once it is proven to have sent a wrong partial.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from dataclasses import dataclass, field

from flashgate.events.fleet import Roster, RosterNode

#: A node silent for this long (no heartbeat, no answer) is not asked first.
SILENT_AFTER_S = 6.0


@dataclass
class PeerState:
    node_id: str
    index: int
    last_seen: float | None = None  # monotonic seconds
    last_seen_wall_ms: int | None = None
    latency_ms: float | None = None
    failures: int = 0

    def alive(self, now: float) -> bool:
        if self.failures >= 2 and (self.last_seen is None or now - self.last_seen > 1.0):
            return False
        return self.last_seen is None or now - self.last_seen <= SILENT_AFTER_S


@dataclass
class PeerBook:
    node_id: str
    roster: Roster
    peers: dict[str, PeerState] = field(default_factory=dict)
    excluded: set[str] = field(default_factory=set)
    misbehaviour: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.set_roster(self.roster)

    def set_roster(self, roster: Roster) -> None:
        self.roster = roster
        for entry in roster.nodes:
            if entry.id not in self.peers:
                self.peers[entry.id] = PeerState(entry.id, entry.index)
            else:
                self.peers[entry.id].index = entry.index

    def active(self, node_id: str) -> RosterNode | None:
        entry = self.roster.node(node_id)
        return entry if entry is not None and entry.status == "active" else None

    def seen(self, node_id: str, *, latency_ms: float | None = None) -> None:
        state = self.peers.get(node_id)
        if state is None:
            return
        state.last_seen = time.monotonic()
        state.last_seen_wall_ms = int(time.time() * 1000)
        state.failures = 0
        if latency_ms is not None:
            state.latency_ms = (
                latency_ms
                if state.latency_ms is None
                else 0.7 * state.latency_ms + 0.3 * latency_ms
            )

    def failed(self, node_id: str) -> None:
        state = self.peers.get(node_id)
        if state is not None:
            state.failures += 1

    def misbehaved(self, node_id: str) -> None:
        self.misbehaviour[node_id] += 1
        self.excluded.add(node_id)

    def candidates(self) -> list[str]:
        """Nodes that may be asked (self included): active, not excluded."""
        return [
            n.id for n in self.roster.nodes if n.status == "active" and n.id not in self.excluded
        ]

    def ranking(self, digest: bytes) -> list[str]:
        """Rendezvous order for one ciphertext: live nodes first, then silent ones."""
        now = time.monotonic()
        nodes = self.candidates()

        def score(node_id: str) -> bytes:
            return hashlib.sha256(digest + node_id.encode()).digest()

        live = [n for n in nodes if n == self.node_id or self.peers[n].alive(now)]
        silent = [n for n in nodes if n not in live]
        return sorted(live, key=score, reverse=True) + sorted(silent, key=score, reverse=True)
