"""Domain events: CloudEvents 1.0 in JSON structured mode on ``fg.<f>.evt.<type>``.

    {"specversion": "1.0", "id": "...", "source": "flashgate/<fleet>/backend",
     "type": "io.flashgate.secret.created", "subject": "payments.s3",
     "time": "2026-11-28T12:00:00.000Z", "datacontenttype": "application/json",
     "dataschema": "urn:flashgate:schema:event-secret-created:1", "data": {...}}

``data`` is one of the payload Structs below, chosen by ``type``. Events describe what
happened to secrets, never a secret value: no payload has a field that could hold one
(a test checks every payload type's fields).

Decoding is two-phase: the CloudEvents attributes with ``data`` kept raw, then ``data``
with the decoder of its ``type``; an unknown type is a typed error, and so is an event
read from a subject that is not its type's (``subject=``).

Every event carries a ``signature`` extension attribute: Ed25519 over the canonical bytes
of the whole event (attributes and data, domain ``event``), by the backend for what the
backend publishes, by the reporting node for a bridge's ``node.misbehaved`` and
``gateway.usage``. Who may sign
what, and the check, are in :mod:`flashgate.events.event_auth`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, ClassVar, Literal

import msgspec
from msgspec import Meta

from flashgate.errors import MalformedMessage
from flashgate.events.codec import Codec
from flashgate.events.types import (
    ApiKeyScope,
    CommandId,
    Count,
    Detail,
    Ed25519Sig,
    Epoch,
    Label,
    Name,
    ReasonCode,
    SecretKind,
    Serial,
    UnixMillis,
    Version,
)

EVENT_TYPE_PREFIX = "io.flashgate."
MAX_EVENT_BYTES = 16 * 1024
EventId = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")]


class EventData(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    event_type: ClassVar[str]  # e.g. "secret.created"; CloudEvents type is the prefix + it


class SecretCreated(EventData, frozen=True):
    event_type: ClassVar[str] = "secret.created"
    repo: Name
    name: Name
    kind: SecretKind
    version: Version
    epoch: Epoch
    command_id: CommandId | None = None


class SecretRotated(EventData, frozen=True):
    event_type: ClassVar[str] = "secret.rotated"
    repo: Name
    name: Name
    kind: SecretKind
    version: Version
    previous_version: Version
    epoch: Epoch
    command_id: CommandId | None = None


class SecretDeleted(EventData, frozen=True):
    event_type: ClassVar[str] = "secret.deleted"
    repo: Name
    name: Name
    last_version: Version
    command_id: CommandId | None = None


class ApiKeyCreated(EventData, frozen=True):
    event_type: ClassVar[str] = "apikey.created"
    key_id: Name
    repo: Name
    scope: ApiKeyScope
    access: Name
    label: Label
    command_id: CommandId | None = None


class ApiKeyRenamed(EventData, frozen=True):
    event_type: ClassVar[str] = "apikey.renamed"
    key_id: Name
    repo: Name
    label: Label
    command_id: CommandId | None = None


class ApiKeyRevoked(EventData, frozen=True):
    event_type: ClassVar[str] = "apikey.revoked"
    key_id: Name
    repo: Name
    command_id: CommandId | None = None


class NodeRevoked(EventData, frozen=True):
    event_type: ClassVar[str] = "node.revoked"
    node_id: Name
    roster_serial: Serial
    command_id: CommandId | None = None


class NodeMisbehaved(EventData, frozen=True):
    event_type: ClassVar[str] = "node.misbehaved"
    node_id: Name
    reporter: Name
    reason: ReasonCode
    secret_key: Annotated[str, Meta(max_length=129)] | None = None
    epoch: Epoch | None = None


GatewayApi = Literal["s3", "openai"]


class GatewayUsage(EventData, frozen=True):
    """What one API key did through one node's gateway in one window (DESIGN §7): counts
    and bytes, aggregated (one event per key, API and window, never one per request),
    signed by the node that served it (``source`` names it)."""

    event_type: ClassVar[str] = "gateway.usage"
    node_id: Name
    repo: Name
    key_id: Name
    api: GatewayApi
    window_start: UnixMillis
    window_end: UnixMillis
    requests: Count
    errors: Count  # answered 4xx/5xx after the key was authenticated
    upstream_errors: Count
    bytes_in: Count
    bytes_out: Count


class KeyRotationStarted(EventData, frozen=True):
    event_type: ClassVar[str] = "fleet.rotation.started"
    from_epoch: Epoch
    to_epoch: Epoch
    total: Count
    command_id: CommandId | None = None


class KeyRotationProgressed(EventData, frozen=True):
    event_type: ClassVar[str] = "fleet.rotation.progressed"
    from_epoch: Epoch
    to_epoch: Epoch
    done: Count
    total: Count


class KeyRotationCompleted(EventData, frozen=True):
    event_type: ClassVar[str] = "fleet.rotation.completed"
    retired_epoch: Epoch
    current_epoch: Epoch
    command_id: CommandId | None = None


class EnvelopesAttested(EventData, frozen=True):
    """The admin adopted envelopes written before provenance existed (``fleet attest``)."""

    event_type: ClassVar[str] = "envelope.attested"
    count: Count
    command_id: CommandId | None = None


class CommandRejected(EventData, frozen=True):
    event_type: ClassVar[str] = "command.rejected"
    command_id: CommandId | None  # None when the command was too broken to read one
    command_type: Annotated[str, Meta(max_length=64)] | None
    reason: ReasonCode  # a FlashgateError.code, e.g. "bad_signature", "stale_version"
    detail: Detail = ""


EVENT_DATA_TYPES: tuple[type[EventData], ...] = (
    SecretCreated,
    SecretRotated,
    SecretDeleted,
    ApiKeyCreated,
    ApiKeyRenamed,
    ApiKeyRevoked,
    NodeRevoked,
    NodeMisbehaved,
    GatewayUsage,
    KeyRotationStarted,
    KeyRotationProgressed,
    KeyRotationCompleted,
    EnvelopesAttested,
    CommandRejected,
)
_BY_TYPE = {EVENT_TYPE_PREFIX + t.event_type: t for t in EVENT_DATA_TYPES}
_DATA_DECODERS = {name: msgspec.json.Decoder(t) for name, t in _BY_TYPE.items()}


class CloudEventAttributes(msgspec.Struct, frozen=True, kw_only=True):
    """The CloudEvents 1.0 context attributes, with ``data`` left raw for phase two."""

    specversion: Literal["1.0"]
    id: EventId
    source: Annotated[str, Meta(min_length=1, max_length=256)]
    type: Annotated[str, Meta(min_length=1, max_length=128)]
    time: Annotated[str, Meta(max_length=64)]
    subject: Annotated[str, Meta(max_length=256)] | None = None
    datacontenttype: Literal["application/json"] = "application/json"
    dataschema: Annotated[str, Meta(max_length=256)] | None = None
    data: msgspec.Raw
    signature: Ed25519Sig = ""  # extension attribute (flashgate.events.event_auth)


class DomainEvent(msgspec.Struct, frozen=True, kw_only=True):
    """A decoded event: CloudEvents attributes plus its typed payload, and its signature."""

    signing_domain: ClassVar[str] = "event"

    specversion: Literal["1.0"] = "1.0"
    id: EventId
    source: Annotated[str, Meta(min_length=1, max_length=256)]
    type: Annotated[str, Meta(min_length=1, max_length=128)]
    time: Annotated[str, Meta(max_length=64)]
    subject: Annotated[str, Meta(max_length=256)] | None = None
    datacontenttype: Literal["application/json"] = "application/json"
    dataschema: Annotated[str, Meta(max_length=256)] | None = None
    data: EventData
    signature: Ed25519Sig = ""

    @property
    def short_type(self) -> str:
        return self.type.removeprefix(EVENT_TYPE_PREFIX)


def data_schema_name(data_type: type[EventData]) -> str:
    return "event-" + data_type.event_type.replace(".", "-")


def schema_urn(data_type: type[EventData]) -> str:
    """The ``dataschema`` of an event: the ``$id`` of its payload's schema in schemas/."""
    return f"urn:flashgate:schema:{data_schema_name(data_type)}:1"


