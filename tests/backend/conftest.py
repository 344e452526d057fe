"""Backend fixtures: a fleet directory per test, SQLite and PostgreSQL databases, an
in-process backend, and an admin client that signs commands and waits for outcomes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import nats.errors
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from flashgate.backend import db
from flashgate.backend.service import Backend, BackendSettings
from flashgate.broker.declare import declare_fleet
from flashgate.crypto.context import SecretContext
from flashgate.crypto.encrypt import encrypt_secret
from flashgate.crypto.publickey import FleetPublicKey
from flashgate.events import commands as cmd
from flashgate.events.domain import DomainEvent, decode_event
from flashgate.events.signing import sign
from flashgate.events.subjects import FleetNames
from flashgate.fleet.ceremony import Ceremony, run_ceremony
from flashgate.fleet.descriptor import fleet_public_key
from flashgate.fleet.directory import write_fleet_dir
from tests.helpers import FAST_KDF, TEST_BITS, TEST_PASSPHRASE, fixed_primes, stated

PG_ADMIN_URL = os.environ.get("FLASHGATE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def pg_available() -> bool:
    import asyncpg

    async def probe() -> bool:
        try:
            conn = await asyncpg.connect(PG_ADMIN_URL, timeout=3)
        except (OSError, asyncpg.PostgresError, TimeoutError):
            return False
        await conn.close()
        return True

    return asyncio.run(probe())


_PG = pg_available()
PG_SKIP_REASON = f"PostgreSQL not reachable at {PG_ADMIN_URL}: PostgreSQL tests SKIPPED"


def pytest_report_header(config: pytest.Config) -> str:
    return ("postgresql: available at " + PG_ADMIN_URL) if _PG else PG_SKIP_REASON


@dataclass
class FleetFixture:
    dir: Path
    ceremony: Ceremony

    @property
    def name(self) -> str:
        return self.ceremony.descriptor.fleet

    @property
    def names(self) -> FleetNames:
        return FleetNames(self.name)

    @property
    def admin(self) -> Ed25519PrivateKey:
        return self.ceremony.admin_key

    @property
    def key(self) -> FleetPublicKey:
        return fleet_public_key(self.ceremony.descriptor)


def make_fleet(base: Path, name: str | None = None) -> FleetFixture:
    fleet_name = name or f"t{uuid.uuid4().hex[:10]}"
    cer = run_ceremony(
        fleet=fleet_name,
        node_ids=["node-1", "node-2", "node-3"],
        threshold=2,
        bits=TEST_BITS,
        primes=fixed_primes(),
        allow_insecure=True,
    )
    out = base / fleet_name
    write_fleet_dir(out, cer, TEST_PASSPHRASE, params=FAST_KDF)
    return FleetFixture(dir=out, ceremony=cer)


@pytest.fixture
def fleet(tmp_path: Path) -> FleetFixture:
    return make_fleet(tmp_path / "fleets")


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    import asyncpg

    name = f"fg_test_{uuid.uuid4().hex[:12]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(PG_ADMIN_URL)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each test that takes it runs on SQLite and on PostgreSQL (skipped, and said so,
    when no PostgreSQL is reachable)."""
    if request.param == "sqlite":
        url = sqlite_url(tmp_path / "backend.db")
        db.migrate(url)
        yield url
        return
    if not _PG:
        pytest.skip(PG_SKIP_REASON)
    with postgres_database() as url:
        db.migrate(url)
        yield url


@pytest.fixture
def pg_url() -> Iterator[str]:
    if not _PG:
        pytest.skip(PG_SKIP_REASON)
    with postgres_database() as url:
        db.migrate(url)
        yield url


@pytest.fixture
async def backend(nats_url: str, db_url: str, fleet: FleetFixture) -> AsyncIterator[Backend]:
    service = Backend(BackendSettings(nats_urls=[nats_url], db_url=db_url, fleet_dir=fleet.dir))
    await service.start()
    yield service
    await service.stop()


def new_command_id() -> str:
    return "cmd-" + secrets.token_hex(10)


