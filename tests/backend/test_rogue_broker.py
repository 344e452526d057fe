"""Fault drills of issue 14 §3 against a real nats-server with the role logins and a rogue
client whose login the server does not restrict: what the shared bridge login could do
before each node had its own NATS identity, and what a compromised broker (or a login an
operator left too wide) still can. The server's permissions stop a node's login from doing
either (tests/broker/test_identities.py); these drills show the second line holds alone:

- it deletes the backend's durable command consumer: the backend recreates it, outcomes
  still arrive, and its health reports the gap while it cannot consume;
- it publishes a forged outcome into the event stream: the admin's session does not
  believe it (outcomes are signed by the backend, and read only from their own subject).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats.js.errors
import pytest
from nats.aio.client import Client

from flashgate.backend import db, health
from flashgate.backend.service import DURABLE, Backend, BackendSettings
from flashgate.broker.connection import connect
from flashgate.broker.declare import declare_fleet
from flashgate.broker.permissions import ROLES, RoleCredentials, authorization_config
from flashgate.cli.session import AdminSession
from flashgate.devcluster.nats_server import NatsServerProcess
from flashgate.errors import NoOutcome
from flashgate.events import commands as cmd
from flashgate.events import domain as ev
from flashgate.events.signing import sign
from tests.support.admin_client import AdminClient, Commands
from tests.support.databases import sqlite_url
from tests.support.fleets import FleetFixture, make_fleet
from tests.support.material import TEST_PASSPHRASE

pytestmark = pytest.mark.nats

ROGUE_PASSWORD = secrets.token_hex(12)


@pytest.fixture
def home(tmp_path: Path) -> FleetFixture:
    """An admin home: HOME/fleet is the fleet directory (the backend is given it too)."""
    return make_fleet(tmp_path / "home", "fleet")


@pytest.fixture
def logins() -> dict[str, RoleCredentials]:
    return {r: RoleCredentials(r, secrets.token_hex(12)) for r in ROLES}


@pytest.fixture
def server(
    tmp_path: Path, home: FleetFixture, logins: dict[str, RoleCredentials]
) -> Iterator[NatsServerProcess]:
    users = authorization_config(home.names, logins)
    rogue = json.dumps({"user": "rogue", "password": ROGUE_PASSWORD})  # no permissions: all
    users = users.replace("users: [", f"users: [\n    {rogue},", 1)
    process = NatsServerProcess(tmp_path / "nats", extra_config=users)
    with process:
        yield process


async def login(server: NatsServerProcess, logins: dict[str, RoleCredentials], role: str) -> Client:
    return await connect(
        server.url, role=role, name=f"test-{role}", user=role, password=logins[role].password
    )


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    url = sqlite_url(tmp_path / "backend.db")
    db.migrate(url)
    return url


@pytest.fixture
async def backend(
    server: NatsServerProcess, home: FleetFixture, logins: dict[str, RoleCredentials], db_url: str
) -> AsyncIterator[Backend]:
    service = Backend(
        BackendSettings(
            nats_urls=[server.url],
            db_url=db_url,
            fleet_dir=home.dir,
            nats_user="backend",
            nats_password=logins["backend"].password,
        )
    )
    await service.start()
    yield service
    await service.stop()


@pytest.fixture
async def rogue(
    server: NatsServerProcess, logins: dict[str, RoleCredentials]
) -> AsyncIterator[Client]:
    nc = await connect(
        server.url, role="rogue", name="test-rogue", user="rogue", password=ROGUE_PASSWORD
    )
    yield nc
    await nc.close()


@pytest.fixture
async def admin(
    server: NatsServerProcess, home: FleetFixture, logins: dict[str, RoleCredentials]
) -> AsyncIterator[AdminClient]:
    nc = await login(server, logins, "admin")
    client = AdminClient(home, nc)
    await client.start()
    yield client
    await client.close()
    await nc.close()


async def wait_until(predicate, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    """Poll ``predicate`` (async) until true; fail after ``timeout`` (no timing assert)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await predicate():
        if loop.time() > deadline:
            pytest.fail("condition not reached")
        await asyncio.sleep(0.1)


async def test_a_deleted_command_consumer_is_recreated_and_reported(
    backend: Backend, admin: AdminClient, rogue: Client
) -> None:
    names = admin.fleet.names
    first = await admin.send(admin.put("payments", "s1", b"v1"), timeout=30)
    assert first.short_type == "secret.created"

    # The rogue keeps deleting the consumer: the backend cannot consume, and says so.
    async def delete_forever() -> None:
        while True:
            with contextlib.suppress(Exception):
                await rogue.jetstream().delete_consumer(names.command_stream, DURABLE)
            await asyncio.sleep(0.05)

    deleting = asyncio.create_task(delete_forever())
    try:

        async def reported() -> bool:
            return any("command" in p for p in await health.check(backend))

        await wait_until(reported)
    finally:
        deleting.cancel()

    # The rogue stops: the backend recreates its consumer and outcomes arrive again.
    second = await admin.send(admin.put("payments", "s2", b"v2"), timeout=60)
    assert second.short_type == "secret.created"

    async def healthy() -> bool:
        return not await health.check(backend)

    await wait_until(healthy)