def make_event(
    data: EventData,
    *,
    event_id: str,
    source: str,
    subject: str | None = None,
    time: datetime | None = None,
) -> DomainEvent:
    stamp = (time or datetime.now(UTC)).astimezone(UTC)
    return DomainEvent(
        id=event_id,
        source=source,
        type=EVENT_TYPE_PREFIX + type(data).event_type,
        time=stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z",
        subject=subject,
        dataschema=schema_urn(type(data)),
        data=data,
    )


_ATTRS: Codec[CloudEventAttributes] = Codec(
    CloudEventAttributes, max_bytes=MAX_EVENT_BYTES, what="domain event"
)
_ENCODER = msgspec.json.Encoder()


def encode_event(event: DomainEvent) -> bytes:
    data = _ENCODER.encode(event)
    if len(data) > MAX_EVENT_BYTES:
        raise MalformedMessage(f"domain event over {MAX_EVENT_BYTES} bytes")
    return data


def type_of_subject(subject: str) -> str:
    """The event type a subject ``fg.<fleet>.evt.<type>`` is for (``secret.created``)."""
    parts = subject.split(".", 3)
    if len(parts) != 4 or parts[2] != "evt":
        raise MalformedMessage(f"{subject[:140]!r} is not an event subject")
    return parts[3]


def decode_event(raw: bytes, *, subject: str | None = None) -> DomainEvent:
    """Decode an event; with ``subject`` (where it was read), refuse one whose type is not
    the subject's: a publisher allowed one event subject cannot pass off another type."""
    attrs = _ATTRS.decode(raw)
    decoder = _DATA_DECODERS.get(attrs.type)
    if decoder is None:
        raise MalformedMessage(f"unknown domain event type {attrs.type[:64]!r}")
    if subject is not None and EVENT_TYPE_PREFIX + type_of_subject(subject) != attrs.type:
        raise MalformedMessage(
            f"a {attrs.type[:64]} event on subject {subject[:140]!r} (not its type's subject)"
        )
    try:
        data = decoder.decode(attrs.data)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise MalformedMessage(f"invalid {attrs.type} data: {exc}") from exc
    return DomainEvent(
        id=attrs.id,
        source=attrs.source,
        type=attrs.type,
        time=attrs.time,
        subject=attrs.subject,
        datacontenttype=attrs.datacontenttype,
        dataschema=attrs.dataschema,
        data=data,
        signature=attrs.signature,
    )
