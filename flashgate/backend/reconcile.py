"""Start-up reconciliation: the secrets bucket must hold exactly the current envelope of
every live secret and API key in the database, and nothing else.

Differences (a value the relay never published, a bucket restored from an old backup, a
key the database does not know) become outbox rows, so they reach NATS by the same
ordered, deduplicated path as everything else.

The live envelopes are also counted here (:func:`count_live_envelopes`): a key
rotation's progress, and whether the old epoch may retire.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import cast

import structlog
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue
from sqlalchemy import and_, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from flashgate.backend.models import ApiKey, OutboxMessage, Repository, Secret, SecretVersion
from flashgate.backend.outbox import kv_subject
from flashgate.broker.connection import broker_errors
from flashgate.errors import FlashgateError
from flashgate.events.envelope import ENVELOPE_CODEC, ApiKeyInfo, SecretEnvelope, provenance_of
from flashgate.events.subjects import FleetNames, secret_key
from flashgate.events.types import ApiKeyScope

log = structlog.get_logger("flashgate.backend.reconcile")


@dataclass(frozen=True)
class ReconcileReport:
    checked: int
    republished: int
    deleted: int

    @property
    def changed(self) -> int:
        return self.republished + self.deleted


def _ms(value: datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp() * 1000)


def secret_envelope(
    names: FleetNames, repo: str, secret: Secret, version: SecretVersion
) -> SecretEnvelope:
    """The bucket value of one secret version, from its rows."""
    return SecretEnvelope(
        fleet=names.fleet,
        repo=repo,
        name=secret.name,
        kind=secret.kind,  # type: ignore[arg-type]
        version=version.version,
        epoch=version.epoch,
        jwe=version.jwe,
        written_at=_ms(version.created_at),
        command_id=version.command_id,
        provenance=provenance_of(version.provenance),
    )


def api_key_envelope(names: FleetNames, repo: str, key: ApiKey) -> SecretEnvelope:
    """The bucket value of one API key, from its row."""
    return SecretEnvelope(
        fleet=names.fleet,
        repo=repo,
        name=key.key_id,
        kind="apikey",
        version=1,
        epoch=key.epoch,
        jwe=key.jwe,
        written_at=_ms(key.created_at),
        command_id=key.command_id,
        api_key=ApiKeyInfo(
            key_id=key.key_id,
            scope=cast(ApiKeyScope, key.scope),
            access=key.access,
            label=key.label,
        ),
        provenance=provenance_of(key.provenance),
    )


async def expected_envelopes(
    session: AsyncSession, names: FleetNames, fleet_id: int
) -> dict[str, SecretEnvelope]:
    """The envelope every live secret and API key should have in the bucket."""
    out: dict[str, SecretEnvelope] = {}
    rows = await session.execute(
        select(Secret, SecretVersion, Repository.name)
        .join(
            SecretVersion,
            and_(
                SecretVersion.secret_id == Secret.id,
                SecretVersion.version == Secret.current_version,
            ),
        )
        .join(Repository, Repository.id == Secret.repository_id)
        .where(Repository.fleet_id == fleet_id, Secret.deleted.is_(False))
    )
    for secret, version, repo in rows.all():
        out[secret_key(repo, secret.name)] = secret_envelope(names, repo, secret, version)
    keys = await session.execute(
        select(ApiKey, Repository.name)
        .join(Repository, Repository.id == ApiKey.repository_id)
        .where(Repository.fleet_id == fleet_id, ApiKey.revoked_at.is_(None))
    )
    for key, repo in keys.all():
        out[secret_key(repo, key.key_id)] = api_key_envelope(names, repo, key)
    return out


async def deleted_keys(session: AsyncSession, fleet_id: int) -> list[str]:
    """The bucket keys of deleted secrets and revoked API keys (their history may remain)."""
    secrets_q = (
        select(Repository.name, Secret.name)
        .join(Repository, Repository.id == Secret.repository_id)
        .where(Repository.fleet_id == fleet_id, Secret.deleted.is_(True))
    )
    keys_q = (
        select(Repository.name, ApiKey.key_id)
        .join(Repository, Repository.id == ApiKey.repository_id)
        .where(Repository.fleet_id == fleet_id, ApiKey.revoked_at.is_not(None))
    )
    rows = [*(await session.execute(secrets_q)).all(), *(await session.execute(keys_q)).all()]
    return [secret_key(repo, name) for repo, name in rows]


async def count_live_envelopes(
    session: AsyncSession, fleet_id: int, *, epoch: int | None = None
) -> int:
    """Current versions of live secrets plus live API keys (optionally of one epoch)."""
    secrets_q = (
        select(func.count())
        .select_from(SecretVersion)
        .join(
            Secret,
            and_(
                Secret.id == SecretVersion.secret_id,
                Secret.current_version == SecretVersion.version,
            ),
        )
        .join(Repository, Repository.id == Secret.repository_id)
        .where(Repository.fleet_id == fleet_id, Secret.deleted.is_(False))
    )
    keys_q = (
        select(func.count())
        .select_from(ApiKey)
        .join(Repository, Repository.id == ApiKey.repository_id)
        .where(Repository.fleet_id == fleet_id, ApiKey.revoked_at.is_(None))
    )
    if epoch is not None:
        secrets_q = secrets_q.where(SecretVersion.epoch == epoch)
        keys_q = keys_q.where(ApiKey.epoch == epoch)
    return int(await session.scalar(secrets_q) or 0) + int(await session.scalar(keys_q) or 0)


async def current_bucket(
    js: JetStreamContext, kv: KeyValue, bucket: str
) -> dict[str, SecretEnvelope | None]:
    """Every live key of the bucket: its envelope, or None for an undecodable value.

    The key list comes from the stream's per-subject state rather than a KV watch: nats-py
    2.16 can yield a watch's end-of-initial-values marker before the values
    (nats-io/nats.py#842), which would make the bucket look emptier than it is.
    """
    with broker_errors(f"listing the keys of {bucket}"):
        info = await js.stream_info(f"KV_{bucket}", subjects_filter=f"$KV.{bucket}.>")
    prefix = f"$KV.{bucket}."
    found: dict[str, SecretEnvelope | None] = {}
    for subject in info.state.subjects or {}:
        key = subject.removeprefix(prefix)
        with broker_errors(f"reading {bucket}"):
            try:
                entry = await kv.get(key)
            except KeyNotFoundError:  # deleted or purged: a marker, not a value
                continue
        try:
            found[key] = ENVELOPE_CODEC.decode(entry.value or b"")
        except FlashgateError:
            found[key] = None
    return found


def _same(a: SecretEnvelope, b: SecretEnvelope | None) -> bool:
    return b is not None and (a.jwe, a.version, a.epoch, a.kind, a.api_key) == (
        b.jwe,
        b.version,
        b.epoch,
        b.kind,
        b.api_key,
    )


async def reconcile(
    sessions: async_sessionmaker[AsyncSession],
    js: JetStreamContext,
    kv: KeyValue,
    names: FleetNames,
    fleet_id: int,
) -> ReconcileReport:
    async with sessions() as session:
        expected = await expected_envelopes(session, names, fleet_id)
        # Read after the envelopes: a command committed in between is either not expected
        # yet or pending here. A key with an outbox row not relayed yet is the relay's to
        # bring up to date, in order: reconciling it too would publish it twice.
        pending = set(
            await session.scalars(
                select(OutboxMessage.subject).where(OutboxMessage.published_at.is_(None))
            )
        )
    actual = await current_bucket(js, kv, names.secrets_bucket)
    stamp = int(datetime.now(UTC).timestamp() * 1000)

    def settled(key: str) -> bool:
        return kv_subject(names.secrets_bucket, key) not in pending

    republish = [k for k, env in expected.items() if settled(k) and not _same(env, actual.get(k))]
    delete = [k for k in actual if k not in expected and settled(k)]
    if republish or delete:
        async with sessions() as session, session.begin():
            for key in republish:
                env = expected[key]
                session.add(
                    OutboxMessage(
                        subject=kv_subject(names.secrets_bucket, key),
                        msg_id=f"kv:{key}:v{env.version}:e{env.epoch}:reconcile:{stamp}",
                        operation="put",
                        payload=ENVELOPE_CODEC.encode(env),
                    )
                )
            for key in delete:
                session.add(
                    OutboxMessage(
                        subject=kv_subject(names.secrets_bucket, key),
                        msg_id=f"kv-del:{key}:reconcile:{stamp}",
                        operation="del",
                        payload=b"",
                    )
                )
    report = ReconcileReport(checked=len(expected), republished=len(republish), deleted=len(delete))
    log.info(
        "reconciled secrets bucket",
        checked=report.checked,
        republished=report.republished,
        deleted=report.deleted,
    )
    return report
