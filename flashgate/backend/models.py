"""The backend's tables (SQLAlchemy 2, typed declarative mapping).

The database holds metadata and envelopes (JWEs under the fleet key), never a plaintext
secret or a content key. The schema is owned by Alembic migrations
(``flashgate/backend/migrations``); :data:`Base.metadata` is what they are checked against.

| table                | holds |
|----------------------|-------|
| fleets               | one row per fleet: current epoch, admin key, roster |
| fleet_epochs         | the signed descriptor of every key epoch, retired or not |
| repositories         | repositories of a fleet |
| secrets              | one row per secret: kind, current version, deleted flag |
| secret_versions      | every version's envelope (JWE) and epoch |
| api_keys             | repository API keys: metadata and the envelope of their secret |
| audit_events         | every command and its outcome; never a value |
| outbox               | messages to publish after commit (KV puts/deletes, events) |
| processed_commands   | command ids already handled, with their outcome |
| rewrap_origins       | during a fleet key rotation: each re-wrapped envelope's original JWE |
|                      | (for a revert), who re-wrapped it, and who may not re-wrap it again |
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
NAME = String(64)
# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit identity.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Fleet(Base):
    __tablename__ = "fleets"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(NAME, unique=True)
    epoch: Mapped[int] = mapped_column(Integer)
    admin_key: Mapped[str] = mapped_column(String(64))
    roster: Mapped[str | None] = mapped_column(Text)
    roster_serial: Mapped[int] = mapped_column(Integer, default=0)
    rotating_to: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class FleetEpoch(Base):
    __tablename__ = "fleet_epochs"
    __table_args__ = (UniqueConstraint("fleet_id", "epoch"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    fleet_id: Mapped[int] = mapped_column(ForeignKey("fleets.id"))
    epoch: Mapped[int] = mapped_column(Integer)
    descriptor: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    retired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The admin-signed commands that dealt (sealed shares) and retired this epoch.
    dealt_by: Mapped[str | None] = mapped_column(Text)
    retired_by: Mapped[str | None] = mapped_column(Text)


class Repository(Base):
    __tablename__ = "repositories"
    __table_args__ = (UniqueConstraint("fleet_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    fleet_id: Mapped[int] = mapped_column(ForeignKey("fleets.id"))
    name: Mapped[str] = mapped_column(NAME)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Secret(Base):
    __tablename__ = "secrets"
    __table_args__ = (UniqueConstraint("repository_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    repository_id: Mapped[int] = mapped_column(ForeignKey("repositories.id"))
    name: Mapped[str] = mapped_column(NAME)
    kind: Mapped[str] = mapped_column(String(16))
    current_version: Mapped[int] = mapped_column(Integer)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    repository: Mapped[Repository] = relationship(lazy="joined", innerjoin=True)


class SecretVersion(Base):
    __tablename__ = "secret_versions"
    __table_args__ = (UniqueConstraint("secret_id", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    secret_id: Mapped[int] = mapped_column(ForeignKey("secrets.id"))
    version: Mapped[int] = mapped_column(Integer)
    epoch: Mapped[int] = mapped_column(Integer)
    jwe: Mapped[str] = mapped_column(Text)
    command_id: Mapped[str | None] = mapped_column(String(64))
    #: JSON of :class:`flashgate.events.envelope.Provenance` (None: written before 0004)
    provenance: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    key_id: Mapped[str] = mapped_column(NAME, unique=True)
    repository_id: Mapped[int] = mapped_column(ForeignKey("repositories.id"))
    scope: Mapped[str] = mapped_column(String(16))
    access: Mapped[str] = mapped_column(NAME)
    label: Mapped[str] = mapped_column(String(128))
    epoch: Mapped[int] = mapped_column(Integer)
    jwe: Mapped[str] = mapped_column(Text)
    command_id: Mapped[str | None] = mapped_column(String(64))
    #: JSON of :class:`flashgate.events.envelope.Provenance` (None: written before 0004)
    provenance: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    repository: Mapped[Repository] = relationship(lazy="joined", innerjoin=True)


class AuditEvent(Base):
    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    fleet: Mapped[str] = mapped_column(NAME)
    actor: Mapped[str | None] = mapped_column(String(128))
    command_id: Mapped[str | None] = mapped_column(String(64), index=True)
    command_type: Mapped[str | None] = mapped_column(String(64))
    target: Mapped[str | None] = mapped_column(String(160))
    result: Mapped[str] = mapped_column(String(16))  # applied | rejected | duplicate
    reason: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str | None] = mapped_column(String(512))


class OutboxMessage(Base):
    """A message to publish after commit. ``subject`` is a JetStream subject: a KV put or
    delete is a publish to ``$KV.<bucket>.<key>`` (with ``KV-Operation: DEL`` for a delete
    marker), so both get ``Nats-Msg-Id`` deduplication like the events."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    subject: Mapped[str] = mapped_column(String(300))
    msg_id: Mapped[str] = mapped_column(String(160), unique=True)
    operation: Mapped[str] = mapped_column(String(8))  # put | rollup | del | purge | event
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)


class ProcessedCommand(Base):
    __tablename__ = "processed_commands"

    command_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    command_type: Mapped[str | None] = mapped_column(String(64))
    result: Mapped[str] = mapped_column(String(16))  # applied | rejected
    reason: Mapped[str | None] = mapped_column(String(64))
    outcome_msg_id: Mapped[str | None] = mapped_column(String(160))
    processed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class RewrapOrigin(Base):
    """One envelope re-wrapped (or reverted) during the rotation to ``to_epoch``.

    ``prior_jwe`` is the epoch ``to_epoch - 1`` envelope that the re-wrap replaced, kept so
    that a re-wrap no node can open can be put back; ``barred`` lists (space-separated)
    ``culprit>reporter`` pairs: a node whose re-wrap of this envelope was disputed and the
    node that disputed it (the bar holds while the reporter is active). Rows go when the
    old epoch retires.
    A prior JWE is public ciphertext under the fleet key, like every other envelope here.
    """

    __tablename__ = "rewrap_origins"
    __table_args__ = (UniqueConstraint("fleet_id", "key", "version", "to_epoch"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    fleet_id: Mapped[int] = mapped_column(ForeignKey("fleets.id"))
    key: Mapped[str] = mapped_column(String(160))
    version: Mapped[int] = mapped_column(Integer)
    to_epoch: Mapped[int] = mapped_column(Integer)
    prior_jwe: Mapped[str | None] = mapped_column(Text)
    rewrapped_by: Mapped[str | None] = mapped_column(NAME)
    prior_provenance: Mapped[str | None] = mapped_column(Text)
    barred: Mapped[str] = mapped_column(Text, default="")
