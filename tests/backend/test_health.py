"""The backend's health (--health-file, `flashgate backend health`): healthy only while it
is connected to NATS, the database answers, its tasks run and the outbox relay moves."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
from structlog.testing import capture_logs

from flashgate.backend import health
from flashgate.backend.models import OutboxMessage
from flashgate.backend.service import Backend, BackendSettings
from flashgate.devcluster.nats_server import NatsServerProcess
from tests.support.databases import PG_ADMIN_URL
from tests.support.fleets import FleetFixture


async def until(condition: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


def health_cli(path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHGATE_")}
    env["FLASHGATE_HEALTH_FILE"] = str(path)
    return subprocess.run(
        [sys.executable, "-m", "flashgate.cli.main", "backend", "health", *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


async def test_healthy_while_running_unhealthy_when_nats_goes_or_the_relay_sticks(
    fleet: FleetFixture, db_url: str, tmp_path: Path
) -> None:
    server = NatsServerProcess(tmp_path / "nats", name="health")
    server.start()
    server.wait_ready(20)
    path = tmp_path / "backend.health"
    service = Backend(
        BackendSettings(
            nats_urls=[server.url], db_url=db_url, fleet_dir=fleet.dir, health_file=path
        )
    )
    assert health.read(path) and "no health file" in health.read(path)[0]
    await service.start()
    try:

        async def healthy_file() -> bool:
            return path.exists() and health.read(path) == []

        await until(healthy_file, 15, "a healthy health file")
        assert "secret" not in path.read_text().lower()
        result = await asyncio.to_thread(health_cli, path)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "healthy"

        # A committed message the relay cannot publish (no stream takes its subject),
        # waiting longer than the relay may take: stuck.
        assert service.sessions is not None
        async with service.sessions() as session, session.begin():
            session.add(
                OutboxMessage(
                    created_at=datetime.now(UTC) - timedelta(seconds=120),
                    subject="fg-health-test.nowhere",
                    msg_id="health-test-1",
                    operation="event",
                    payload=b"{}",
                )
            )
        assert await health.check(service, stuck_after=600) == []
        stuck = await health.check(service)
        assert len(stuck) == 1 and stuck[0].startswith("outbox relay stuck"), stuck
        async with service.sessions() as session, session.begin():  # let it go again
            row = await session.get(OutboxMessage, await _row_id(service))
            assert row is not None
            await session.delete(row)

        server.stop()

        async def nats_missed() -> bool:
            return "not connected to NATS" in await health.check(service)

        await until(nats_missed, 15, "the check to see NATS gone")
        server.start()
        server.wait_ready(20)

        async def healthy_again() -> bool:
            return await health.check(service) == []

        await until(healthy_again, 30, "healthy after NATS returned")
    finally:
        await service.stop()
        server.stop()
    assert not path.exists()  # a stopped backend leaves no file that could look fresh
    result = await asyncio.to_thread(health_cli, path)
    assert result.returncode == 1
    assert "no health file" in result.stderr


async def _row_id(service: Backend) -> int:
    from sqlalchemy import select

    assert service.sessions is not None
    async with service.sessions() as session:
        row_id = await session.scalar(
            select(OutboxMessage.id).where(OutboxMessage.msg_id == "health-test-1")
        )
    assert row_id is not None
    return row_id


async def test_unhealthy_while_postgresql_refuses_connections(
    fleet: FleetFixture, pg_url: str, nats_url: str, tmp_path: Path
) -> None:
    service = Backend(BackendSettings(nats_urls=[nats_url], db_url=pg_url, fleet_dir=fleet.dir))
    await service.start()
    database = pg_url.rsplit("/", 1)[1]
    admin = await asyncpg.connect(PG_ADMIN_URL)
    capture = capture_logs()
    logs = capture.__enter__()

    async def healthy_again() -> bool:
        return await health.check(service) == []

    try:
        # start() returns with the command consumer still subscribing (unhealthy until then)
        await until(healthy_again, 30, "healthy once the command consumer is in place")
        await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
            database,
        )

        async def db_missed() -> bool:
            problems = await health.check(service)
            return any("database" in p for p in problems)

        await until(db_missed, 20, "the check to see the database gone")

        # The relay lease was on a terminated connection: the lease loop notices and
        # tries to take it again while the database still refuses (it must keep trying).
        async def lease_retried_or_died() -> bool:
            retried = any(e["event"].startswith("outbox relay lease: database") for e in logs)
            retried |= any(e["event"].startswith("outbox relay interrupted") for e in logs)
            return retried or any("task has ended" in p for p in await health.check(service))

        await until(lease_retried_or_died, 20, "the relay lease loop to meet the outage")
        assert not [p for p in await health.check(service) if "task has ended" in p]
        await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
        await until(healthy_again, 30, "healthy after the database returned")
    finally:
        capture.__exit__(None, None, None)
        await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
        await admin.close()
        await service.stop()


def test_a_stale_or_unhealthy_file_is_unhealthy(tmp_path: Path) -> None:
    path = tmp_path / "backend.health"
    health.write(path, [])
    assert health.read(path) == []
    body = json.loads(path.read_text())
    body["checked_at"] -= 120
    path.write_text(json.dumps(body))
    stale = health.read(path, max_age=30)
    assert len(stale) == 1 and "has not checked its health" in stale[0]
    assert health.read(path, max_age=600) == []
    health.write(path, ["not connected to NATS"])
    assert health.read(path) == ["not connected to NATS"]
    result = health_cli(path)
    assert result.returncode == 1
    assert "unhealthy: not connected to NATS" in result.stderr
    path.write_text("{")
    assert health.read(path) == [f"unreadable health file at {path}"]
