"""Benchmark of the AI gateway: small chat completions direct vs through the gateway.

Run from the repository root:

    .venv/bin/python bench/gateway_ai.py [--quick] [--json] [--rate 200] [--concurrency 16]

Three processes on loopback: an OpenAI-compatible upstream (aiohttp, a fixed small chat
completion, and a 5-chunk server-sent event stream), the gateway (the node's
:class:`~flashgate.gateway.server.GatewayServer` over a vault holding one AI secret and
one repository AI API key, as a Bridge Node runs it, without NATS), and this client
(aiohttp). The client sends the same requests straight to the upstream with the provider
key ("direct") and to the gateway with the repository API key ("gateway"), interleaved so
that machine noise hits both alike:

1. Fixed rate: ``--rate`` requests/s in total (open loop: each request its own task, at
   its scheduled time) for the phase's duration, half direct, half through the gateway.
   Latency p50/p99 of each; the gateway's added latency is the difference. Goals (the
   issue's, for 4 KiB S3 GETs, applied to small chat completions): added p50 under 1 ms,
   added p99 under 5 ms.
2. Saturation: ``--concurrency`` requests in flight (closed loop), direct for the phase's
   duration, then through the gateway. Goal: the gateway at least 70% of direct.
   For reference, a bare aiohttp proxy (it only relays: no key, no vault, no accounting)
   is saturated the same way: the floor of any aiohttp relay on this machine.
3. Streaming: ``stream: true`` completions one at a time: time to the first chunk and to
   the end of the stream, direct and through the gateway.

``--quick`` runs each phase 3 s; the default 10 s. Progress goes to stderr, the table (or
``--json``) to stdout. Timings never fail the script (exit 0, PASS/MISS by the goals).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
from harness import (
    Goal,
    Latency,
    arg_parser,
    at_least,
    below,
    fmt_ms,
    fmt_rate,
    goal_summary,
    header_lines,
    log,
    machine_info,
    mode_of,
    print_json,
    print_lines,
    render_table,
)

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("aiohttp", "msgspec")
PROVIDER_KEY = "sk-bench-provider-key-0000000000000000"
REPO = "bench"
CHAT = json.dumps(
    {"model": "bench-model", "messages": [{"role": "user", "content": "Say hello."}]}
).encode()
STREAM = json.dumps(
    {
        "model": "bench-model",
        "messages": [{"role": "user", "content": "Say hello."}],
        "stream": True,
    }
).encode()


@dataclass(frozen=True)
class Profile:
    phase_s: float
    stream_calls: int


FULL = Profile(phase_s=10.0, stream_calls=200)
QUICK = Profile(phase_s=3.0, stream_calls=50)
SMOKE = Profile(phase_s=0.3, stream_calls=3)


# --------------------------------------------------------------------------- servers


async def serve_upstream() -> None:
    """The upstream: a fixed answer for every chat completion (or a 5-chunk stream)."""
    from aiohttp import web

    answer = json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 0,
            "model": "bench-model",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hello there!"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6},
        }
    ).encode()
    chunks = [
        b"data: "
        + json.dumps(
            {
                "id": "chatcmpl-bench",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": "bench-model",
                "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}],
            }
        ).encode()
        + b"\n\n"
        for w in ("Hello", " there", "!", " How", " can I help?")
    ]

    async def chat(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {PROVIDER_KEY}":
            return web.json_response({"error": {"message": "bad key"}}, status=401)
        body = await request.read()
        if b'"stream": true' not in body:
            return web.Response(body=answer, content_type="application/json")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for chunk in chunks:
            await response.write(chunk)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(json.dumps({"port": runner.addresses[0][1]}), flush=True)
    await asyncio.Event().wait()


async def serve_bare_proxy(upstream_url: str) -> None:
    """The floor: an aiohttp proxy that only relays (no key, no vault, no accounting)."""
    from aiohttp import web

    session = aiohttp.ClientSession()
    headers = {"Authorization": f"Bearer {PROVIDER_KEY}", "Content-Type": "application/json"}

    async def relay(request: web.Request) -> web.Response:
        body = await request.read()
        async with session.post(
            f"{upstream_url}/chat/completions", data=body, headers=headers
        ) as answer:
            data = await answer.read()
        return web.Response(body=data, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", relay)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(json.dumps({"port": runner.addresses[0][1]}), flush=True)
    await asyncio.Event().wait()


async def serve_gateway(upstream_url: str) -> None:
    """The gateway over a vault with one AI secret and one repository AI API key."""
    from flashgate import logs
    from flashgate.bridge.gateway_authority import VaultAuthority
    from flashgate.bridge.vault import Vault
    from flashgate.crypto.api_key_tokens import new_key_id, new_key_secret
    from flashgate.events.envelope import ProvenApiKey
    from flashgate.gateway.server import GatewayServer

    logs.configure(level="warning", json=True)  # no access log lines in the measurement
    vault = Vault()
    key_id, secret = new_key_id(), new_key_secret()
    vault.put(
        f"{REPO}.{key_id}",
        1,
        1,
        "apikey",
        bytearray(secret),
        api_key=ProvenApiKey(key_id=key_id, scope="ai", access="openai"),
    )
    value = {"type": "ai", "provider": "openai", "api_key": PROVIDER_KEY, "base_url": upstream_url}
    vault.put(f"{REPO}.llm", 1, 1, "ai", bytearray(json.dumps(value).encode()))
    server = GatewayServer(VaultAuthority(vault, lambda: True), "bench-node")
    await server.start("127.0.0.1", 0)
    print(json.dumps({"port": server.port, "token": f"{key_id}.{secret.decode()}"}), flush=True)
    await asyncio.Event().wait()


@contextlib.contextmanager
def child(*args: str) -> Any:
    process = subprocess.Popen(
        [sys.executable, __file__, *args], stdout=subprocess.PIPE, cwd=ROOT, text=True
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            raise SystemExit(f"bench child {args[:2]} did not start")
        yield json.loads(line)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


# --------------------------------------------------------------------------- client


@dataclass(frozen=True)
class Target:
    name: str
    url: str
    headers: dict[str, str]


async def call(http: aiohttp.ClientSession, target: Target, body: bytes = CHAT) -> float:
    started = time.perf_counter()
    async with http.post(target.url, data=body, headers=target.headers) as answer:
        await answer.read()
        if answer.status != 200:
            raise RuntimeError(f"{target.name}: HTTP {answer.status}")
    return time.perf_counter() - started


async def fixed_rate(
    http: aiohttp.ClientSession, targets: Sequence[Target], rate: float, seconds: float
) -> dict[str, list[float]]:
    """Open loop: request i at start + i/rate, alternating targets."""
    samples: dict[str, list[float]] = {t.name: [] for t in targets}
    tasks: list[asyncio.Task[None]] = []

    async def one(target: Target) -> None:
        samples[target.name].append(await call(http, target))

    start = time.perf_counter()
    total = max(len(targets), int(rate * seconds))
    for i in range(total):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(targets[i % len(targets)])))
    await asyncio.gather(*tasks)
    return samples


async def saturation(
    http: aiohttp.ClientSession, target: Target, concurrency: int, seconds: float
) -> float:
    """Closed loop: ``concurrency`` in flight; completions per second."""
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await call(http, target)
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.perf_counter() - started)


async def streaming(
    http: aiohttp.ClientSession, target: Target, calls: int
) -> tuple[list[float], list[float]]:
    first, whole = [], []
    for _ in range(calls):
        started = time.perf_counter()
        async with http.post(target.url, data=STREAM, headers=target.headers) as answer:
            got_first = False
            async for _chunk in answer.content.iter_any():
                if not got_first:
                    first.append(time.perf_counter() - started)
                    got_first = True
        whole.append(time.perf_counter() - started)
    return first, whole


@dataclass
class Results:
    rate: float
    concurrency: int
    fixed: dict[str, Latency]
    throughput: dict[str, float]
    stream_first: dict[str, Latency]
    stream_whole: dict[str, Latency]


async def measure(profile: Profile, args: argparse.Namespace) -> Results:
    with child("--serve-upstream") as up:
        upstream_url = f"http://127.0.0.1:{up['port']}/v1"
        with (
            child("--serve-gateway", upstream_url) as gw,
            child("--serve-bare-proxy", upstream_url) as bare,
        ):
            direct = Target(
                "direct",
                f"{upstream_url}/chat/completions",
                {"Authorization": f"Bearer {PROVIDER_KEY}", "Content-Type": "application/json"},
            )
            gateway = Target(
                "gateway",
                f"http://127.0.0.1:{gw['port']}/v1/chat/completions",
                {"Authorization": f"Bearer {gw['token']}", "Content-Type": "application/json"},
            )
            bare_proxy = Target(
                "bare proxy",
                f"http://127.0.0.1:{bare['port']}/v1/chat/completions",
                {"Content-Type": "application/json"},
            )
            targets = (direct, gateway)
            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=connector) as http:
                log("warm-up")
                for _ in range(20):
                    for t in targets:
                        await call(http, t)
                log(f"fixed rate: {args.rate:g} requests/s for {profile.phase_s:g} s")
                samples = await fixed_rate(http, targets, args.rate, profile.phase_s)
                throughput = {}
                for t in targets:
                    log(f"saturation ({t.name}): {args.concurrency} in flight")
                    throughput[t.name] = await saturation(
                        http, t, args.concurrency, profile.phase_s
                    )
                log(f"saturation (a bare aiohttp proxy): {args.concurrency} in flight")
                throughput[bare_proxy.name] = await saturation(
                    http, bare_proxy, args.concurrency, profile.phase_s
                )
                first: dict[str, Latency] = {}
                whole: dict[str, Latency] = {}
                for t in targets:
                    log(f"streaming ({t.name}): {profile.stream_calls} streams")
                    f, w = await streaming(http, t, profile.stream_calls)
                    first[t.name], whole[t.name] = Latency.of(f), Latency.of(w)
    return Results(
        rate=args.rate,
        concurrency=args.concurrency,
        fixed={name: Latency.of(s) for name, s in samples.items()},
        throughput=throughput,
        stream_first=first,
        stream_whole=whole,
    )


# --------------------------------------------------------------------------- report


def goals_of(r: Results) -> list[tuple[str, float, Goal]]:
    added_p50 = r.fixed["gateway"].p50 - r.fixed["direct"].p50
    added_p99 = r.fixed["gateway"].p99 - r.fixed["direct"].p99
    share = r.throughput["gateway"] / r.throughput["direct"] if r.throughput["direct"] else 0.0
    return [
        ("added p50 (ms)", added_p50 * 1e3, below(0.001, "< 1 ms")(added_p50)),
        ("added p99 (ms)", added_p99 * 1e3, below(0.005, "< 5 ms")(added_p99)),
        ("gateway / direct throughput", share, at_least(0.7, ">= 70%")(share)),
    ]


def print_report(info: dict[str, Any], mode: str, r: Results, elapsed: float) -> None:
    print_lines(header_lines(f"AI gateway benchmark ({mode})", info))
    print()
    rows = []
    for name in ("direct", "gateway"):
        lat = r.fixed[name]
        rows.append(
            [
                f"chat, {r.rate:g}/s fixed",
                name,
                fmt_ms(lat.p50),
                fmt_ms(lat.p99),
                str(lat.count),
                fmt_rate(r.throughput[name]),
                fmt_ms(r.stream_first[name].p50),
                fmt_ms(r.stream_whole[name].p50),
            ]
        )
    header = ["workload", "path", "p50 ms", "p99 ms", "n", f"sat. req/s (c={r.concurrency})",
              "stream 1st p50 ms", "stream end p50 ms"]  # fmt: skip
    print_lines(render_table(header, rows, right=frozenset(range(2, 8))))
    print()
    goals = goals_of(r)
    grows = [[text, f"{value:.3f}" if "ms" in text else f"{value:.0%}", g.text, g.result]
             for text, value, g in goals]  # fmt: skip
    print_lines(render_table(["measure", "value", "goal", ""], grows, right=frozenset({1})))
    print()
    floor = r.throughput["bare proxy"]
    print(
        f"reference: a bare aiohttp proxy (no key, no vault, no accounting) saturates at "
        f"{fmt_rate(floor)} req/s; the gateway reaches "
        f"{r.throughput['gateway'] / floor if floor else 0:.0%} of it"
    )
    print(goal_summary([g for *_, g in goals]) + f"; {elapsed:.0f} s")


def to_json(info: dict[str, Any], mode: str, r: Results, elapsed: float) -> dict[str, Any]:
    return {
        "mode": mode,
        "machine": info,
        "rate": r.rate,
        "concurrency": r.concurrency,
        "rows": [
            {
                "key": f"chat.{name}",
                "fixed_latency": asdict(r.fixed[name]),
                "saturation_per_s": r.throughput[name],
                "stream_first": asdict(r.stream_first[name]),
                "stream_whole": asdict(r.stream_whole[name]),
            }
            for name in ("direct", "gateway")
        ],
        "bare_proxy_saturation_per_s": r.throughput["bare proxy"],
        "goals": [
            {"measure": text, "value": value, "goal": g.text, "result": g.result}
            for text, value, g in goals_of(r)
        ],
        "elapsed_s": elapsed,
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = arg_parser(__doc__, "3 s per phase")
    parser.add_argument("--rate", type=float, default=200.0, help="requests/s, fixed-rate phase")
    parser.add_argument("--concurrency", type=int, default=16, help="in flight, saturation")
    parser.add_argument("--serve-upstream", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve-gateway", metavar="URL", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--serve-bare-proxy", metavar="URL", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_upstream:
        asyncio.run(serve_upstream())
        return 0
    if args.serve_gateway:
        asyncio.run(serve_gateway(args.serve_gateway))
        return 0
    if args.serve_bare_proxy:
        asyncio.run(serve_bare_proxy(args.serve_bare_proxy))
        return 0
    mode = mode_of(args)
    profile = {"smoke": SMOKE, "quick": QUICK, "full": FULL}[mode]
    if mode == "smoke":
        args.rate = min(args.rate, 50.0)
    info = machine_info(PACKAGES)
    started = time.perf_counter()
    results = asyncio.run(measure(profile, args))
    elapsed = time.perf_counter() - started
    if args.json:
        print_json(to_json(info, mode, results, elapsed))
    else:
        print_report(info, mode, results, elapsed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
