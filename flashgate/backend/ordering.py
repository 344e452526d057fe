"""Commands on one target in publication order, across crashes, failures and replicas.

The backend's durable pull consumer (explicit acks) delivers a message again only when
its ``ack_wait`` (30 s) has passed without an ack, and meanwhile hands out newer
messages. A backend killed with a fetched batch in hand and started again at once, a
replica that fetched the next batch while another holds the previous one, or a command
that failed here and was nak'd: each would let a target's newer commands be applied
before its older ones, and the state checks would reject them for good (a version gap, a
rotate before its put, a delete before the write it follows).

So the backend never applies a command while an earlier command of the same target
(a secret, an API key) may be unprocessed. Before a fetched batch, the
:class:`Sequencer` lists the stream sequences between the consumer's ack floor and the
batch that nobody has acknowledged and this backend has not processed, reads from the
stream those that come before one of the batch's commands of their target, and the
backend applies them first, each lane in stream order. On start, a backend that is the
fleet's only one (SQLite) does the same for every target, up to the last message the
consumer delivered, so it finishes what its predecessor had fetched without waiting for
``ack_wait``; PostgreSQL replicas do not (another replica may be applying those very
commands): a dead replica's come back after ``ack_wait``, or earlier when a later
command of their target pulls them ahead. ``processed_commands`` keeps each command applied once:
whoever holds the delivery of a command applied here finds it processed (this backend
acknowledges such a delivery without applying it again). The consumer info is asked for
only when there is such a gap: a lone backend in steady state never asks.

Bounds: a gap older than :data:`WINDOW` sequences before the batch is not waited for.
A command read from the stream that fails here (the database is down) holds its lane:
the batch's later commands of that target are nak'd and come back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import msgspec
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo

#: How far back before a batch the sequencer looks for unprocessed commands.
WINDOW = 4096
#: The lane of a message that is not a command anyone can apply: never waited for.
NO_LANE = "?"


class _LaneProbe(msgspec.Struct):
    """Just enough of a command to keep commands on one target in order."""

    repo: str | None = None
    name: str | None = None
    key_id: str | None = None


_lane_decoder = msgspec.json.Decoder(_LaneProbe)


def lane(raw: bytes) -> str:
    """The target a command writes (commands on one target are applied in order)."""
    try:
        probe = _lane_decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return NO_LANE
    return probe.key_id or f"{probe.repo}.{probe.name}"


def stream_seq(msg: Msg) -> int:
    return int(msg.metadata.sequence.stream)


@dataclass(frozen=True)
class Step:
    """One command of a lane: a delivery in hand, or (``msg`` None) a command read from
    the stream whose delivery someone else holds, or held and died."""

    seq: int
    msg: Msg | None


class Sequencer:
    def __init__(
        self,
        js: JetStreamContext,
        stream: str,
        consumer_info: Callable[[], Awaitable[ConsumerInfo]],
        *,
        window: int = WINDOW,
    ) -> None:
        self._js = js
        self._stream = stream
        self._consumer_info = consumer_info
        self._window = window
        self._settled = 0  # every sequence up to this one is acknowledged or processed
        self._done: set[int] = set()  # processed here, above _settled
        self._lanes: dict[int, str] = {}  # lanes of messages read from the stream
        self._from_stream: set[int] = set()  # applied here from the stream, not acked

    @property
    def settled(self) -> int:
        """Every stream sequence up to this one is acknowledged or processed here."""
        return self._settled

    # --- what was processed -------------------------------------------------------------

    def done(self, seq: int) -> None:
        """``seq`` is processed (acknowledged, or applied here from the stream)."""
        if seq > self._settled:
            self._done.add(seq)
            self._settle(self._settled)

    def applied_from_stream(self, seq: int) -> None:
        """``seq`` was read from the stream and processed here: its delivery, when it
        comes, is acknowledged as it is."""
        self._from_stream.add(seq)
        self.done(seq)

    def take_applied(self, seq: int) -> bool:
        """True (once) if the delivery of ``seq`` is of a command processed here."""
        if seq in self._from_stream:
            self._from_stream.discard(seq)
            return True
        return False

    def _settle(self, floor: int) -> None:
        """Everything up to ``floor`` is settled; then any run of processed ones."""
        settled = max(self._settled, floor)
        while settled + 1 in self._done:
            settled += 1
        if settled != self._settled:
            self._settled = settled
            self._done = {s for s in self._done if s > settled}
            self._lanes = {s: lane for s, lane in self._lanes.items() if s > settled}

    # --- plans --------------------------------------------------------------------------

    async def plan(self, messages: list[Msg]) -> list[list[Step]]:
        """The lanes of a fetched batch, each in stream order, with the unprocessed
        earlier commands of their targets first."""
        steps = sorted((Step(stream_seq(m), m) for m in messages), key=lambda s: s.seq)
        batch = {s.seq for s in steps}
        lanes: dict[str, list[Step]] = {}
        for step in steps:
            assert step.msg is not None
            lanes.setdefault(lane(step.msg.data), []).append(step)
        top = steps[-1].seq
        if self._has_gap(top, batch):
            self._floor(await self._consumer_info(), top - 1)
            last = {target: found[-1].seq for target, found in lanes.items()}
            for seq in await self._gaps(top, batch):
                target = self._lanes[seq]
                # Only what comes before one of the batch's commands of its target.
                if target != NO_LANE and seq < last.get(target, 0):
                    lanes[target].append(Step(seq, None))
        return [sorted(found, key=lambda s: s.seq) for found in lanes.values()]

    async def catch_up(self) -> list[list[Step]]:
        """On start: the unprocessed commands up to the last one the consumer delivered
        (the batch a previous backend held when it died), by lane, in stream order."""
        info = await self._consumer_info()
        delivered = _seq(info.delivered)
        self._floor(info, delivered)
        lanes: dict[str, list[Step]] = {}
        for seq in await self._gaps(delivered + 1, set()):
            target = self._lanes[seq]
            if target != NO_LANE:
                lanes.setdefault(target, []).append(Step(seq, None))
        return list(lanes.values())

    def _floor(self, info: ConsumerInfo, top: int) -> None:
        """The consumer's ack floor settles everything up to it (and the window, what is
        older than it)."""
        floor = _seq(info.ack_floor)
        self._from_stream = {s for s in self._from_stream if s > floor}  # acked elsewhere
        self._settle(max(floor, top - self._window))

    def _has_gap(self, top: int, batch: set[int]) -> bool:
        span = top - 1 - self._settled
        if span <= 0:
            return False
        if span > len(batch) + len(self._done):
            return True
        return any(s not in batch and s not in self._done for s in range(self._settled + 1, top))

    async def _gaps(self, top: int, batch: set[int]) -> list[int]:
        """Sequences below ``top`` not settled, not in ``batch``: their lanes are read."""
        gaps = [s for s in range(self._settled + 1, top) if s not in batch and s not in self._done]
        unknown = [s for s in gaps if s not in self._lanes]
        gone = []
        for seq, raw in zip(unknown, await asyncio.gather(*map(self.read, unknown)), strict=True):
            self._lanes[seq] = NO_LANE if raw is None else lane(raw)
            if raw is None:
                gone.append(seq)
        for seq in gone:  # no longer in the stream: nothing to wait for
            self.done(seq)
        return [s for s in gaps if s not in gone]

    async def read(self, seq: int) -> bytes | None:
        """The command at ``seq`` (None: no longer in the stream)."""
        try:
            found = await self._js.get_msg(self._stream, seq)
        except nats.js.errors.NotFoundError:
            return None
        return found.data or b""


def _seq(info: object) -> int:
    return int(getattr(info, "stream_seq", 0) or 0)
