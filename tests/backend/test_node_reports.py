"""The backend's relay of node reports (flashgate.backend.node_reports), without a server:
what a node signs on its own report subject reaches the event stream verbatim; anything
else is dropped and counted, and a flooding node gets no more than its bucket allows.
The same against a real nats-server and backend: test_node_report_relay.py."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from structlog.testing import capture_logs

from flashgate.backend.node_reports import (
    MAX_AGE_MS,
    MIN_COST_BYTES,
    REPORT_BURST_BYTES,
    NodeReportRelay,
    TokenBucket,
)
from flashgate.events import domain as ev
from flashgate.events.event_auth import EventAuthority, backend_source, bridge_source, sign_event
from flashgate.events.fleet import Roster, RosterNode, encode_roster
from flashgate.events.subjects import FleetNames
from flashgate.fleet.identity_keys import new_ed25519, new_x25519, public_b64

NAMES = FleetNames("acme")
KEYS = {f"node-{i}": new_ed25519() for i in (1, 2, 3)}
NOW = datetime(2026, 12, 3, 1, 0, 0, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)


def roster_text(revoked: frozenset[str] = frozenset()) -> str:
    roster = Roster(
        fleet="acme",
        epoch=1,
        serial=1,
        issued_at=NOW_MS,
        nodes=[
            RosterNode(
                id=node_id,
                index=i + 1,
                signing_key=public_b64(key),
                exchange_key=public_b64(new_x25519()),
                status="revoked" if node_id in revoked else "active",
            )
            for i, (node_id, key) in enumerate(KEYS.items())
        ],
    )
    return encode_roster(roster).decode()


def report(
    reporter: str = "node-1",
    *,
    key: str | None = None,
    at: datetime = NOW,
    source: str | None = None,
    about: str = "node-2",
) -> bytes:
    event = ev.make_event(
        ev.NodeMisbehaved(node_id=about, reporter=reporter, reason="invalid_partial", epoch=1),
        event_id=f"{reporter}.{about}.{secrets.token_hex(8)}",
        source=source or bridge_source("acme", reporter),
        subject=about,
        time=at,
    )
    return ev.encode_event(sign_event(event, KEYS[key or reporter]))


class Relay:
    """A relay with a fixed clock, a fake monotonic clock and a list for a stream."""

    def __init__(
        self,
        *,
        burst: int = REPORT_BURST_BYTES,
        rate: float = 128.0,
        revoked: frozenset[str] = frozenset(),
    ):
        self.stream: list[tuple[str, bytes, dict[str, str]]] = []
        self.now = 0.0

        async def read_roster() -> str | None:
            return roster_text(revoked)

        async def publish(subject: str, payload: bytes, headers: dict[str, str]) -> None:
            self.stream.append((subject, payload, headers))

        self.relay = NodeReportRelay(
            NAMES,
            read_roster,
            publish,
            rate_bytes=rate,
            burst_bytes=burst,
            clock_ms=lambda: NOW_MS,
            monotonic=lambda: self.now,
        )

    async def accept(self, node_id: str, raw: bytes) -> bool:
        return await self.relay.accept(node_id, raw)


def authority() -> EventAuthority:
    return EventAuthority(NAMES, new_ed25519().public_key(), lambda n: KEYS[n].public_key())


async def test_a_report_is_relayed_verbatim_with_the_nodes_signature() -> None:
    r = Relay()
    raw = report("node-1")
    assert await r.accept("node-1", raw)
    [(subject, payload, headers)] = r.stream
    assert subject == NAMES.event_subject("node.misbehaved")
    assert payload == raw  # the node's bytes: its signature checks at every consumer
    event = authority().open(subject, payload)
    assert event.data.reporter == "node-1"  # type: ignore[attr-defined]
    assert headers["Nats-Msg-Id"] == f"node:node-1:{event.id}"
    assert r.relay.summary() == {"node-1": {"relayed": 1}}


async def test_a_padded_report_is_stored_without_its_padding_and_still_verifies() -> None:
    """The signature covers the event's canonical form: the relay re-encodes, so whitespace
    and unsigned extra attributes (storage a node could waste) never reach the stream."""
    r = Relay()
    raw = report("node-1")
    padded = raw[:-1] + b', "padding": "' + b"x" * 8000 + b'"' + b" " * 4000 + b"}"
    assert await r.accept("node-1", padded)
    [(subject, payload, _)] = r.stream
    assert payload == raw
    authority().open(subject, payload)


def _altered(raw: bytes) -> bytes:
    doc = msgspec.json.decode(raw)
    doc["data"]["node_id"] = "node-3"  # blame another node, keep the signature
    return msgspec.json.encode(doc)


def _retimed(raw: bytes, when: str) -> bytes:
    doc = msgspec.json.decode(raw)
    doc["time"] = when  # the signature no longer fits either: the time is checked first
    return msgspec.json.encode(doc)


def _backend_outcome() -> bytes:
    event = ev.make_event(
        ev.CommandRejected(command_id=None, command_type="secret.put", reason="forged"),
        event_id="forged-outcome",
        source=backend_source("acme"),
        time=NOW,
    )
    return ev.encode_event(sign_event(event, KEYS["node-1"]))


FORGED = {
    "another-nodes-report-on-its-subject": (lambda: report("node-2"), "not_its_own"),
    "in-another-nodes-name": (lambda: report("node-2", key="node-1"), "not_its_own"),
    "wrong-key": (lambda: report("node-1", key="node-3"), "bad_signature"),
    "altered": (lambda: _altered(report("node-1")), "bad_signature"),
    "another-source": (
        lambda: report("node-1", source=bridge_source("other", "node-1")),
        "not_its_own",
    ),
    "a-backend-outcome": (_backend_outcome, "not_its_own"),
    "stale": (
        lambda: report("node-1", at=NOW - timedelta(milliseconds=MAX_AGE_MS + 1000)),
        "stale",
    ),
    "future": (
        lambda: report("node-1", at=NOW + timedelta(milliseconds=MAX_AGE_MS + 1000)),
        "stale",
    ),
    "oversized": (lambda: report("node-1") + b" " * ev.MAX_EVENT_BYTES, "oversized"),
    "garbage": (lambda: b"\x00\xffnot json", "garbage"),
    "no-time-zone": (lambda: _retimed(report("node-1"), "2026-12-03T01:00:00"), "garbage"),
    "not-a-time": (lambda: _retimed(report("node-1"), "yesterday"), "garbage"),
    "json-but-no-event": (lambda: b'{"specversion": "1.0"}', "garbage"),
    "unknown-type": (
        lambda: report("node-1").replace(b"io.flashgate.node.misbehaved", b"io.flashgate.x.y"),
        "garbage",
    ),
}


@pytest.mark.parametrize("forged", list(FORGED))
async def test_a_forged_report_is_dropped_and_counted_and_the_relay_goes_on(forged: str) -> None:
    make, reason = FORGED[forged]
    r = Relay()
    with capture_logs() as logs:
        assert not await r.accept("node-1", make())
    assert r.stream == []
    assert r.relay.dropped["node-1"][reason] == 1
    assert [e["reason"] for e in logs if e["event"] == "node report dropped"] == [reason]
    assert await r.accept("node-1", report("node-1"))  # an honest one still goes through
    assert len(r.stream) == 1


async def test_a_replayed_report_is_dropped() -> None:
    r = Relay()
    raw = report("node-1")
    assert await r.accept("node-1", raw)
    assert not await r.accept("node-1", raw)
    assert len(r.stream) == 1
    assert r.relay.dropped["node-1"]["replayed"] == 1


async def test_a_revoked_nodes_report_is_dropped() -> None:
    r = Relay(revoked=frozenset({"node-1"}))
    assert not await r.accept("node-1", report("node-1"))
    assert r.relay.dropped["node-1"]["unknown_node"] == 1
    assert await r.accept("node-2", report("node-2", about="node-1"))


async def test_a_flooding_node_gets_its_bucket_and_no_more_and_others_get_through() -> None:
    flood = [report("node-1") for _ in range(500)]
    cost = max(len(flood[0]), MIN_COST_BYTES)  # every one the same size
    r = Relay(burst=5 * cost, rate=2 * cost)  # five at once, then two a second
    with capture_logs() as logs:
        relayed = [await r.accept("node-1", raw) for raw in flood]
    assert sum(relayed) == 5  # the burst: the fake clock has not moved
    assert r.relay.dropped["node-1"]["rate_limited"] == 495
    assert [e["event"] for e in logs] == ["node report dropped"]  # one line, not 495
    assert await r.accept("node-2", report("node-2", about="node-1"))
    r.now += 1.0  # a second later: two more tokens
    assert [await r.accept("node-1", raw) for raw in flood[5:9]] == [True, True, False, False]
    with capture_logs() as logs:
        r.relay.log_summary()
    [line] = logs
    assert line["node"] == "node-1" and line["reasons"] == {"rate_limited": 497}
    assert r.relay.summary()["node-1"] == {"relayed": 7, "rate_limited": 497}
    assert r.relay.summary()["node-2"] == {"relayed": 1}


async def test_a_full_replay_cache_refuses_rather_than_forgets() -> None:
    r = Relay()
    r.relay.replay_capacity = 3
    accepted = [await r.accept("node-1", report("node-1")) for _ in range(4)]
    assert accepted == [True, True, True, False]
    assert r.relay.dropped["node-1"]["replay_cache_full"] == 1


async def test_a_failed_publish_is_counted_and_the_relay_goes_on() -> None:
    r = Relay()
    calls: list[Any] = []

    async def failing(subject: str, payload: bytes, headers: dict[str, str]) -> None:
        calls.append(subject)
        raise ConnectionError("broker away")

    r.relay.publish = failing
    assert not await r.accept("node-1", report("node-1"))
    assert r.relay.dropped["node-1"]["publish_failed"] == 1 and calls


def test_the_token_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    bucket = TokenBucket(rate=100.0, burst=200.0, tokens=200.0, stamp=0.0)
    assert [bucket.take(0.0, 100) for _ in range(3)] == [True, True, False]
    assert bucket.take(1.0, 100) and not bucket.take(1.0, 1)
    assert not bucket.take(2.0, 101)  # too big for what is there: nothing taken
    assert bucket.take(2.0, 100)
    assert [bucket.take(100.0, 100) for _ in range(3)] == [True, True, False]  # capped
    assert not bucket.take(50.0, 1)  # a clock going back adds nothing