class Commands:
    """Builds commands signed by the fleet admin (values encrypted to the fleet key)."""

    def __init__(self, fleet: FleetFixture) -> None:
        self.fleet = fleet

    def base(self, command_id: str | None = None) -> dict[str, Any]:
        return {
            "command_id": command_id or new_command_id(),
            "fleet": self.fleet.name,
            "actor": "admin:test",
            "issued_at": int(time.time() * 1000),
        }

    def jwe(
        self, repo: str, name: str, value: bytes, *, kind: str = "generic", version: int = 1
    ) -> str:
        ctx = SecretContext(fleet=self.fleet.name, repo=repo, name=name, kind=kind, version=version)
        return encrypt_secret(self.fleet.key, ctx, value)

    def put(
        self,
        repo: str,
        name: str,
        value: bytes,
        *,
        version: int = 1,
        kind: str = "generic",
        command_id: str | None = None,
    ) -> cmd.PutSecret:
        return sign(
            stated(
                cmd.PutSecret,
                self.fleet.admin,
                **self.base(command_id),
                repo=repo,
                name=name,
                kind=kind,
                version=version,
                epoch=1,
                jwe=self.jwe(repo, name, value, kind=kind, version=version),
            ),
            self.fleet.admin,
        )

    def rotate(
        self, repo: str, name: str, value: bytes, *, version: int, kind: str = "generic"
    ) -> cmd.RotateSecret:
        return sign(
            stated(
                cmd.RotateSecret,
                self.fleet.admin,
                **self.base(),
                repo=repo,
                name=name,
                kind=kind,
                version=version,
                epoch=1,
                jwe=self.jwe(repo, name, value, kind=kind, version=version),
            ),
            self.fleet.admin,
        )

    def delete(self, repo: str, name: str) -> cmd.DeleteSecret:
        return sign(cmd.DeleteSecret(**self.base(), repo=repo, name=name), self.fleet.admin)


class AdminClient(Commands):
    """Signs commands as the fleet admin, publishes them, waits for their outcome events."""

    def __init__(self, fleet: FleetFixture, nc: Client) -> None:
        super().__init__(fleet)
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self._events: list[DomainEvent] = []
        self._sub: Any = None

    async def start(self) -> None:
        # Streams may not exist yet (the backend declares them too; it is idempotent).
        await declare_fleet(self.js, self.fleet.names)
        # An ordered consumer on the event stream: every event, including repeats.
        self._sub = await self.js.subscribe(
            self.fleet.names.event_subjects,
            ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
        )

    async def close(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    async def publish(
        self,
        command: cmd.Command | bytes,
        subject_type: str | None = None,
        msg_id: str | None = None,
    ) -> None:
        if isinstance(command, bytes):
            raw, ctype = command, subject_type or "secret.put"
        else:
            raw, ctype = cmd.COMMAND_CODEC.encode(command), command.command_type
            msg_id = msg_id or command.command_id
        headers = {"Nats-Msg-Id": msg_id} if msg_id else None
        await self.js.publish(self.fleet.names.command_subject(ctype), raw, headers=headers)

    async def wait_for(self, predicate: Any, timeout: float = 10.0) -> DomainEvent:
        """The first event (seen so far or arriving) for which ``predicate`` is true."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self._events:
                if predicate(event):
                    return event
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no matching event")
            try:
                msg = await self._sub.next_msg(timeout=min(remaining, 1.0))
            except nats.errors.TimeoutError:
                continue
            self._events.append(decode_event(msg.data))

    async def outcome(self, command_id: str, timeout: float = 10.0) -> DomainEvent:
        """The first event carrying ``command_id`` (an applied or a rejected outcome)."""
        return await self.wait_for(
            lambda e: getattr(e.data, "command_id", None) == command_id, timeout
        )

    async def send(self, command: cmd.Command, timeout: float = 10.0) -> DomainEvent:
        await self.publish(command)
        return await self.outcome(command.command_id, timeout)

    @property
    def events(self) -> list[DomainEvent]:
        return self._events

    async def query(self, what: str, **query: Any) -> Any:
        msg = await self.nc.request(
            self.fleet.names.query_subject(what), msgspec.json.encode(query), timeout=5
        )
        return msgspec.json.decode(msg.data)


@pytest.fixture
async def admin(fleet: FleetFixture, nc: Client) -> AsyncIterator[AdminClient]:
    client = AdminClient(fleet, nc)
    await client.start()
    yield client
    await client.close()
