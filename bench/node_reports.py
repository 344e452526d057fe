"""Benchmark of the backend's relay of node reports (flashgate.backend.node_reports).

Run from the repository root:

    .venv/bin/python bench/node_reports.py [--quick] [--json]

``--quick`` runs fewer rounds (a few seconds); the default takes well under a minute.
``--json`` prints machine-readable results instead of the table. Progress goes to stderr,
results to stdout. The script never fails on timings: it exits 0. No goal is set.

Measured, in process (no server, the stream a no-op): the time :meth:`NodeReportRelay.accept`
takes per report, one core, no GC inside a round, the median over rounds (with the fastest
and slowest), for each path a report can take:

- ``relayed``: a fresh, valid ``node.misbehaved`` (size and bucket checks, strict decode,
  signer and freshness, roster key, Ed25519 verify, replay cache, re-encode, publish);
- ``rate_limited``: the node's bucket is empty (what a flood costs per message past it);
- ``garbage``: bytes that do not decode, inside the bucket;
- ``bad_signature``: a well-formed report signed with another node's key, inside the bucket;
- ``replayed``: a report already relayed (its signature is checked before the cache).

What NATS costs on top (the client reading and queueing each message) is not in these
numbers: tests/backend/test_node_report_relay.py floods a real server.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from harness import (
    arg_parser,
    fmt_rate,
    fmt_us,
    gc_paused,
    header_lines,
    log,
    machine_info,
    mode_of,
    print_json,
    render_table,
)

from flashgate import logs
from flashgate.backend.node_reports import NodeReportRelay
from flashgate.events import domain as ev
from flashgate.events.event_auth import bridge_source, sign_event
from flashgate.events.fleet import Roster, RosterNode, encode_roster
from flashgate.events.subjects import FleetNames
from flashgate.fleet.identity_keys import new_ed25519, new_x25519, public_b64

NAMES = FleetNames("bench")
KEYS = {node: new_ed25519() for node in ("node-1", "node-2")}
ROSTER = encode_roster(
    Roster(
        fleet="bench",
        epoch=1,
        serial=1,
        issued_at=0,
        nodes=[
            RosterNode(
                id=node,
                index=i + 1,
                signing_key=public_b64(key),
                exchange_key=public_b64(new_x25519()),
                status="active",
            )
            for i, (node, key) in enumerate(KEYS.items())
        ],
    )
).decode()


@dataclass(frozen=True)
class Profile:
    rounds: int
    per_round: int


SMOKE, QUICK, FULL = Profile(1, 20), Profile(3, 500), Profile(7, 2000)


@dataclass
class Row:
    key: str
    what: str
    median: float
    fastest: float
    slowest: float

    @property
    def ops_per_s(self) -> float:
        return 1.0 / self.median if self.median > 0 else float("nan")


def report(key: str = "node-1") -> bytes:
    event = ev.make_event(
        ev.NodeMisbehaved(node_id="node-2", reporter="node-1", reason="invalid_partial", epoch=1),
        event_id=f"node-1.node-2.{secrets.token_hex(8)}",
        source=bridge_source("bench", "node-1"),
        subject="node-2",
    )
    return ev.encode_event(sign_event(event, KEYS[key]))


def relay(*, empty: bool = False) -> NodeReportRelay:
    async def read_roster() -> str:
        return ROSTER

    async def publish(subject: str, payload: bytes, headers: dict[str, str]) -> None:
        return None

    return NodeReportRelay(
        NAMES,
        read_roster,
        publish,
        burst_bytes=0 if empty else 1 << 40,
        rate_bytes=0.0,
        replay_capacity=1 << 30,
    )


async def per_report(
    make_relay: Callable[[], NodeReportRelay],
    inputs: Callable[[int], list[bytes]],
    profile: Profile,
    prepare: Callable[[NodeReportRelay, list[bytes]], Awaitable[None]] | None = None,
) -> list[float]:
    """Seconds per ``accept`` in each round (fresh relay and inputs per round)."""
    samples: list[float] = []
    for _ in range(profile.rounds):
        r, batch = make_relay(), inputs(profile.per_round)
        await r.accept("node-1", report())  # warm: the roster read, the bucket
        if prepare is not None:
            await prepare(r, batch)
        with gc_paused():
            start = time.perf_counter()
            for raw in batch:
                await r.accept("node-1", raw)
            samples.append((time.perf_counter() - start) / len(batch))
    return samples


async def relay_all(r: NodeReportRelay, batch: list[bytes]) -> None:
    for raw in batch:
        await r.accept("node-1", raw)


async def bench(profile: Profile) -> list[Row]:
    cases: list[tuple[str, str, list[float]]] = []
    cases.append(
        (
            "relayed",
            "a fresh, valid report: every check, verify, re-encode, publish",
            await per_report(relay, lambda n: [report() for _ in range(n)], profile),
        )
    )
    cases.append(
        (
            "rate_limited",
            "the node's bucket is empty: dropped before decoding",
            await per_report(
                lambda: relay(empty=True), lambda n: [report() for _ in range(n)], profile
            ),
        )
    )
    cases.append(
        (
            "garbage",
            "inside the bucket, does not decode",
            await per_report(relay, lambda n: [secrets.token_bytes(500)] * n, profile),
        )
    )
    cases.append(
        (
            "bad_signature",
            "inside the bucket, signed with another node's key",
            await per_report(relay, lambda n: [report("node-2") for _ in range(n)], profile),
        )
    )
    cases.append(
        (
            "replayed",
            "a report relayed before (verified, then found in the cache)",
            await per_report(relay, lambda n: [report() for _ in range(n)], profile, relay_all),
        )
    )
    return [Row(key, what, statistics.median(s), min(s), max(s)) for key, what, s in cases]


def table(rows: Sequence[Row]) -> list[str]:
    header = ["path", "µs/report", "reports/s", "fastest", "slowest", "what"]
    body = [
        [
            r.key,
            fmt_us(r.median),
            fmt_rate(r.ops_per_s),
            fmt_us(r.fastest),
            fmt_us(r.slowest),
            r.what,
        ]
        for r in rows
    ]
    return render_table(header, body, right=frozenset({1, 2, 3, 4}))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    return arg_parser(__doc__, "few rounds (a few seconds)").parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logs.configure(level="error", json=True)  # the drop lines go to stderr, not the table
    mode = mode_of(args)
    profile = {"smoke": SMOKE, "quick": QUICK, "full": FULL}[mode]
    info = machine_info()
    log("node report relay")
    rows = asyncio.run(bench(profile))
    if args.json:
        document: dict[str, Any] = {
            "mode": mode,
            "machine": info,
            "profile": asdict(profile),
            "rows": [{**asdict(r), "ops_per_s": r.ops_per_s} for r in rows],
        }
        print_json(document)
    else:
        for line in header_lines(f"node report relay ({mode})", info):
            print(line)
        print()
        for line in table(rows):
            print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
