"""The one-step write of the common secret commands (flashgate.backend.store) against the
general path, on SQLite and PostgreSQL: the same rows, the same refusals, and (PostgreSQL)
each command applied once across replicas.

These tests drive :class:`CommandProcessor` directly (no broker): what they check is the
database."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from flashgate.backend import db
from flashgate.backend.processor import CommandProcessor, Outcome
from flashgate.backend.service import Backend, BackendSettings
from flashgate.backend.store import SecretWrite, SqliteStore, Store, open_store
from flashgate.events import commands as cmd
from flashgate.events.domain import decode_event
from flashgate.events.envelope import ENVELOPE_CODEC
from tests.support.admin_client import Commands
from tests.support.databases import PG_AVAILABLE as _PG
from tests.support.databases import PG_SKIP_REASON, postgres_database, sqlite_url
from tests.support.fleets import FleetFixture


def spy_on(store: Store, seen: list[bool]) -> None:
    """Record what each one-step write of ``store`` returned (True: applied; False: wrote
    nothing)."""
    write_secret = store.write_secret

    async def recorded(write: SecretWrite, *, rotate: bool) -> bool:
        applied = await write_secret(write, rotate=rotate)
        seen.append(applied)
        return applied

    store.write_secret = recorded  # type: ignore[method-assign]


@dataclass
class Replica:
    """One backend's command processor on a database."""

    engine: AsyncEngine
    processor: CommandProcessor

    async def apply(self, command: cmd.AnyCommand) -> Outcome:
        return await self.processor.process(cmd.COMMAND_CODEC.encode(command))

    async def rows(self, sql: str) -> list[dict[str, Any]]:
        async with self.engine.connect() as connection:
            return [dict(r._mapping) for r in await connection.execute(text(sql))]


@contextlib.asynccontextmanager
async def replica(
    url: str, fleet: FleetFixture, *, fast: bool, seen: list[bool] | None = None
) -> AsyncIterator[Replica]:
    service = Backend(BackendSettings(nats_urls=[], db_url=url, fleet_dir=fleet.dir))
    service.store = store = open_store(url, one_step=fast)
    state = await service._load_state(fleet.names)
    if fast:
        spy_on(store, seen if seen is not None else [])
    processor = CommandProcessor(store, state, source="test")
    try:
        yield Replica(store.engine, processor)
    finally:
        await store.close()


@dataclass
class Databases:
    """Two fresh, migrated databases of one kind."""

    kind: str
    urls: list[str] = field(default_factory=list)


@pytest.fixture(params=["sqlite", "postgresql"])
def databases(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Databases]:
    found = Databases(request.param)
    if request.param == "sqlite":
        for name in ("one.db", "two.db"):
            found.urls.append(sqlite_url(tmp_path / name))
            db.migrate(found.urls[-1])
        yield found
        return
    if not _PG:
        pytest.skip(PG_SKIP_REASON)
    with postgres_database() as one, postgres_database() as two:
        for url in (one, two):
            db.migrate(url)
        found.urls += [one, two]
        yield found


@pytest.fixture
def statements() -> list[bool]:
    """What each fast write returned, in order."""
    return []


@pytest.fixture
def commands(fleet: FleetFixture) -> Commands:
    return Commands(fleet)


_TIMES = {"created_at", "updated_at", "processed_at", "at"}


def _time_shape(value: Any) -> Any:
    """A stored time without its value: its type, and its format where it is text (SQLite
    stores times as text in SQLAlchemy's format)."""
    if isinstance(value, str):
        return re.sub(r"\d", "9", value)
    if isinstance(value, datetime):
        return f"datetime, tz={value.utcoffset()}"
    return value


def _normalized_payload(operation: str, subject: str, payload: bytes) -> Any:
    """An outbox payload without the times it was made at."""
    if operation == "event":
        event = msgspec.to_builtins(decode_event(payload))
        event.pop("time")
        return event
    if operation == "put" and "-secrets." in subject:  # fleet documents are kept as they are
        envelope = msgspec.to_builtins(ENVELOPE_CODEC.decode(payload))
        envelope.pop("written_at")
        return envelope
    return payload


async def _dump(r: Replica) -> dict[str, list[dict[str, Any]]]:
    tables = {
        "secrets": "SELECT * FROM secrets ORDER BY id",
        "secret_versions": "SELECT * FROM secret_versions ORDER BY id",
        "processed_commands": "SELECT * FROM processed_commands ORDER BY command_id",
        "audit_events": "SELECT * FROM audit_events ORDER BY id",
        "outbox": "SELECT * FROM outbox ORDER BY id",
    }
    dump: dict[str, list[dict[str, Any]]] = {}
    for table, sql in tables.items():
        rows = await r.rows(sql)
        for row in rows:
            for column in _TIMES & row.keys():
                row[column] = _time_shape(row[column])
            if table == "outbox":
                row["payload"] = _normalized_payload(
                    row["operation"], row["subject"], bytes(row["payload"])
                )
        dump[table] = rows
    return dump


