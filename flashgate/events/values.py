"""Typed secret values: what the plaintext of each kind of secret is.

The CLI checks a value against its kind before it encrypts it, and a node checks the
plaintext it opens against the envelope's kind before it holds it (a value that does not
match is refused, never served). ``schemas/secret-value-<kind>.v1.json`` describe them.

- ``storage``: JSON, ``{"type": "storage", "provider": "s3"|"gcs"|"azure", ...}`` with
  the provider's required fields (:data:`STORAGE_REQUIRED`).
- ``ai``: JSON, ``{"type": "ai", "provider": ..., "api_key": ...}`` (``base_url``
  optional; required for the ``azure`` provider).
- ``apikey``: a repository API key secret, ``fgs_`` + 43 base64url characters.
- ``generic`` and ``integration``: opaque bytes (not empty).

Error messages name the CLI flags that set a field (``--access-key-id``) and never
contain a value.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Annotated, Literal, get_args

import msgspec
from msgspec import Meta

from flashgate.errors import InvalidSecretValue

SecretValueKind = Literal["storage", "ai", "integration", "generic", "apikey"]
#: Kinds a person writes with ``secret put`` (``apikey`` values are made by ``apikey create``).
WRITABLE_KINDS: tuple[str, ...] = ("storage", "ai", "integration", "generic")
KINDS: tuple[str, ...] = get_args(SecretValueKind)

StorageProvider = Literal["s3", "gcs", "azure"]
AiProvider = Literal["openai", "anthropic", "mistral", "gemini", "azure"]
STORAGE_PROVIDERS: tuple[str, ...] = get_args(StorageProvider)
AI_PROVIDERS: tuple[str, ...] = get_args(AiProvider)

Text = Annotated[str, Meta(min_length=1, max_length=4096, pattern=r"^[^\x00-\x1f\x7f]+$")]
Url = Annotated[str, Meta(min_length=1, max_length=2048, pattern=r"^https?://[^\s]+$")]


class _Value(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True, omit_defaults=True
):
    def __repr__(self) -> str:  # values hold credentials
        return f"{type(self).__name__}(<redacted>)"


class S3Storage(_Value, frozen=True, tag_field="provider", tag="s3"):
    """An S3 (or S3-compatible, with ``endpoint``) bucket and its access key."""

    type: Literal["storage"]
    bucket: Text
    region: Text
    access_key_id: Text
    secret_access_key: Text
    endpoint: Url | None = None


class GcsStorage(_Value, frozen=True, tag_field="provider", tag="gcs"):
    """A Google Cloud Storage bucket and an HMAC key (access id and secret)."""

    type: Literal["storage"]
    bucket: Text
    access_key_id: Text
    secret_access_key: Text
    region: Text | None = None
    endpoint: Url | None = None


class AzureStorage(_Value, frozen=True, tag_field="provider", tag="azure"):
    """An Azure Blob container (``bucket``), the account name (``access_key_id``) and key."""

    type: Literal["storage"]
    bucket: Text
    access_key_id: Text
    secret_access_key: Text
    region: Text | None = None
    endpoint: Url | None = None


class AiCredential(_Value, frozen=True):
    """An AI provider's API key (``base_url`` for a proxy or a compatible endpoint)."""

    type: Literal["ai"]
    provider: AiProvider
    api_key: Text
    base_url: Url | None = None


StorageValue = S3Storage | GcsStorage | AzureStorage
OpaqueValue = Annotated[
    bytes,
    Meta(
        min_length=1,
        max_length=64 * 1024,
        description="Any bytes (not JSON): the plaintext is the value itself; base64 here.",
    ),
]
ApiKeySecret = Annotated[
    str,
    Meta(
        pattern=r"^fgs_[A-Za-z0-9_-]{43}$",
        description="The API key secret as ASCII bytes (not JSON): fgs_ and 43 base64url.",
    ),
]
#: The type each kind's value has (for the schemas in ``schemas/``).
VALUE_TYPES: dict[str, object] = {
    "storage": StorageValue,
    "ai": AiCredential,
    "integration": OpaqueValue,
    "generic": OpaqueValue,
    "apikey": ApiKeySecret,
}
STORAGE_TYPES: dict[str, type[_Value]] = {"s3": S3Storage, "gcs": GcsStorage, "azure": AzureStorage}

#: Every field a typed flag can set, and its flag.
FLAGS: dict[str, str] = {
    "provider": "--provider",
    "bucket": "--bucket",
    "region": "--region",
    "endpoint": "--endpoint",
    "access_key_id": "--access-key-id",
    "secret_access_key": "--secret-access-key",
    "base_url": "--base-url",
    "api_key": "--api-key",
}
STORAGE_FIELDS = ("provider", "bucket", "region", "endpoint", "access_key_id", "secret_access_key")
AI_FIELDS = ("provider", "base_url", "api_key")
STORAGE_REQUIRED: dict[str, tuple[str, ...]] = {
    "s3": ("bucket", "region", "access_key_id", "secret_access_key"),
    "gcs": ("bucket", "access_key_id", "secret_access_key"),
    "azure": ("bucket", "access_key_id", "secret_access_key"),
}
AI_REQUIRED: dict[str, tuple[str, ...]] = {
    **{p: ("api_key",) for p in AI_PROVIDERS},
    "azure": ("base_url", "api_key"),
}
_API_KEY_SECRET = re.compile(rb"^fgs_[A-Za-z0-9_-]{43}$")


