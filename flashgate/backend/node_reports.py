"""Node reports: the events a Bridge Node signs, checked, rate-limited and relayed by the
backend into the event stream.

A node may not publish into the event stream (flashgate.broker.permissions): a flooding
node, compromised or buggy, would fill the JetStream storage the buckets and the command
stream share, and a byte bound on the stream would reserve that much storage on every
server up front. So a node publishes each event it signs (today ``node.misbehaved``; any
type :func:`~flashgate.events.event_auth.node_signer` names) on its own subject
``fg.<f>.node.<node>.report`` (core NATS: nothing is stored), and the backend, subscribed
to each node's subject with a bounded queue of its own, takes a report only when, cheapest
check first:

1. it is at most :data:`~flashgate.events.domain.MAX_EVENT_BYTES` (``oversized``);
2. the node's bucket holds its size (:class:`TokenBucket`, in bytes: ``burst_bytes`` at
   once, then ``rate_bytes`` per second; a report costs at least :data:`MIN_COST_BYTES`);
   anything beyond is dropped before it is even decoded (``rate_limited``). The bucket
   bounds what a node can store in the event stream, and how many signatures it makes
   the backend check;
3. it decodes strictly as a domain event (``garbage`` otherwise);
4. its type is node-signed, its signer and ``source`` are the node whose subject it came
   on (``not_its_own`` otherwise: one node cannot report in another's name);
5. its ``time`` is within :data:`MAX_AGE_MS` of the backend's clock (``stale``);
6. the node is active in the roster the backend holds (``unknown_node``) and the event
   verifies under that node's key (``bad_signature``);
7. its id was not relayed from that node before (``replayed``; ids are kept until their
   event is stale, per node, and a full cache refuses rather than forgets).

The report is then published as the node signed it, re-encoded (the node's signature
covers the canonical form of the event, so it still verifies: every consumer checks it with
:class:`~flashgate.events.event_auth.EventAuthority`; whitespace padding and unsigned extra
attributes are dropped, so what is stored is bounded by the payload type's fields) on its
type's event subject, with a message id of the node's (``Nats-Msg-Id: node:<node>:<id>``)
that cannot collide with the backend's own events. Every drop is counted per node and reason; the
first one of a node in a period is logged with its reason, and every
:data:`SUMMARY_EVERY_S` a line per node sums up what was dropped meanwhile. The relay never
raises for what a node sends: the backend keeps running.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from flashgate.errors import FlashgateError
from flashgate.events.domain import MAX_EVENT_BYTES, DomainEvent, decode_event, encode_event
from flashgate.events.event_auth import bridge_source, node_signer
from flashgate.events.fleet import ROSTER_CODEC
from flashgate.events.signing import verify
from flashgate.events.subjects import FleetNames
from flashgate.fleet.identity_keys import load_ed25519_public

log = structlog.get_logger("flashgate.backend.node_reports")

#: Bytes of reports a node may send at once, and per second after that: what a node can
#: put into the event stream (at most about 88 MB a day, 2.6 GB over the stream's 30-day
#: age). A ``node.misbehaved`` is about 500 bytes and a gateway usage summary under 1 KiB
#: (each costs at least 512): 256 at once (a peer turning bad fails many partials at once;
#: a gateway's summaries of one minute arrive together), then about 80 usage summaries a
#: minute (one per API key and API served in that minute). The largest report (16 KiB)
#: fits the burst.
REPORT_BURST_BYTES = 256 * 1024
REPORT_RATE_BYTES_PER_S = 1024.0
#: What the smallest report costs: many tiny ones cost as many signature checks.
MIN_COST_BYTES = 512
#: A report whose ``time`` is further than this from the backend's clock is stale.
MAX_AGE_MS = 60_000
#: Ids remembered per node (far more than the bucket lets through in a window).
REPLAY_CAPACITY = 4096
#: Each node's subscription queue: beyond, the client drops (counted as ``overflow``) and
#: keeps reading the socket, so the server never cuts the backend off as slow.
PENDING_MSGS = 256
PENDING_BYTES = 4 * 1024 * 1024
#: Seconds between two summary lines (and roster re-reads for new nodes).
SUMMARY_EVERY_S = 10.0
#: Seconds the roster read from the database is used before it is read again.
ROSTER_TTL_S = 2.0

DropReason = Literal[
    "rate_limited",
    "overflow",
    "oversized",
    "garbage",
    "not_its_own",
    "stale",
    "unknown_node",
    "bad_signature",
    "replayed",
    "replay_cache_full",
    "publish_failed",
]

#: ``publish(subject, payload, headers)``: into the event stream (JetStream, acknowledged).
Publish = Callable[[str, bytes, dict[str, str]], Awaitable[None]]
#: The roster the backend holds (the text of its admin-signed roster), or None.
ReadRoster = Callable[[], Awaitable[str | None]]


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class TokenBucket:
    """``burst`` tokens (bytes), refilled at ``rate`` per second; a report takes its
    cost, or nothing when there is not enough left."""

    rate: float
    burst: float
    tokens: float
    stamp: float

    def take(self, now: float, cost: float = 1.0) -> bool:
        if now > self.stamp:  # a clock that went back adds nothing
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False


class _Dropped(Exception):
    def __init__(self, reason: DropReason, detail: str = "") -> None:
        super().__init__(reason)
        self.reason: DropReason = reason
        self.detail = detail


def _event_time_ms(event: DomainEvent) -> int:
    try:
        stamp = datetime.fromisoformat(event.time)
        if stamp.tzinfo is None:
            raise ValueError("no time zone")
        return int(stamp.timestamp() * 1000)
    except (ValueError, OverflowError) as exc:
        raise _Dropped("garbage", "its time is not a timestamp with a zone") from exc


@dataclass
class NodeReportRelay:
    names: FleetNames
    read_roster: ReadRoster
    publish: Publish
    rate_bytes: float = REPORT_RATE_BYTES_PER_S
    burst_bytes: int = REPORT_BURST_BYTES
    max_age_ms: int = MAX_AGE_MS
    replay_capacity: int = REPLAY_CAPACITY
    clock_ms: Callable[[], int] = wall_clock_ms
    monotonic: Callable[[], float] = time.monotonic
    #: reports relayed, per node
    relayed: Counter[str] = field(default_factory=Counter)
    #: reports dropped, per node and reason (since start)
    dropped: dict[str, Counter[str]] = field(default_factory=dict)
    _period: dict[str, Counter[str]] = field(default_factory=dict, repr=False)
    _buckets: dict[str, TokenBucket] = field(default_factory=dict, repr=False)
    _seen: dict[str, dict[str, int]] = field(default_factory=dict, repr=False)
    _keys: dict[str, Ed25519PublicKey] = field(default_factory=dict, repr=False)
    _nodes: frozenset[str] = frozenset()
    _roster_read_at: float | None = None
    _subscriptions: dict[str, Subscription] = field(default_factory=dict, repr=False)

    # --- the checks --------------------------------------------------------------------

    async def accept(self, node_id: str, raw: bytes) -> bool:
        """One report read on ``node_id``'s report subject: relayed (True) or dropped,
        counted and logged (False). Never raises for what the node sent."""
        try:
            event = await self._check(node_id, raw)
        except _Dropped as exc:
            self._drop(node_id, exc.reason, exc.detail)
            return False
        try:
            await self.publish(
                self.names.event_subject(event.short_type),
                encode_event(event),
                {"Nats-Msg-Id": f"node:{node_id}:{event.id}"},
            )
        except Exception as exc:  # the broker: the node's report is lost, the relay stays
            self._drop(node_id, "publish_failed", type(exc).__name__)
            return False
        self.relayed[node_id] += 1
        return True

    async def _check(self, node_id: str, raw: bytes) -> DomainEvent:
        if len(raw) > MAX_EVENT_BYTES:
            raise _Dropped("oversized", f"{len(raw)} bytes")
        bucket = self._buckets.get(node_id)
        now = self.monotonic()
        if bucket is None:
            burst = float(self.burst_bytes)
            bucket = self._buckets[node_id] = TokenBucket(self.rate_bytes, burst, burst, now)
        if not bucket.take(now, max(len(raw), MIN_COST_BYTES)):
            raise _Dropped("rate_limited")
        try:
            event = decode_event(raw)
        except FlashgateError as exc:
            raise _Dropped("garbage", exc.message[:120]) from exc
        signer = node_signer(event.data)
        if signer != node_id or event.source != bridge_source(self.names.fleet, node_id):
            raise _Dropped("not_its_own", f"a {event.short_type} from {event.source[:80]!r}")
        issued = _event_time_ms(event)
        if abs(self.clock_ms() - issued) > self.max_age_ms:
            raise _Dropped("stale", event.time)
        key = await self._key(node_id)
        if key is None:
            raise _Dropped("unknown_node", "not active in the roster")
        try:
            verify(event, key)
        except FlashgateError as exc:
            raise _Dropped("bad_signature") from exc
        self._remember(node_id, event.id, issued)
        return event

    def _remember(self, node_id: str, event_id: str, issued_ms: int) -> None:
        seen = self._seen.setdefault(node_id, {})
        if event_id in seen:
            raise _Dropped("replayed", event_id)
        if len(seen) >= self.replay_capacity:
            now = self.clock_ms()
            for old in [i for i, until in seen.items() if until < now]:
                del seen[old]
            if len(seen) >= self.replay_capacity:
                raise _Dropped("replay_cache_full")
        # Kept until the event itself is stale: a replay after that fails the age check.
        seen[event_id] = issued_ms + self.max_age_ms

    async def _key(self, node_id: str) -> Ed25519PublicKey | None:
        await self._refresh_roster()
        return self._keys.get(node_id)

    async def _refresh_roster(self, *, force: bool = False) -> None:
        now = self.monotonic()
        read_at = self._roster_read_at
        if not force and read_at is not None and now - read_at < ROSTER_TTL_S:
            return
        self._roster_read_at = now
        try:
            text = await self.read_roster()
            roster = ROSTER_CODEC.decode(text.encode()) if text else None
        except Exception as exc:  # the database: keep what we had
            log.warning(
                "roster not read; node reports checked against the last one", error=str(exc)[:200]
            )
            return
        if roster is None:
            self._keys, self._nodes = {}, frozenset()
            return
        self._nodes = frozenset(n.id for n in roster.nodes)
        keys: dict[str, Ed25519PublicKey] = {}
        for entry in roster.nodes:
            if entry.status == "active":
                with contextlib.suppress(FlashgateError, ValueError):
                    keys[entry.id] = load_ed25519_public(entry.signing_key, "node key")
        self._keys = keys

    # --- counting and saying ------------------------------------------------------------

    def _drop(self, node_id: str, reason: DropReason, detail: str = "") -> None:
        self.dropped.setdefault(node_id, Counter())[reason] += 1
        period = self._period.setdefault(node_id, Counter())
        if not period:
            log.warning(
                "node report dropped",
                node=node_id,
                reason=reason,
                detail=detail[:200],
                note=f"further drops from this node are summed up every {SUMMARY_EVERY_S:.0f}s",
            )
        period[reason] += 1

    def overflowed(self, subject: str) -> None:
        """The client dropped a message of ``subject`` (its node's queue was full)."""
        node_id = next((n for n, s in self._subscriptions.items() if s.subject == subject), None)
        if node_id is not None:
            self._drop(node_id, "overflow")

    def log_summary(self) -> None:
        """A line per node that had reports dropped since the last summary."""
        period, self._period = self._period, {}
        for node_id, counts in sorted(period.items()):
            log.warning(
                "node reports dropped",
                node=node_id,
                dropped=sum(counts.values()),
                reasons=dict(sorted(counts.items())),
                relayed_total=self.relayed[node_id],
                period_s=SUMMARY_EVERY_S,
            )

    def summary(self) -> dict[str, dict[str, int]]:
        """Per node: reports relayed and dropped (by reason), since start."""
        nodes = set(self.relayed) | set(self.dropped)
        return {
            n: {"relayed": self.relayed[n], **dict(self.dropped.get(n, Counter()))}
            for n in sorted(nodes)
        }

    # --- subscriptions --------------------------------------------------------------------

    async def start(self, nc: Client) -> None:
        """Subscribe to the report subject of every node of the roster."""
        await self._refresh_roster(force=True)
        await self._subscribe_new(nc)

    async def run(self, nc: Client) -> None:
        """Every :data:`SUMMARY_EVERY_S`: the summary line, and new nodes of the roster."""
        while True:
            await asyncio.sleep(SUMMARY_EVERY_S)
            self.log_summary()
            await self._refresh_roster(force=True)
            try:
                await self._subscribe_new(nc)
            except Exception as exc:  # not connected now: the next round tries again
                log.warning("node report subscription not made; retrying", error=str(exc)[:200])

    async def _subscribe_new(self, nc: Client) -> None:
        for node_id in sorted(self._nodes - set(self._subscriptions)):

            async def handler(msg: Msg, node_id: str = node_id) -> None:
                await self.accept(node_id, msg.data)

            self._subscriptions[node_id] = await nc.subscribe(
                self.names.node_report_subject(node_id),
                queue="backend",
                cb=handler,
                pending_msgs_limit=PENDING_MSGS,
                pending_bytes_limit=PENDING_BYTES,
            )