async def test_fast_write_stores_the_rows_the_general_path_stores(
    fleet: FleetFixture, commands: Commands, statements: list[bool], databases: Databases
) -> None:
    script: list[cmd.AnyCommand] = [
        commands.put("app", "first", b"v"),  # a new repository: general path on both
        commands.put("app", "db", b"v", kind="storage"),
        commands.rotate("app", "db", b"v", version=2, kind="storage"),
        commands.rotate("app", "db", b"v", version=3, kind="storage"),
        commands.put("app", "other", b"v"),
        commands.delete("app", "other"),
        commands.put("app", "other", b"v", version=2),  # re-created: general path on both
        commands.rotate("app", "other", b"v", version=3),
    ]
    general_url, fast_url = databases.urls
    async with replica(general_url, fleet, fast=False) as general:
        for command in script:
            assert (await general.apply(command)).result == "applied"
        expected = await _dump(general)
    assert statements == []
    async with replica(fast_url, fleet, fast=True, seen=statements) as fast:
        for command in script:
            assert (await fast.apply(command)).result == "applied"
        got = await _dump(fast)
    # The fast write needs the repository's id from a committed row: the first write
    # creates the repository and the second reads (and caches) its id, both on the
    # general path; so does the re-created secret's put at version 2.
    assert statements == [True, True, True, True]
    for table in expected:
        assert got[table] == expected[table], table
    # The envelope is published before the event that announces it.
    operations = [(r["operation"], r["msg_id"].split(":")[0]) for r in got["outbox"]]
    assert operations[:2] == [("put", "kv"), ("event", "evt")]


async def test_uncommon_cases_fall_back_and_are_refused_as_before(
    fleet: FleetFixture, commands: Commands, statements: list[bool], databases: Databases
) -> None:
    async with replica(databases.urls[0], fleet, fast=True, seen=statements) as r:
        assert (await r.apply(commands.put("app", "seed", b"v"))).result == "applied"
        put = commands.put("app", "s", b"v")
        assert (await r.apply(put)).result == "applied"
        assert (await r.apply(commands.put("app", "d", b"v"))).result == "applied"
        assert (await r.apply(commands.delete("app", "d"))).result == "applied"
        del statements[:]
        cases: list[tuple[cmd.AnyCommand, str, str | None]] = [
            (put, "duplicate", None),
            (commands.put("app", "s", b"v"), "rejected", "already_exists"),
            (commands.rotate("app", "s", b"v", version=3), "rejected", "stale_version"),
            (commands.rotate("app", "s", b"v", version=2, kind="storage"), "rejected", None),
            (commands.rotate("app", "d", b"v", version=2), "rejected", "not_found"),
            # version 1 of the deleted app/d had another JWE (issue 14 §4)
            (commands.put("app", "d", b"v"), "rejected", "version_conflict"),
        ]
        for command, result, reason in cases:
            outcome = await r.apply(command)
            assert outcome.result == result, command
            if reason is not None:
                assert outcome.reason == reason
        # Each ran the fast write, which wrote nothing; the general path refused.
        assert statements == [False] * len(cases)
        rows = await r.rows("SELECT count(*) AS n FROM secret_versions")
        assert rows == [{"n": 3}]
        claims = await r.rows("SELECT result, count(*) AS n FROM processed_commands GROUP BY 1")
        assert {c["result"]: c["n"] for c in claims} == {"applied": 4, "rejected": 5}


async def test_epochs_changed_elsewhere_are_read_before_writing(
    fleet: FleetFixture, commands: Commands, statements: list[bool], databases: Databases
) -> None:
    async with replica(databases.urls[0], fleet, fast=True, seen=statements) as r:
        for seed in ("seed-1", "seed-2"):  # the repository, then its id cached
            assert (await r.apply(commands.put("app", seed, b"v"))).result == "applied"
        async with r.engine.begin() as connection:  # as if a replica started a rotation
            await connection.execute(text("UPDATE fleets SET rotating_to = 2"))
        assert r.processor.state.rotating_to is None
        assert (await r.apply(commands.put("app", "s", b"v"))).result == "applied"
        assert statements == [False]  # the fast write saw other epochs and wrote nothing
        assert r.processor.state.rotating_to == 2  # the general path re-read them
        assert (await r.apply(commands.rotate("app", "s", b"v", version=2))).result == "applied"
        assert statements == [False, True]


