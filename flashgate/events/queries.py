"""Metadata queries answered by the backend over NATS request/reply
(``fg.<f>.query.<what>``, JSON). Answers hold metadata only: names, kinds, versions,
times, audit outcomes; never an envelope's value, never a plaintext.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from flashgate.events.codec import Codec
from flashgate.events.types import (
    Actor,
    ApiKeyScope,
    CommandId,
    Count,
    Detail,
    Epoch,
    Label,
    Name,
    ReasonCode,
    UnixMillis,
    Version,
)

QUERY_KINDS = ("repositories", "secrets", "apikeys", "audit", "rotation")
MAX_QUERY_BYTES = 4096
MAX_ANSWER_BYTES = 4 * 1024 * 1024
Limit = Annotated[int, Meta(ge=1, le=1000)]


#: A keyset cursor: the last row of a page as ``<repo>/<name>`` (a secret's name, an API
#: key's id); the next page starts after it.
Cursor = Annotated[
    str,
    Meta(pattern=r"^[a-z0-9_-]{1,64}/[a-z0-9_-]{1,64}$", description="<repo>/<name>"),
]


class Query(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A metadata query. ``secrets`` and ``apikeys`` are ordered by repository, then name
    (key id); page them with ``after`` = the previous answer's ``next``."""

    repo: Name | None = None
    limit: Limit = 100
    include_deleted: bool = False
    before_id: Annotated[int, Meta(ge=1)] | None = None  # audit paging: ids below this
    offset: Annotated[int, Meta(ge=0, le=2**31 - 1)] = 0  # paging of the other listings
    name: Name | None = None  # secrets: only this name; apikeys: only this key id
    after: Cursor | None = None  # secrets, apikeys: rows after this cursor


class RepositoryInfo(msgspec.Struct, frozen=True, kw_only=True):
    name: Name
    secrets: int
    api_keys: int
    created_at: UnixMillis


class VersionInfo(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    version: Version
    epoch: Epoch
    created_at: UnixMillis


class SecretInfo(msgspec.Struct, frozen=True, kw_only=True):
    repo: Name
    name: Name
    kind: str
    current_version: Version
    deleted: bool
    updated_at: UnixMillis
    versions: list[VersionInfo]


class ApiKeyListing(msgspec.Struct, frozen=True, kw_only=True):
    key_id: Name
    repo: Name
    scope: ApiKeyScope
    access: Name
    label: Label
    epoch: Epoch
    created_at: UnixMillis
    revoked_at: UnixMillis | None = None


class AuditEntry(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    at: UnixMillis
    actor: Actor | None
    command_id: CommandId | None
    command_type: str | None
    target: str | None
    result: Literal["applied", "rejected", "duplicate"]
    reason: ReasonCode | None = None
    detail: Detail | None = None


class RotationInfo(msgspec.Struct, frozen=True, kw_only=True):
    """Where the fleet key stands: the writing epoch, a rotation in progress, and how many
    live envelopes (current secret versions and live API keys) each epoch still wraps."""

    epoch: Epoch
    rotating_to: Epoch | None = None
    envelopes: dict[Epoch, Count] = {}
    #: envelopes re-wrapped from ``epoch`` to ``rotating_to`` in the rotation under way (one
    #: written under the new epoch is no re-wrap; a re-wrap reverted does not count)
    rewrapped: Count = 0


class Answer(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool = True
    error: ReasonCode | None = None
    detail: Detail | None = None
    repositories: list[RepositoryInfo] | None = None
    secrets: list[SecretInfo] | None = None
    api_keys: list[ApiKeyListing] | None = None
    audit: list[AuditEntry] | None = None
    rotation: RotationInfo | None = None
    #: secrets, apikeys: when the page is full, the cursor to ask for the next one with
    next: Cursor | None = None


QUERY_CODEC: Codec[Query] = Codec(Query, max_bytes=MAX_QUERY_BYTES, what="query")
ANSWER_CODEC: Codec[Answer] = Codec(Answer, max_bytes=MAX_ANSWER_BYTES, what="query answer")
