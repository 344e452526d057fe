"""The admin tooling's connection to a running system: sign, publish, wait for outcomes.

Commands are signed with the sealed admin key (unsealed with ``FLASHGATE_ADMIN_PASSPHRASE``,
else the old shared ``FLASHGATE_PASSPHRASE``, only when a command is signed, in a process
hardened just before), published on the command stream with the command id as
``Nats-Msg-Id``, and the outcome is read from the event stream: the first event carrying
the command id (created, rotated, ..., or ``command rejected`` with its reason).

On a NATS cluster a leader change costs the session about a second beyond the election
(:mod:`flashgate.broker.failover`): the event watch resumes on its own, and a publish
that finds no leader is sent again, under the same id, until the command's timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from pathlib import Path
from typing import Any, Self

import msgspec
import nats.errors
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from nats.aio.client import Client
from nats.js.errors import KeyNotFoundError

from flashgate import environment
from flashgate.broker.connection import broker_errors, connect
from flashgate.broker.failover import publish_until_stored, tail_stream
from flashgate.cli.hardening import harden_process
from flashgate.cli.home import (
    fleet_dir,
    home_file,
    load_config,
    load_home_descriptor,
    load_home_roster,
    read_admin_key,
)
from flashgate.cli.passphrase import admin_passphrase
from flashgate.cli.terminal import spinner
from flashgate.crypto import box
from flashgate.crypto.encoding import b64url_decode
from flashgate.crypto.publickey import FleetPublicKey
from flashgate.environment import NATS_PASSWORD_ENV, NATS_USER_ENV
from flashgate.errors import (
    BrokerUnavailable,
    CommandRejected,
    FlashgateError,
    NoOutcome,
    NoResponders,
    QueryFailed,
    SignatureInvalid,
    UnknownNode,
)
from flashgate.events import commands as cmd
from flashgate.events.domain import DomainEvent, decode_event
from flashgate.events.fleet import (
    ROSTER_CODEC,
    FleetDescriptor,
    Roster,
    RosterNode,
    encode_roster,
)
from flashgate.events.node_status import (
    APIKEY_CHECK_CODEC,
    APIKEY_CHECK_RESULT_CODEC,
    STATUS_REQUEST_CODEC,
    STATUS_RESPONSE_CODEC,
    ApiKeyCheck,
    ApiKeyCheckResult,
    StatusRequest,
    StatusResponse,
    apikey_check_aad,
)
from flashgate.events.queries import ANSWER_CODEC, Answer
from flashgate.events.signing import sign, verify
from flashgate.events.subjects import FleetNames
from flashgate.fleet.bundle import open_admin_key
from flashgate.fleet.descriptor import fleet_public_key
from flashgate.fleet.files import ADMIN_KEY_FILE, ROSTER_FILE, write_atomic
from flashgate.fleet.identity_keys import load_ed25519_public
from flashgate.runnable import command


def new_command_id() -> str:
    return "cli-" + secrets.token_hex(12)


class AdminSession:
    """The admin home's files are all read and checked here, before any connection: a
    missing or unusable one is a :class:`HomeFileError` naming it and what to do.
    ``signing=False`` (listing commands) does not need ``admin.key``."""

    def __init__(self, home: Path, *, actor: str | None = None, signing: bool = True) -> None:
        self.home = home
        self.descriptor: FleetDescriptor = load_home_descriptor(home)
        load_home_roster(home, self.descriptor)  # checked now; read again where it is used
        self._admin_blob = read_admin_key(home) if signing else None
        self.names = FleetNames(self.descriptor.fleet)
        self.config = load_config(home)
        self.actor = actor or "admin:cli"
        self.nc: Client | None = None
        self._admin: Ed25519PrivateKey | None = None
        self._sub: Any = None
        self._node_keys: dict[str, str] | None = None
        #: nodes whose status answer did not verify (signature, node, request, fleet)
        self.unverified: set[str] = set()

    @property
    def fleet(self) -> str:
        return self.names.fleet

    @property
    def key(self) -> FleetPublicKey:
        return fleet_public_key(self.descriptor)

    @property
    def admin_key(self) -> Ed25519PrivateKey:
        if self._admin is None:
            blob = self._admin_blob or read_admin_key(self.home)
            harden_process()  # before the admin key is in this process's memory
            try:
                self._admin = open_admin_key(blob, admin_passphrase(), self.descriptor)
            except FlashgateError as exc:
                path = home_file(self.home, ADMIN_KEY_FILE)
                raise type(exc)(f"{path}: {exc.message}") from exc
        return self._admin

    async def __aenter__(self) -> Self:
        login = self.config.logins.get("admin")
        try:
            self.nc = await connect(
                self.config.nats,
                role="admin",
                name="flashgate-cli",
                user=login.user if login else environment.read(NATS_USER_ENV),
                password=login.password if login else environment.read(NATS_PASSWORD_ENV),
                max_reconnect_attempts=3,
            )
        except BrokerUnavailable as exc:
            if isinstance(exc, NoResponders):
                raise
            start = command("dev", "up", "--home", self.home)
            raise BrokerUnavailable(
                f"{exc.message}; is the cluster up? (start it with: {start})"
            ) from exc
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.close()

    def base(self) -> dict[str, Any]:
        return {
            "command_id": new_command_id(),
            "fleet": self.fleet,
            "actor": self.actor,
            "issued_at": int(time.time() * 1000),
        }

    async def _watch_events(self, deadline: float) -> None:
        assert self.nc is not None
        if self._sub is None:
            self._sub = await tail_stream(
                self.nc, self.names.event_stream, self.names.event_subjects, deadline=deadline
            )

    async def send(
        self, command: cmd.Command, *, timeout: float = 30.0, show: bool = True
    ) -> DomainEvent:
        """Sign, publish, and wait for the outcome; raises CommandRejected on rejection."""
        assert self.nc is not None
        signed = sign(command, self.admin_key)
        deadline = time.monotonic() + timeout
        await self._watch_events(deadline)
        await publish_until_stored(
            self.nc,
            self.names.command_subject(signed.command_type),
            cmd.COMMAND_CODEC.encode(signed),  # type: ignore[arg-type]
            msg_id=signed.command_id,
            deadline=deadline,
        )
        with spinner(f"{signed.command_type}: waiting for the backend", show):
            event = await self._outcome(signed.command_id, timeout, deadline)
        if event.type.endswith("command.rejected"):
            data = event.data
            raise CommandRejected(getattr(data, "reason", "rejected"), getattr(data, "detail", ""))
        return event

    async def _outcome(self, command_id: str, timeout: float, deadline: float) -> DomainEvent:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise NoOutcome(
                    f"no outcome for command {command_id} within {timeout:.0f}s; "
                    "is the backend running?"
                )
            try:
                msg = await self._sub.next_msg(timeout=min(remaining, 1.0))
            except nats.errors.TimeoutError:
                continue
            try:
                event = decode_event(msg.data)
            except FlashgateError:
                continue
            if getattr(event.data, "command_id", None) == command_id:
                return event

    async def query(self, what: str, **query: Any) -> Answer:
        assert self.nc is not None
        with broker_errors(f"querying {what} (is the backend running?)"):
            msg = await self.nc.request(
                self.names.query_subject(what), msgspec.json.encode(query), timeout=10
            )
        answer = ANSWER_CODEC.decode(msg.data)
        if not answer.ok:
            raise QueryFailed(answer.error or "error", answer.detail or "")
        return answer

    async def check_api_key(
        self, node: RosterNode, key_id: str, presented: bytes, *, timeout: float = 3.0
    ) -> ApiKeyCheckResult | None:
        """Ask one node whether it accepts ``presented`` for ``key_id``; the secret is sealed
        to the node's X25519 key, the answer is checked against its signing key. None when
        the node does not answer."""
        assert self.nc is not None
        request_id = secrets.token_bytes(16)
        aad = apikey_check_aad(self.fleet, node.id, request_id, key_id)
        sealed = box.seal(b64url_decode(node.exchange_key, "exchange key"), presented, aad)
        request = sign(
            ApiKeyCheck(
                fleet=self.fleet,
                node_id=node.id,
                request_id=request_id,
                issued_at=int(time.time() * 1000),
                key_id=key_id,
                sender_key=sealed.sender_key,
                nonce=sealed.nonce,
                sealed=sealed.ciphertext,
            ),
            self.admin_key,
        )
        try:
            msg = await self.nc.request(
                self.names.apikey_check_subject(node.id),
                APIKEY_CHECK_CODEC.encode(request),
                timeout=timeout,
            )
            result = APIKEY_CHECK_RESULT_CODEC.decode(msg.data)
        except (nats.errors.Error, FlashgateError, TimeoutError):
            return None
        verify(result, load_ed25519_public(node.signing_key, "node key"))
        if (result.request_id, result.node_id, result.key_id) != (request_id, node.id, key_id):
            raise SignatureInvalid("the answer is not for this request")
        return result

    async def status(
        self, node_id: str, *, timeout: float = 2.0, include_secrets: bool = True
    ) -> StatusResponse | None:
        assert self.nc is not None
        request = sign(
            StatusRequest(
                fleet=self.fleet,
                request_id=secrets.token_bytes(16),
                issued_at=int(time.time() * 1000),
                include_secrets=include_secrets,
            ),
            self.admin_key,
        )
        try:
            msg = await self.nc.request(
                self.names.status_subject(node_id),
                STATUS_REQUEST_CODEC.encode(request),
                timeout=timeout,
            )
            answer = STATUS_RESPONSE_CODEC.decode(msg.data)
        except (nats.errors.Error, FlashgateError, TimeoutError):
            return None
        # Decisions rest on these answers (fleet rotate-key retires an epoch on them): a
        # status counts only when the node itself signed it, for this request.
        try:
            key = self._node_signing_key(node_id)
            verify(answer, key)
            if (answer.node_id, answer.request_id, answer.fleet) != (
                node_id,
                request.request_id,
                self.fleet,
            ):
                raise SignatureInvalid("the status answer is not for this request")
        except FlashgateError:
            self.unverified.add(node_id)
            return None
        self.unverified.discard(node_id)
        return answer

    async def synced_roster(self) -> Roster:
        """The newest admin-signed roster: the home's ``roster.json``, or the fleet bucket's
        when its serial is higher (a revocation made elsewhere, or one whose outcome this
        CLI did not see in time); the home's file is updated to it."""
        assert self.nc is not None
        local = load_home_roster(self.home, self.descriptor)
        with broker_errors("reading the roster from the fleet bucket"):
            kv = await self.nc.jetstream().key_value(self.names.fleet_bucket)
            try:
                entry = await kv.get(FleetNames.ROSTER_KEY)
            except KeyNotFoundError:
                return local
        if not entry.value:
            return local
        stored = ROSTER_CODEC.decode(entry.value)
        verify(stored, load_ed25519_public(self.descriptor.admin_key, "admin key"))
        if stored.fleet != self.fleet or stored.serial <= local.serial:
            return local
        write_atomic(fleet_dir(self.home) / ROSTER_FILE, encode_roster(stored), 0o644)
        self._node_keys = None
        return stored

    def _node_signing_key(self, node_id: str) -> Ed25519PublicKey:
        """A node's Ed25519 key, from the home's roster (or the descriptor without one)."""
        if self._node_keys is None:
            keys = {n.id: n.signing_key for n in self.descriptor.nodes}
            roster = load_home_roster(self.home, self.descriptor)
            keys |= {n.id: n.signing_key for n in roster.nodes}
            self._node_keys = keys
        if node_id not in self._node_keys:
            raise UnknownNode(f"{node_id} is not in this home's roster")
        return load_ed25519_public(self._node_keys[node_id], "node key")


def run(coro: Any) -> Any:
    return asyncio.run(coro)