@pytest.mark.parametrize("second", ["fast", "general"])
async def test_two_replicas_apply_each_command_once(
    fleet: FleetFixture, commands: Commands, statements: list[bool], pg_url: str, second: str
) -> None:
    # fast + general: the two take their locks in other orders (claim first, or the
    # secret first), and PostgreSQL may break a deadlock between them; either way each
    # command is applied once and no error reaches the caller.
    async with (
        replica(pg_url, fleet, fast=True, seen=statements) as one,
        replica(pg_url, fleet, fast=second == "fast", seen=statements) as two,
    ):
        for i, r in enumerate((one, two, one, two)):  # the repository, its id cached by both
            assert (await r.apply(commands.put("app", f"seed-{i}", b"v"))).result == "applied"
        for i in range(20):
            # The same command on both replicas at once (a redelivery racing the first).
            put = commands.put("app", f"rotated-{i}", b"v")
            results = await asyncio.gather(one.apply(put), two.apply(put))
            assert sorted(o.result for o in results) == ["applied", "duplicate"]
            rotate = commands.rotate("app", f"rotated-{i}", b"v", version=2)
            results = await asyncio.gather(one.apply(rotate), two.apply(rotate))
            assert sorted(o.result for o in results) == ["applied", "duplicate"]
            # Two commands writing the same new secret: one is applied.
            a, b = commands.put("app", f"raced-{i}", b"v"), commands.put("app", f"raced-{i}", b"v")
            results = await asyncio.gather(one.apply(a), two.apply(b))
            assert sorted((o.result, o.reason) for o in results) == [
                ("applied", None),
                ("rejected", "already_exists"),
            ]
        versions = await one.rows(
            "SELECT s.name, count(*) AS n FROM secret_versions v "
            "JOIN secrets s ON s.id = v.secret_id GROUP BY s.name"
        )
        assert {v["name"]: v["n"] for v in versions} == (
            {f"seed-{i}": 1 for i in range(4)}
            | {f"rotated-{i}": 2 for i in range(20)}
            | {f"raced-{i}": 1 for i in range(20)}
        )
        outbox = await one.rows("SELECT count(*) AS n FROM outbox WHERE operation = 'put'")
        assert outbox == [{"n": 4 + 20 * 3}]
    if second == "fast":
        # Every applied write of the race went in one statement; the losers' wrote nothing.
        assert statements.count(True) >= 60 and False in statements


class _FailingCommit:
    """A sqlite3 connection whose next COMMIT fails (as on a full disk)."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection
        self.fail_next_commit = True

    def execute(self, sql: str, *args: Any) -> Any:
        if sql == "COMMIT" and self.fail_next_commit:
            self.fail_next_commit = False
            raise sqlite3.OperationalError("database or disk is full")
        return self._connection.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)


@pytest.fixture
def sqlite_db(tmp_path: Path) -> str:
    url = sqlite_url(tmp_path / "backend.db")
    db.migrate(url)
    return url


async def test_sqlite_failed_commit_leaves_no_transaction_open(
    fleet: FleetFixture, commands: Commands, statements: list[bool], sqlite_db: str
) -> None:
    async with replica(sqlite_db, fleet, fast=True, seen=statements) as r:
        for seed in ("seed-1", "seed-2"):  # the repository, then its id cached
            assert (await r.apply(commands.put("app", seed, b"v"))).result == "applied"
        writer = r.processor.store
        assert isinstance(writer, SqliteStore)
        loop = asyncio.get_running_loop()
        connection = await loop.run_in_executor(writer._thread, writer._connect)
        failing = _FailingCommit(connection)
        writer._connection = failing  # type: ignore[assignment]
        lost = commands.put("app", "lost", b"v")
        with pytest.raises(sqlite3.OperationalError, match="disk is full"):
            await r.apply(lost)  # the consumer naks it; a redelivery applies it
        assert not connection.in_transaction
        assert (await r.apply(commands.put("app", "next", b"v"))).result == "applied"
        assert (await r.apply(lost)).result == "applied"
        names = await r.rows("SELECT name FROM secrets ORDER BY id")
        assert [n["name"] for n in names] == ["seed-1", "seed-2", "next", "lost"]


async def test_postgres_broken_pooled_connections_are_replaced(
    fleet: FleetFixture,
    commands: Commands,
    statements: list[bool],
    pg_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def terminate_connections(_r: Replica) -> None:
        # As a server restart would: every session of the pool ends.
        import asyncpg

        admin = await asyncpg.connect(pg_url)
        try:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        finally:
            await admin.close()

    async with replica(pg_url, fleet, fast=True, seen=statements) as r:
        for seed in ("seed-1", "seed-2"):
            assert (await r.apply(commands.put("app", seed, b"v"))).result == "applied"
        # A connection idle for a while is pinged at check-out, and replaced.
        monkeypatch.setattr(db, "PING_IDLE_AFTER", 0.0)
        await terminate_connections(r)
        assert (await r.apply(commands.put("app", "after-idle", b"v"))).result == "applied"
        # One used moments ago is not: the write fails (the command is delivered again),
        # the broken connection is dropped, and the next write gets a working one.
        monkeypatch.setattr(db, "PING_IDLE_AFTER", 3600.0)
        await terminate_connections(r)
        retried = commands.put("app", "retried", b"v")
        with pytest.raises(Exception) as failed:
            await r.apply(retried)
        assert not isinstance(failed.value, AssertionError)
        for _ in range(10):  # the pool may hold a few broken connections, each dropped once
            try:
                outcome = await r.apply(retried)
                break
            except Exception:  # noqa: S112 - the next one
                continue
        assert outcome.result == "applied"
    assert statements[-1] is True
