"""Commands signed by the fleet admin (values encrypted to the fleet key), and a client
that publishes them on NATS and waits for their outcome events."""

from __future__ import annotations

import contextlib
import secrets
import time
from typing import Any

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from flashgate.broker.declare import declare_fleet
from flashgate.crypto.context import SecretContext
from flashgate.crypto.encrypt import encrypt_secret
from flashgate.events import commands as cmd
from flashgate.events.domain import DomainEvent, decode_event
from flashgate.events.signing import sign
from tests.support.fleets import FleetFixture
from tests.support.material import stated


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
