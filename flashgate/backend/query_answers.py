"""Metadata queries (request/reply on ``fg.<f>.query.<what>``): repositories, secrets with
their versions, API keys, the audit log. Metadata only; a query can never return a JWE.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from sqlalchemy import ColumnElement, Select, and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import InstrumentedAttribute

from flashgate.backend.models import (
    ApiKey,
    AuditEvent,
    Fleet,
    Repository,
    RewrapOrigin,
    Secret,
    SecretVersion,
)
from flashgate.errors import FlashgateError
from flashgate.events import queries as q

Handler = Callable[[AsyncSession, q.Query], Awaitable[q.Answer]]


def _ms_required(value: datetime) -> int:
    if value.tzinfo is None:  # SQLite hands back naive datetimes; they were written in UTC
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp() * 1000)


def _ms(value: datetime | None) -> int | None:
    return None if value is None else _ms_required(value)


def _after(
    repo: InstrumentedAttribute[str], name: InstrumentedAttribute[str], cursor: str
) -> ColumnElement[bool]:
    """Rows after the keyset cursor ``<repo>/<name>`` in (repo, name) order."""
    after_repo, _, after_name = cursor.partition("/")
    return or_(repo > after_repo, and_(repo == after_repo, name > after_name))


class Queries:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], fleet_id: int) -> None:
        self._sessions = sessions
        self._fleet_id = fleet_id
        self.handlers: dict[str, Handler] = {
            "repositories": self.repositories,
            "secrets": self.secrets,
            "apikeys": self.api_keys,
            "audit": self.audit,
            "rotation": self.rotation,
        }

    async def answer(self, what: str, raw: bytes) -> bytes:
        """Decode, run, encode. Bad queries get ``ok: false`` with a reason, never a crash."""
        try:
            query = q.QUERY_CODEC.decode(raw or b"{}")
            handler = self.handlers[what]
            async with self._sessions() as session:
                answer = await handler(session, query)
        except FlashgateError as exc:
            answer = q.Answer(ok=False, error=exc.code, detail=exc.message[:500])
        except KeyError:
            answer = q.Answer(ok=False, error="unknown_query", detail=f"no query {what!r}")
        return q.ANSWER_CODEC.encode(answer)

    def _repos(self, query: q.Query) -> Select[Repository]:
        stmt = select(Repository).where(Repository.fleet_id == self._fleet_id)
        if query.repo is not None:
            stmt = stmt.where(Repository.name == query.repo)
        return stmt

    async def repositories(self, session: AsyncSession, query: q.Query) -> q.Answer:
        repos = (
            await session.scalars(self._repos(query).order_by(Repository.name).limit(query.limit))
        ).all()
        out = []
        for repo in repos:
            secrets = await session.scalar(
                select(func.count())
                .select_from(Secret)
                .where(Secret.repository_id == repo.id, Secret.deleted.is_(False))
            )
            keys = await session.scalar(
                select(func.count())
                .select_from(ApiKey)
                .where(ApiKey.repository_id == repo.id, ApiKey.revoked_at.is_(None))
            )
            out.append(
                q.RepositoryInfo(
                    name=repo.name,
                    secrets=int(secrets or 0),
                    api_keys=int(keys or 0),
                    created_at=_ms_required(repo.created_at),
                )
            )
        return q.Answer(repositories=out)

    async def secrets(self, session: AsyncSession, query: q.Query) -> q.Answer:
        stmt = (
            select(Secret)
            .join(Repository, Repository.id == Secret.repository_id)
            .where(Repository.fleet_id == self._fleet_id)
            .order_by(Repository.name, Secret.name)
            .limit(query.limit)
            .offset(query.offset)
        )
        if query.repo is not None:
            stmt = stmt.where(Repository.name == query.repo)
        if query.name is not None:  # the (repository_id, name) unique index
            stmt = stmt.where(Secret.name == query.name)
        if query.after is not None:
            stmt = stmt.where(_after(Repository.name, Secret.name, query.after))
        if not query.include_deleted:
            stmt = stmt.where(Secret.deleted.is_(False))
        rows = (await session.scalars(stmt)).all()
        versions_of: dict[int, list[tuple[int, int, datetime]]] = {s.id: [] for s in rows}
        if rows:  # one query for every listed secret's versions
            for secret_id, v, e, c in (
                await session.execute(
                    select(
                        SecretVersion.secret_id,
                        SecretVersion.version,
                        SecretVersion.epoch,
                        SecretVersion.created_at,
                    )
                    .where(SecretVersion.secret_id.in_(list(versions_of)))
                    .order_by(SecretVersion.secret_id, SecretVersion.version)
                )
            ).all():
                versions_of[secret_id].append((v, e, c))
        out = []
        for secret in rows:
            versions = versions_of[secret.id]
            out.append(
                q.SecretInfo(
                    repo=secret.repository.name,
                    name=secret.name,
                    kind=secret.kind,
                    current_version=secret.current_version,
                    deleted=secret.deleted,
                    updated_at=_ms_required(secret.updated_at),
                    versions=[
                        q.VersionInfo(version=v, epoch=e, created_at=_ms_required(c))
                        for v, e, c in versions
                    ],
                )
            )
        return q.Answer(
            secrets=out,
            next=f"{out[-1].repo}/{out[-1].name}" if len(out) == query.limit else None,
        )

    async def api_keys(self, session: AsyncSession, query: q.Query) -> q.Answer:
        stmt = (
            select(ApiKey)
            .join(Repository, Repository.id == ApiKey.repository_id)
            .where(Repository.fleet_id == self._fleet_id)
            .order_by(Repository.name, ApiKey.key_id)
            .limit(query.limit)
            .offset(query.offset)
        )
        if query.repo is not None:
            stmt = stmt.where(Repository.name == query.repo)
        if query.name is not None:
            stmt = stmt.where(ApiKey.key_id == query.name)
        if query.after is not None:
            stmt = stmt.where(_after(Repository.name, ApiKey.key_id, query.after))
        if not query.include_deleted:
            stmt = stmt.where(ApiKey.revoked_at.is_(None))
        keys = (await session.scalars(stmt)).all()
        return q.Answer(
            next=f"{keys[-1].repository.name}/{keys[-1].key_id}"
            if len(keys) == query.limit
            else None,
            api_keys=[
                q.ApiKeyListing(
                    key_id=k.key_id,
                    repo=k.repository.name,
                    scope=k.scope,  # type: ignore[arg-type]
                    access=k.access,
                    label=k.label,
                    epoch=k.epoch,
                    created_at=_ms_required(k.created_at),
                    revoked_at=_ms(k.revoked_at),
                )
                for k in keys
            ],
        )

    async def audit(self, session: AsyncSession, query: q.Query) -> q.Answer:
        stmt = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(query.limit)
        if query.before_id is not None:
            stmt = stmt.where(AuditEvent.id < query.before_id)
        if query.repo is not None:
            stmt = stmt.where(AuditEvent.target.like(f"{query.repo}.%"))
        rows = (await session.scalars(stmt)).all()
        return q.Answer(
            audit=[
                q.AuditEntry(
                    id=r.id,
                    at=_ms_required(r.at),
                    actor=r.actor,
                    command_id=r.command_id,
                    command_type=r.command_type,
                    target=r.target,
                    result=r.result,  # type: ignore[arg-type]
                    reason=r.reason,
                    detail=r.detail,
                )
                for r in rows
            ]
        )

    async def rotation(self, session: AsyncSession, query: q.Query) -> q.Answer:
        """The writing epoch, a rotation in progress, live envelopes per epoch."""
        fleet = await session.get(Fleet, self._fleet_id)
        assert fleet is not None
        secrets_by_epoch = await session.execute(
            select(SecretVersion.epoch, func.count())
            .join(
                Secret,
                (Secret.id == SecretVersion.secret_id)
                & (Secret.current_version == SecretVersion.version),
            )
            .join(Repository, Repository.id == Secret.repository_id)
            .where(Repository.fleet_id == self._fleet_id, Secret.deleted.is_(False))
            .group_by(SecretVersion.epoch)
        )
        keys_by_epoch = await session.execute(
            select(ApiKey.epoch, func.count())
            .join(Repository, Repository.id == ApiKey.repository_id)
            .where(Repository.fleet_id == self._fleet_id, ApiKey.revoked_at.is_(None))
            .group_by(ApiKey.epoch)
        )
        counts: dict[int, int] = {}
        for epoch, count in [*secrets_by_epoch.all(), *keys_by_epoch.all()]:
            counts[epoch] = counts.get(epoch, 0) + count
        rewrapped = 0
        if fleet.rotating_to is not None:  # a re-wrap keeps its original until retirement
            rewrapped = (
                await session.scalar(
                    select(func.count())
                    .select_from(RewrapOrigin)
                    .where(
                        RewrapOrigin.fleet_id == self._fleet_id,
                        RewrapOrigin.to_epoch == fleet.rotating_to,
                        RewrapOrigin.prior_jwe.is_not(None),  # None: reverted
                    )
                )
                or 0
            )
        return q.Answer(
            rotation=q.RotationInfo(
                epoch=fleet.epoch,
                rotating_to=fleet.rotating_to,
                envelopes=counts,
                rewrapped=rewrapped,
            )
        )