def _a(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def _flags(fields: tuple[str, ...] | list[str]) -> str:
    return ", ".join(FLAGS[f] for f in fields)


def check_fields(kind: str, fields: Mapping[str, object]) -> None:
    """Check that ``fields`` (JSON members or typed flags, by field name) make a complete
    value of ``kind``: the provider is known, each required field is there and no field
    belongs to another kind. Raises :class:`InvalidSecretValue` naming the flags."""
    if kind not in ("storage", "ai"):
        raise InvalidSecretValue(f"typed value flags are for the storage and ai kinds, not {kind}")
    allowed = STORAGE_FIELDS if kind == "storage" else AI_FIELDS
    stray = [f for f in fields if f not in allowed]
    if stray:
        unknown = [f for f in stray if f not in FLAGS]
        if unknown:
            raise InvalidSecretValue(
                f"{_a(kind)} value has no field {unknown[0][:40]!r} (fields: {', '.join(allowed)})"
            )
        raise InvalidSecretValue(
            f"{_flags(stray)} {'is' if len(stray) == 1 else 'are'} not for {_a(kind)} secret "
            f"({_a(kind)} secret takes {_flags(list(allowed))})"
        )
    providers = STORAGE_PROVIDERS if kind == "storage" else AI_PROVIDERS
    provider = fields.get("provider")
    required_by = STORAGE_REQUIRED if kind == "storage" else AI_REQUIRED
    if provider is None:
        each = "; ".join(f"{p}: {_flags(list(required_by[p]))}" for p in providers)
        raise InvalidSecretValue(
            f"{_a(kind)} secret needs --provider and its fields ({each}); missing: --provider"
        )
    if provider not in providers:
        shown = provider[:40] if isinstance(provider, str) else type(provider).__name__
        raise InvalidSecretValue(
            f"--provider {shown!r} is not {_a(kind)} provider ({'|'.join(providers)})"
        )
    required = required_by[str(provider)]
    missing = [f for f in required if fields.get(f) in (None, "")]
    if missing:
        raise InvalidSecretValue(
            f"{_a(kind)} secret for provider {provider} needs {_flags(list(required))}; "
            f"missing: {_flags(missing)}"
        )


def check_value(kind: str, plaintext: bytes | bytearray | memoryview) -> None:
    """Check that ``plaintext`` is a value of ``kind``; raises :class:`InvalidSecretValue`
    (whose message names the problem, never the value)."""
    if kind not in KINDS:
        raise InvalidSecretValue(f"{kind[:40]!r} is not a secret kind ({', '.join(KINDS)})")
    data = bytes(plaintext)
    if not data:
        raise InvalidSecretValue("the value is empty")
    if kind in ("generic", "integration"):
        return
    if kind == "apikey":
        if not _API_KEY_SECRET.match(data):
            raise InvalidSecretValue("an apikey value is fgs_ and 43 base64url characters")
        return
    try:
        document = msgspec.json.decode(data)
    except msgspec.DecodeError:
        raise InvalidSecretValue(f"{_a(kind)} value is a JSON object; this is not JSON") from None
    if not isinstance(document, dict):
        raise InvalidSecretValue(f"{_a(kind)} value is a JSON object")
    if document.get("type") != kind:
        raise InvalidSecretValue(f'{_a(kind)} value has "type": "{kind}"')
    check_fields(kind, {k: v for k, v in document.items() if k != "type"})
    target: type[_Value] = (
        STORAGE_TYPES[document["provider"]] if kind == "storage" else AiCredential
    )
    try:
        msgspec.json.decode(data, type=target)
    except msgspec.ValidationError as exc:
        # msgspec names the path ($.bucket) and the expectation, never the value.
        raise InvalidSecretValue(f"invalid {kind} value: {_as_flags(str(exc))}") from None


def _as_flags(message: str) -> str:
    """A msgspec error about ``$.field`` as one about the field's flag."""
    match = re.search(r"at `\$\.([a-z_]+)`", message)
    if match and match.group(1) in FLAGS:
        field = match.group(1)
        head = message[: match.start()].rstrip(" -")
        if "https?://" in head:
            return f"{FLAGS[field]} ({field}) must be an http:// or https:// URL"
        if "control" in head or "regex" in head:
            return f"{FLAGS[field]} ({field}) must be one line of text, at most 4096 characters"
        return f"{FLAGS[field]} ({field}): {head}"
    return message


def typed_value(kind: str, fields: dict[str, str]) -> bytes:
    """The stored JSON for a value given as typed flags (checked): ``{"type": kind, ...}``
    with sorted keys, the format the CLI has always written."""
    check_fields(kind, fields)
    data = json.dumps({"type": kind, **fields}, sort_keys=True).encode()
    check_value(kind, data)
    return data