async def test_a_forged_outcome_is_not_accepted_by_the_admin_session(
    server: NatsServerProcess,
    home: FleetFixture,
    logins: dict[str, RoleCredentials],
    rogue: Client,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No backend runs: the only "outcome" is the rogue's, published on the one event
    subject a bridge login may use. Today the session reports it as the command's outcome."""
    root = write_home_config(home, server, logins)
    monkeypatch.setenv("FLASHGATE_PASSPHRASE", TEST_PASSPHRASE)
    names = home.names
    declarer = await login(server, logins, "admin")
    await declare_fleet(declarer.jetstream(), names)
    await declarer.close()
    async with AdminSession(root) as session:
        command = Commands(home).put("payments", "s1", b"v1")
        command = sign(
            cmd.PutSecret(**{**cmd_fields(command), **session.base()}), session.admin_key
        )

        async def forge() -> None:
            event = ev.make_event(
                ev.CommandRejected(
                    command_id=command.command_id, command_type="secret.put", reason="forged"
                ),
                event_id=f"forged-{secrets.token_hex(4)}",
                source=f"flashgate/{names.fleet}/backend",
            )
            while True:
                await rogue.jetstream().publish(
                    names.event_subject("node.misbehaved"), ev.encode_event(event)
                )
                await asyncio.sleep(0.2)

        forging = asyncio.create_task(forge())
        try:
            with pytest.raises(NoOutcome):
                await session.send(command, timeout=4, show=False)
        finally:
            forging.cancel()


def cmd_fields(command: cmd.PutSecret) -> dict[str, object]:
    fields = {f: getattr(command, f) for f in command.__struct_fields__}
    fields.pop("signature")
    return fields


async def test_a_real_outcome_is_accepted_by_the_admin_session(
    server: NatsServerProcess,
    backend: Backend,
    home: FleetFixture,
    logins: dict[str, RoleCredentials],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = write_home_config(home, server, logins)
    monkeypatch.setenv("FLASHGATE_PASSPHRASE", TEST_PASSPHRASE)
    async with AdminSession(root) as session:
        command = Commands(home).put("payments", "s1", b"v1")
        command = sign(
            cmd.PutSecret(**{**cmd_fields(command), **session.base()}), session.admin_key
        )
        event = await session.send(command, timeout=30, show=False)
    assert event.short_type == "secret.created"


async def test_the_admin_session_sees_a_missing_command_consumer(
    server: NatsServerProcess,
    home: FleetFixture,
    logins: dict[str, RoleCredentials],
    rogue: Client,
) -> None:
    """``fleet status --wait`` is not ready while this says False. No backend runs (one
    would recreate the consumer): the test plays its part."""
    names = home.names
    backend_nc = await login(server, logins, "backend")
    js = backend_nc.jetstream()
    await declare_fleet(js, names)
    await js.pull_subscribe(names.command_subjects, durable=DURABLE, stream=names.command_stream)
    root = write_home_config(home, server, logins)
    async with AdminSession(root, signing=False) as session:
        assert await session.backend_consuming()
        await rogue.jetstream().delete_consumer(names.command_stream, DURABLE)
        assert not await session.backend_consuming()
    await backend_nc.close()


def write_home_config(
    home: FleetFixture, server: NatsServerProcess, logins: dict[str, RoleCredentials]
) -> Path:
    root = home.dir.parent
    config = {
        "nats": [server.url],
        "logins": {"admin": {"user": "admin", "password": logins["admin"].password}},
    }
    (root / "config.json").write_text(json.dumps(config))
    (root / "config.json").chmod(0o600)
    return root


async def test_a_request_whose_reply_is_not_an_inbox_gets_no_answer(
    backend: Backend, home: FleetFixture, rogue: Client
) -> None:
    """The backend answers queries through ``allow_responses``: a requester naming a bucket
    key as its reply subject would have the backend's answer written there."""
    names = home.names
    kv = await rogue.jetstream().key_value(names.secrets_bucket)
    target = f"$KV.{names.secrets_bucket}.planted.key"
    query = b'{"kind":"repositories"}'
    await rogue.publish(names.query_subject("repositories"), query, reply=target)
    await rogue.flush()
    answered = await rogue.request(names.query_subject("repositories"), query, timeout=5)
    assert answered.data  # an inbox reply is answered
    await asyncio.sleep(0.5)
    with pytest.raises(nats.js.errors.KeyNotFoundError):
        await kv.get("planted.key")
