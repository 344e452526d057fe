"""Failure behaviour of the backend: crashes, NATS outages, replicas, leaks."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from sqlalchemy import func, select
from structlog.testing import capture_logs

from flashgate.backend import db
from flashgate.backend.models import AuditEvent, OutboxMessage, ProcessedCommand
from flashgate.backend.service import Backend, BackendSettings
from flashgate.broker.connection import connect
from flashgate.broker.declare import declare_fleet
from flashgate.devcluster.nats_server import NatsServerProcess
from flashgate.events.domain import DomainEvent, decode_event
from flashgate.events.envelope import ENVELOPE_CODEC
from flashgate.failpoints import EXIT_CODE
from tests.support.admin_client import AdminClient
from tests.support.fleets import FleetFixture
from tests.support.material import CANARY

pytestmark = pytest.mark.nats


def backend_process(
    nats_url: str, db_url: str, fleet: FleetFixture, log: Path, failpoints: str = ""
) -> subprocess.Popen[bytes]:
    env = {**os.environ, "FLASHGATE_FAILPOINTS": failpoints}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flashgate.cli.main",
            "backend",
            "--nats",
            nats_url,
            "--db",
            db_url,
            "--fleet-dir",
            str(fleet.dir),
            "--log-json",
        ],
        stdout=subprocess.DEVNULL,
        stderr=log.open("ab"),
        env=env,
    )


async def kv_versions(admin: AdminClient) -> dict[str, int]:
    kv = await admin.js.key_value(admin.fleet.names.secrets_bucket)
    out = {}
    try:
        keys = await kv.keys()
    except Exception:
        return out
    for key in keys:
        try:
            out[key] = ENVELOPE_CODEC.decode((await kv.get(key)).value).version
        except KeyNotFoundError:
            continue
    return out


async def until(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def test_crash_between_commit_and_publish_loses_and_duplicates_nothing(
    nats_url: str, fleet: FleetFixture, admin: AdminClient, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'crash.db'}"
    await asyncio.to_thread(db.migrate, url)
    log = tmp_path / "backend.log"
    command = admin.put("crash", "one", CANARY)
    first = backend_process(nats_url, url, fleet, log, failpoints="backend.after_commit")
    try:
        await until(lambda: _stream_exists(admin), 20, "the backend to declare its streams")
        await admin.publish(command)
        code = await asyncio.to_thread(first.wait, 30)
    finally:
        if first.poll() is None:
            first.kill()
    assert code == EXIT_CODE, log.read_text()[-2000:]
    assert await kv_versions(admin) == {}  # committed, never published
    second = backend_process(nats_url, url, fleet, log)
    try:
        event = await admin.outcome(command.command_id, timeout=30)
        assert event.type == "io.flashgate.secret.created"
        await until(lambda: _has_version(admin, "crash.one", 1), 20, "the envelope")
        await asyncio.sleep(1.0)  # any duplicate would arrive now
    finally:
        second.terminate()
        try:
            assert await asyncio.to_thread(second.wait, 30) == 0
        finally:
            if second.poll() is None:
                second.kill()
    created = [e for e in admin.events if getattr(e.data, "command_id", None) == command.command_id]
    assert len(created) == 1  # published once, although the command was delivered twice
    kv = await admin.js.key_value(admin.fleet.names.secrets_bucket)
    history = await kv.history("crash.one")
    assert [h.revision for h in history] == [history[0].revision]  # one revision only
    engine = db.create_engine(url)
    async with db.sessionmaker(engine)() as session:
        results = (
            await session.scalars(
                select(AuditEvent.result).where(AuditEvent.command_id == command.command_id)
            )
        ).all()
        pending = await session.scalar(
            select(func.count())
            .select_from(OutboxMessage)
            .where(OutboxMessage.published_at.is_(None))
        )
    await engine.dispose()
    assert results[0] == "applied" and set(results) <= {"applied", "duplicate"}
    assert pending == 0


async def _stream_exists(admin: AdminClient) -> bool:
    try:
        await admin.js.stream_info(admin.fleet.names.command_stream)
        return True
    except Exception:
        return False


async def _has_version(admin: AdminClient, key: str, version: int) -> bool:
    return (await kv_versions(admin)).get(key) == version


async def test_nats_outage_during_writes_loses_nothing_and_keeps_order(
    fleet: FleetFixture, tmp_path: Path
) -> None:
    """NATS stops for 10 s in the middle of a stream of writes; all land, in order."""
    server = NatsServerProcess(tmp_path / "nats", name="outage")
    server.start()
    server.wait_ready(20)
    url = f"sqlite:///{tmp_path / 'outage.db'}"
    await asyncio.to_thread(db.migrate, url)
    service = Backend(BackendSettings(nats_urls=[server.url], db_url=url, fleet_dir=fleet.dir))
    await service.start()
    nc = await connect(server.url, role="test", name="outage-writer", reconnect_time_wait=0.2)
    admin = AdminClient(fleet, nc)
    await admin.start()
    writes = 40
    commands = [admin.put("load", "key", b"v1")] + [
        admin.rotate("load", "key", f"v{v}".encode(), version=v) for v in range(2, writes + 1)
    ]
    published = 0

    async def writer() -> None:
        nonlocal published
        for command in commands:
            while True:  # an admin tool retries until JetStream acknowledges
                try:
                    await admin.publish(command)
                    break
                except Exception:
                    await asyncio.sleep(0.2)
            published += 1
            await asyncio.sleep(0.05)

    task = asyncio.create_task(writer())
    try:
        await until(lambda: _at_least(published, 10), 30, "the first writes")
        server.stop()
        await asyncio.sleep(10)
        server.start()
        server.wait_ready(30)
        await asyncio.wait_for(task, 120)
        await until(lambda: _has_version(admin, "load.key", writes), 60, "the last version")
        kv = await admin.js.key_value(fleet.names.secrets_bucket)
        history = [ENVELOPE_CODEC.decode(h.value).version for h in await kv.history("load.key")]
        assert history == sorted(history)  # never backwards
        for command in commands:
            event = await admin.outcome(command.command_id, timeout=30)
            assert not event.type.endswith("rejected"), event.data
        versions = [e.data.version for e in admin.events if hasattr(e.data, "version")]
        assert versions == list(range(1, writes + 1))  # every write, once, in order
    finally:
        task.cancel()
        await admin.close()
        await nc.close()
        await service.stop()
        server.stop()


async def _at_least(value: int, n: int) -> bool:
    return value >= n


async def test_two_replicas_on_postgresql_apply_each_command_once(
    nats_url: str, pg_url: str, fleet: FleetFixture, admin: AdminClient
) -> None:
    replicas = [
        Backend(
            BackendSettings(
                nats_urls=[nats_url], db_url=pg_url, fleet_dir=fleet.dir, instance=f"replica-{i}"
            )
        )
        for i in range(2)
    ]
    for replica in replicas:
        await replica.start()
    try:
        commands = [admin.put(f"repo{i % 5}", f"s{i}", b"x") for i in range(120)]
        await asyncio.gather(*(admin.publish(c) for c in commands))
        for command in commands:
            event = await admin.outcome(command.command_id, timeout=60)
            assert event.type == "io.flashgate.secret.created"
        assert all(r.applied > 0 for r in replicas), [r.applied for r in replicas]
        assert sum(r.applied for r in replicas) == len(commands)
        engine = db.create_engine(pg_url)
        async with db.sessionmaker(engine)() as session:
            applied = await session.scalar(
                select(func.count()).select_from(AuditEvent).where(AuditEvent.result == "applied")
            )
            processed = await session.scalar(select(func.count()).select_from(ProcessedCommand))
            pending_rows = await session.scalar(
                select(func.count())
                .select_from(OutboxMessage)
                .where(OutboxMessage.published_at.is_(None))
            )
        await engine.dispose()
        assert applied == processed == len(commands)
        await asyncio.sleep(1.0)
        created = [e for e in admin.events if e.type.endswith("secret.created")]
        assert len(created) == len({e.data.command_id for e in created}) == len(commands)

        # The relay publishes the bucket's puts after the outcomes; on a loaded machine that
        # can take longer than the second above, so wait for them rather than sample once.
        async def every_key_published() -> bool:
            return len(await kv_versions(admin)) == len(commands)

        await until(every_key_published, 60, "every secret in the bucket")
        assert pending_rows is not None
    finally:
        for replica in replicas:
            await replica.stop()


async def test_reconcile_repairs_the_bucket_on_start(
    nats_url: str, fleet: FleetFixture, admin: AdminClient, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'rec.db'}"
    await asyncio.to_thread(db.migrate, url)
    settings = BackendSettings(nats_urls=[nats_url], db_url=url, fleet_dir=fleet.dir)
    service = Backend(settings)
    await service.start()
    await admin.send(admin.put("r", "kept", b"1"))
    await admin.send(admin.put("r", "gone", b"2"))
    await admin.send(admin.delete("r", "gone"))
    await until(lambda: _versions_are(admin, {"r.kept": 1}), 10, "the first state")
    await service.stop()
    kv = await admin.js.key_value(fleet.names.secrets_bucket)
    await kv.delete("r.kept")  # lost
    await kv.put("r.gone", b"garbage")  # resurrected, and not even an envelope
    await kv.put("r.stranger", b"garbage")  # unknown to the database
    service = Backend(settings)
    await service.start()
    try:
        await until(lambda: _versions_are(admin, {"r.kept": 1}), 10, "reconciliation")
    finally:
        await service.stop()


async def test_reconcile_leaves_a_key_to_the_outbox_rows_not_yet_relayed(
    nats_url: str, fleet: FleetFixture, admin: AdminClient, tmp_path: Path
) -> None:
    """A command committed between the start-up drain and the reconciliation: its outbox
    row is not relayed yet, so the bucket lacks the envelope. Reconciling must leave it to
    that row (the ordered path), not publish it a second time (CI saw the PostgreSQL
    backend put the same version twice into the bucket's history)."""
    from sqlalchemy import update

    from flashgate.backend.models import OutboxMessage
    from flashgate.backend.outbox import kv_subject
    from flashgate.backend.reconcile import reconcile

    url = f"sqlite:///{tmp_path / 'rec.db'}"
    await asyncio.to_thread(db.migrate, url)
    settings = BackendSettings(nats_urls=[nats_url], db_url=url, fleet_dir=fleet.dir)
    service = Backend(settings)
    await service.start()
    await admin.send(admin.put("r", "late", b"1"))
    await until(lambda: _versions_are(admin, {"r.late": 1}), 10, "relayed")
    fleet_id = service.processor.state.fleet_id  # type: ignore[union-attr]
    await service.stop()
    names = fleet.names
    kv = await admin.js.key_value(names.secrets_bucket)
    await kv.purge("r.late")  # as if never relayed...
    engine = db.create_engine(url)
    sessions = db.sessionmaker(engine)
    try:
        async with sessions() as session, session.begin():  # ...and still pending
            await session.execute(
                update(OutboxMessage)
                .where(OutboxMessage.subject == kv_subject(names.secrets_bucket, "r.late"))
                .values(published_at=None)
            )
        report = await reconcile(sessions, admin.js, kv, names, fleet_id)
    finally:
        await engine.dispose()
    assert (report.republished, report.deleted) == (0, 0)


async def _versions_are(admin: AdminClient, expected: dict[str, int]) -> bool:
    kv = await admin.js.key_value(admin.fleet.names.secrets_bucket)
    found = {}
    try:
        keys = await kv.keys()
    except Exception:
        keys = []
    for key in keys:
        try:
            value = (await kv.get(key)).value
        except KeyNotFoundError:
            continue
        try:
            found[key] = ENVELOPE_CODEC.decode(value).version
        except Exception:
            found[key] = -1
    return found == expected


async def test_canary_never_reaches_database_store_or_logs(
    fleet: FleetFixture, tmp_path: Path
) -> None:
    server = NatsServerProcess(tmp_path / "nats", name="canary")
    server.start()
    server.wait_ready(20)
    url = f"sqlite:///{tmp_path / 'canary.db'}"
    await asyncio.to_thread(db.migrate, url)
    log = tmp_path / "backend.log"
    process = backend_process(server.url, url, fleet, log)
    nc = await connect(server.url, role="test", name="canary")
    admin = AdminClient(fleet, nc)
    await admin.start()
    try:
        await until(lambda: _stream_exists(admin), 20, "the backend")
        await admin.send(admin.put("c", "one", CANARY), timeout=30)
        await admin.send(admin.rotate("c", "one", CANARY + b"-2", version=2))
        # The repository's id is known now: these two take the fast write.
        rotated = await admin.send(admin.rotate("c", "one", CANARY + b"-3", version=3))
        assert rotated.type == "io.flashgate.secret.rotated"
        created = await admin.send(admin.put("c", "three", CANARY + b"-4"))
        assert created.type == "io.flashgate.secret.created"
        await admin.send(admin.delete("c", "one"))
        bad = admin.put("c", "two", CANARY, version=5)
        assert (await admin.send(bad)).data.reason == "stale_version"
    finally:
        await admin.close()
        await nc.close()
        process.terminate()
        try:
            code = await asyncio.to_thread(process.wait, 30)
        finally:
            if process.poll() is None:
                process.kill()
            server.stop()
    assert code == 0
    touched = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any("jetstream" in str(p) for p in touched)
    assert log.stat().st_size > 0
    for path in touched:
        assert CANARY not in path.read_bytes(), path


async def _drain_events(admin: AdminClient) -> None:
    """Read every event published so far into ``admin.events`` (no waiting for more)."""
    while True:
        try:
            msg = await admin._sub.next_msg(timeout=0.05)
        except Exception:
            return
        admin.events.append(decode_event(msg.data))


async def test_sigkilled_backend_keeps_the_order_of_pipelined_writes(
    nats_url: str, fleet: FleetFixture, admin: AdminClient, tmp_path: Path
) -> None:
    """Pipelined writes v1..v5 of many secrets; the backend is SIGKILLed twice while it
    holds fetched, unacknowledged commands, and restarted at once (well within ack_wait).
    Every write is applied, once, in publication order; none is rejected."""
    url = f"sqlite:///{tmp_path / 'kill.db'}"
    await asyncio.to_thread(db.migrate, url)
    log = tmp_path / "backend.log"
    secrets_count, last = 60, 5
    commands = [
        admin.put("drill", f"s{i}", b"v1")
        if v == 1
        else admin.rotate("drill", f"s{i}", f"v{v}".encode(), version=v)
        for v in range(1, last + 1)
        for i in range(secrets_count)
    ]
    wanted = {c.command_id for c in commands}

    def outcomes() -> list[DomainEvent]:
        return [e for e in admin.events if getattr(e.data, "command_id", None) in wanted]

    async def progressed(n: int) -> bool:  # fails at once on a rejection
        await _drain_events(admin)
        rejected = [e for e in outcomes() if e.type.endswith("rejected")]
        assert not rejected, (rejected[0].data, log.read_text()[-3000:])
        return len({e.data.command_id for e in outcomes()}) >= n

    for command in commands:  # pipelined, before the backend starts: a backlog
        await admin.publish(command)
    # The first run stops itself in the middle of its first batch (at its 20th commit);
    # the second applies what the first left unacknowledged (43 commands), then stops in
    # the middle of the first batch it fetches. Each is SIGKILLed there, and restarted at
    # once; the third run is left to finish.
    process = backend_process(nats_url, url, fleet, log, "backend.after_commit=stop@20")
    try:
        for failpoint in ("backend.after_commit=stop@80", ""):
            await until(lambda p=process: _stopped(p), 30, "the backend to stop mid-batch")
            process.kill()
            await asyncio.to_thread(process.wait, 10)
            process = backend_process(nats_url, url, fleet, log, failpoint)
        await until(lambda: progressed(len(commands)), 30, "every outcome")
    finally:
        process.kill()
        await asyncio.to_thread(process.wait, 10)
    written: dict[str, list[int]] = {}
    for event in outcomes():
        if event.type.endswith(("secret.created", "secret.rotated")):
            written.setdefault(f"{event.data.repo}.{event.data.name}", []).append(
                event.data.version
            )
    # Every secret went v1, v2, ... v5: in order, each version once (a repeated outcome
    # event would show as a repeated version).
    assert written == {f"drill.s{i}": list(range(1, last + 1)) for i in range(secrets_count)}
    assert await kv_versions(admin) == {f"drill.s{i}": last for i in range(secrets_count)}
    engine = db.create_engine(url)
    async with db.sessionmaker(engine)() as session:
        results = (
            await session.execute(
                select(AuditEvent.result, func.count()).group_by(AuditEvent.result)
            )
        ).all()
    await engine.dispose()
    counts = dict(results)
    assert counts.get("applied") == len(commands) and "rejected" not in counts, counts


async def _stopped(process: subprocess.Popen[bytes]) -> bool:
    """The process is stopped (SIGSTOP), as its failpoint does."""
    stat = Path(f"/proc/{process.pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] == "T"


async def test_replicas_apply_pipelined_writes_of_one_secret_in_order(
    nats_url: str, pg_url: str, fleet: FleetFixture, admin: AdminClient
) -> None:
    """Two replicas fetch interleaved batches of pipelined writes v1..v5 of a few secrets:
    a replica never applies a later version while the other holds an earlier one."""
    secrets_count, last = 30, 5
    commands = [
        admin.put("pipe", f"s{i}", b"v1")
        if v == 1
        else admin.rotate("pipe", f"s{i}", f"v{v}".encode(), version=v)
        for i in range(secrets_count)
        for v in range(1, last + 1)
    ]
    replicas = [
        Backend(
            BackendSettings(
                nats_urls=[nats_url],
                db_url=pg_url,
                fleet_dir=fleet.dir,
                instance=f"replica-{i}",
                batch=8,  # a secret's versions straddle batches
            )
        )
        for i in range(2)
    ]
    for replica in replicas:
        await replica.start()
    try:
        await asyncio.gather(*(admin.publish(c) for c in commands))  # pipelined
        for command in commands:
            event = await admin.outcome(command.command_id, timeout=30)
            assert not event.type.endswith("rejected"), event.data
    finally:
        for replica in replicas:
            await replica.stop()
    assert await kv_versions(admin) == {f"pipe.s{i}": last for i in range(secrets_count)}
    engine = db.create_engine(pg_url)
    async with db.sessionmaker(engine)() as session:
        applied = await session.scalar(
            select(func.count()).select_from(AuditEvent).where(AuditEvent.result == "applied")
        )
    await engine.dispose()
    assert applied == len(commands)


async def test_an_idle_fetch_is_not_a_failure(
    nats_url: str, fleet: FleetFixture, js: JetStreamContext, tmp_path: Path
) -> None:
    """Fetching from an empty command stream times out, sometimes with nats-py's
    TimeoutError, sometimes (time out between its two pull requests) with the builtin
    one: neither is logged as a failure, and the fetch does not back off."""
    await declare_fleet(js, fleet.names)
    sub = await js.pull_subscribe(
        fleet.names.command_subjects, durable="idle", stream=fleet.names.command_stream
    )
    service = Backend(
        BackendSettings(nats_urls=[nats_url], db_url="sqlite://", fleet_dir=fleet.dir)
    )
    try:
        with capture_logs() as logs:
            for timeout in (0.0001, 0.001, 0.005) * 20:  # short: both kinds occur
                assert await service._fetch(sub, timeout=timeout) == []
    finally:
        await sub.unsubscribe()
    assert [e for e in logs if e["event"] == "fetching commands failed; retrying"] == []


async def test_a_command_that_fails_holds_the_later_commands_of_its_target(
    nats_url: str, fleet: FleetFixture, admin: AdminClient, tmp_path: Path
) -> None:
    """v2 of a secret fails once (as a database error would) and is nak'd: v3 behind it
    in the same batch waits for it instead of being rejected as a version gap."""
    url = f"sqlite:///{tmp_path / 'hold.db'}"
    await asyncio.to_thread(db.migrate, url)
    log = tmp_path / "backend.log"
    commands = [admin.put("hold", "k", b"v1")] + [
        admin.rotate("hold", "k", f"v{v}".encode(), version=v) for v in (2, 3, 4)
    ]
    for command in commands:  # one batch
        await admin.publish(command)
    process = backend_process(nats_url, url, fleet, log, "backend.before_apply=raise@2")
    try:
        for command in commands:
            event = await admin.outcome(command.command_id, timeout=30)
            assert not event.type.endswith("rejected"), event.data
    finally:
        process.kill()
        await asyncio.to_thread(process.wait, 10)
    assert "failpoint backend.before_apply" in log.read_text()  # it did fail once
    versions = [e.data.version for e in admin.events if e.type.endswith("secret.rotated")]
    assert versions == [2, 3, 4]
