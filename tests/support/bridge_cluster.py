"""Bridge Nodes as real processes (``python -m flashgate.cli.main bridge``) around an
in-process backend on SQLite and a fleet dealt from the fixed test primes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from nats.aio.client import Client

from flashgate.backend import db
from flashgate.backend.service import Backend, BackendSettings
from flashgate.events.node_status import (
    STATUS_REQUEST_CODEC,
    STATUS_RESPONSE_CODEC,
    StatusRequest,
    StatusResponse,
)
from flashgate.events.signing import sign
from tests.support.admin_client import AdminClient
from tests.support.fleets import FleetFixture, make_fleet
from tests.support.material import TEST_PASSPHRASE

ROOT = Path(__file__).resolve().parents[2]  # the repository


@dataclass
class NodeProcess:
    node_id: str
    bundle: Path
    nats_url: str
    log: Path
    module: str = "flashgate.cli.main"
    extra_args: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "FLASHGATE_PASSPHRASE": TEST_PASSPHRASE, "PYTHONPATH": str(ROOT)}
        args = [sys.executable, "-m", self.module]
        if self.module == "flashgate.cli.main":
            args.append("bridge")
        args += [
            "--bundle",
            str(self.bundle),
            "--nats",
            self.nats_url,
            "--log-json",
            "--workers",
            "1",
            *self.extra_args,
        ]
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=self.log.open("ab"), env=env, cwd=ROOT
        )

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        if self.running:
            assert self.process is not None
            self.process.kill()
            self.process.wait(10)

    def terminate(self, timeout: float = 10) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)


@dataclass
class Cluster:
    fleet: FleetFixture
    admin: AdminClient
    nodes: dict[str, NodeProcess]
    nc: Client

    async def status(self, node_id: str, timeout: float = 2.0) -> StatusResponse:
        request = sign(
            StatusRequest(
                fleet=self.fleet.name,
                request_id=secrets.token_bytes(16),
                issued_at=int(time.time() * 1000),
            ),
            self.fleet.admin,
        )
        msg = await self.nc.request(
            self.fleet.names.status_subject(node_id),
            STATUS_REQUEST_CODEC.encode(request),
            timeout=timeout,
        )
        return STATUS_RESPONSE_CODEC.decode(msg.data)

    async def try_status(self, node_id: str) -> StatusResponse | None:
        try:
            return await self.status(node_id, timeout=1.0)
        except Exception:
            return None

    async def wait_up(self, node_ids: list[str], timeout: float = 60) -> None:
        await wait_until(lambda: _all_answer(self, node_ids), timeout, f"{node_ids} up")

    async def wait_held(
        self, node_ids: list[str], key: str, version: int, timeout: float = 60
    ) -> None:
        async def held() -> bool:
            for node in node_ids:
                status = await self.try_status(node)
                if status is None or (key, version) not in {
                    (s.key, s.version) for s in status.secrets
                }:
                    return False
            return True

        await wait_until(held, timeout, f"{key} v{version} held by {node_ids}")

    def start(self, node_id: str) -> None:
        self.nodes[node_id].start()


async def _all_answer(cluster: Cluster, node_ids: list[str]) -> bool:
    for node in node_ids:
        if await cluster.try_status(node) is None:
            return False
    return True


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def running_cluster(
    tmp_path: Path,
    nats_url: str,
    nc: Client,
    *,
    nodes: int,
    threshold: int,
    start: bool = True,
) -> AsyncIterator[Cluster]:
    fleet = make_fleet(tmp_path / "fleets", nodes=nodes, threshold=threshold)
    url = f"sqlite:///{tmp_path / 'backend.db'}"
    await asyncio.to_thread(db.migrate, url)
    backend = Backend(BackendSettings(nats_urls=[nats_url], db_url=url, fleet_dir=fleet.dir))
    await backend.start()
    admin = AdminClient(fleet, nc)
    await admin.start()
    logs = tmp_path / "logs"
    logs.mkdir(exist_ok=True)
    procs = {
        f"node-{i}": NodeProcess(
            f"node-{i}", fleet.dir / "nodes" / f"node-{i}.bundle", nats_url, logs / f"node-{i}.log"
        )
        for i in range(1, nodes + 1)
    }
    cluster = Cluster(fleet=fleet, admin=admin, nodes=procs, nc=nc)
    try:
        if start:
            for proc in procs.values():
                proc.start()
            await cluster.wait_up(list(procs))
        yield cluster
    finally:
        for proc in procs.values():
            with contextlib.suppress(Exception):
                if proc.running:
                    proc.terminate(5)
            proc.kill()
        await admin.close()
        await backend.stop()
