"""``flashgate bridge``: run one Bridge Node."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path
from typing import TYPE_CHECKING

import click
import structlog

from flashgate import logs
from flashgate.bridge import hardening, heap
from flashgate.cli.passphrase import node_passphrase, uses_shared_passphrase
from flashgate.environment import (
    ADMIN_PASSPHRASE_ENV,
    BUNDLE_ENV,
    GATEWAY_LISTEN_ENV,
    NATS_PASSWORD_ENV,
    NATS_URL_ENV,
    NATS_USER_ENV,
    NODE_PASSPHRASE_ENV,
    PASSPHRASE_ENV,
)

if TYPE_CHECKING:
    from flashgate.bridge.node import BridgeNode


@click.command()
@click.option(
    "--bundle",
    type=click.Path(path_type=Path),
    envvar=BUNDLE_ENV,
    required=True,
    help="This node's sealed bundle.",
)
@click.option(
    "--nats",
    "nats_url",
    envvar=NATS_URL_ENV,
    default="nats://127.0.0.1:4222",
    show_default=True,
    help="NATS URL(s), comma-separated.",
)
@click.option(
    "--nats-user",
    envvar=NATS_USER_ENV,
    default=None,
    help="Log in as this NATS user instead of with the node's own NKey (from its bundle).",
)
@click.option("--nats-password", envvar=NATS_PASSWORD_ENV, default=None)
@click.option("--no-mlock", is_flag=True, help="Do not lock memory (mlockall).")
@click.option(
    "--workers",
    type=click.IntRange(1, 256),
    default=None,
    help="Threads for partial decryptions (default: every core).",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Serve Prometheus metrics on this port (127.0.0.1 unless --metrics-host).",
)
@click.option("--metrics-host", default="127.0.0.1", show_default=True)
@click.option(
    "--gateway-listen",
    envvar=GATEWAY_LISTEN_ENV,
    default=None,
    callback=lambda _ctx, _param, value: _listen_address(value),
    help="Serve the gateway (S3 and OpenAI-compatible) on HOST:PORT (default: off).",
)
@click.option(
    "--gateway-drain-seconds",
    type=click.FloatRange(0, 600),
    default=5.0,
    show_default=True,
    help="On SIGTERM, how long gateway requests in flight may finish before the purge.",
)
@click.option(
    "--no-fast-path",
    is_flag=True,
    help="Load every secret by the cold path (one threshold decryption each) and write no "
    "fast wraps: for benchmarks and diagnosis (DESIGN §6).",
)
@click.option("--log-level", default="info", show_default=True)
@click.option("--log-json/--log-console", default=None, help="Default: JSON unless a terminal.")
def bridge(
    bundle: Path,
    nats_url: str,
    nats_user: str | None,
    nats_password: str | None,
    no_mlock: bool,
    workers: int | None,
    metrics_port: int | None,
    metrics_host: str,
    gateway_listen: tuple[str, int] | None,
    gateway_drain_seconds: float,
    no_fast_path: bool,
    log_level: str,
    log_json: bool | None,
) -> None:
    """Run a Bridge Node. Its bundle's passphrase: FLASHGATE_NODE_PASSPHRASE (else the old
    shared FLASHGATE_PASSPHRASE, else a prompt on a terminal). The process is hardened
    before the bundle is unsealed."""
    from flashgate.bridge.node import BridgeNode, BridgeSettings
    from flashgate.fleet import directory

    # First: no core dumps, not dumpable, memory locked, before any key is in memory.
    report = hardening.harden(lock_memory=not no_mlock)
    logs.configure(level=log_level, json=log_json)
    log = structlog.get_logger("flashgate.bridge")
    log.info("process hardening", **report.as_dict())
    passphrase = node_passphrase(bundle)
    if uses_shared_passphrase(NODE_PASSPHRASE_ENV):
        log.warning(
            f"bundle opened with {PASSPHRASE_ENV}, the old shared passphrase: set "
            f"{NODE_PASSPHRASE_ENV} to this node's own passphrase, and keep "
            f"{ADMIN_PASSPHRASE_ENV} and other nodes' passphrases out of this process"
        )
    opened = directory.read_bundle(bundle, passphrase)
    settings = BridgeSettings(
        nats_urls=[u.strip() for u in nats_url.split(",") if u.strip()],
        nats_user=nats_user,
        nats_password=nats_password,
        lock_memory=not no_mlock,
        workers=workers,
        metrics_port=metrics_port,
        metrics_host=metrics_host,
        gateway_listen=gateway_listen,
        gateway_drain_s=gateway_drain_seconds,
        fast_path=not no_fast_path,
        bundle_path=bundle,
        passphrase=passphrase,  # to re-seal the bundle after a fleet key rotation
    )
    node = BridgeNode(opened, settings, hardening=report)
    asyncio.run(_run(node, heap.before_load()))
    if node.revoked:
        raise SystemExit(EXIT_REVOKED)
    if node.failed:
        raise SystemExit(EXIT_FAILED)


def _listen_address(value: str | None) -> tuple[str, int] | None:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) as (host, port); None stays None."""
    if value is None or value == "":
        return None
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise click.BadParameter(f"{value[:80]!r} is not HOST:PORT (e.g. 127.0.0.1:8080)")
    return host, int(port)


#: Exit status of a node that found itself revoked: supervisors must not restart it.
EXIT_REVOKED = 3
#: Exit status of a node one of whose tasks failed (it purged and stopped): restart it.
EXIT_FAILED = 1


async def _after_load(node: BridgeNode, thresholds: tuple[int, int, int]) -> None:
    await node.initial_load_done.wait()
    heap.after_load(thresholds)


async def _run(node: BridgeNode, thresholds: tuple[int, int, int]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    stopper = asyncio.create_task(stop.wait())
    loaded = asyncio.create_task(_after_load(node, thresholds))
    # The node can stop itself (it finds itself revoked) while it is still starting.
    waiter = asyncio.create_task(node.wait_stopped())
    starter = asyncio.create_task(node.start())  # may wait for NATS or the buckets
    await asyncio.wait({starter, stopper, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if starter.done() and not stop.is_set() and not waiter.done():
        starter.result()  # a start-up error ends here, as a typed error
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    starter.cancel()
    stopper.cancel()
    loaded.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await starter
    # Requests in flight finish first (bounded by --gateway-drain-seconds), then the purge.
    with contextlib.suppress(Exception):
        await node.drain_gateway()
    await asyncio.wait_for(node.stop(), 4.5)
