"""Typed secret values (flashgate/events/values.py): what each kind's plaintext is, and
errors that name the user's flags and never the value."""

from __future__ import annotations

import json

import msgspec
import pytest

from flashgate.errors import InvalidSecretValue
from flashgate.events.values import (
    KINDS,
    VALUE_TYPES,
    AzureStorage,
    S3Storage,
    check_value,
    typed_value,
)

S3 = {
    "provider": "s3",
    "bucket": "media",
    "region": "eu-west-1",
    "access_key_id": "AKIA",
    "secret_access_key": "canary-s3-secret",
}


def test_typed_value_keeps_the_stored_format() -> None:
    """Valid values are stored exactly as the CLI always wrote them."""
    data = typed_value("storage", S3)
    assert data == json.dumps({"type": "storage", **S3}, sort_keys=True).encode()
    check_value("storage", data)
    decoded = msgspec.json.decode(data, type=VALUE_TYPES["storage"])
    assert isinstance(decoded, S3Storage) and decoded.bucket == "media"
    assert "canary" not in repr(decoded)
    ai = typed_value("ai", {"provider": "openai", "api_key": "sk-x"})
    assert ai == b'{"api_key": "sk-x", "provider": "openai", "type": "ai"}'


@pytest.mark.parametrize(
    ("kind", "fields", "words"),
    [
        pytest.param(
            "storage",
            {"provider": "s3", "secret_access_key": "NEW"},
            (
                "needs --bucket, --region, --access-key-id, --secret-access-key",
                "missing: --bucket, --region, --access-key-id",
            ),
            id="partial-s3",
        ),
        pytest.param(
            "storage",
            {**S3, "api_key": "foo"},
            ("--api-key is not for a storage secret",),
            id="api-key-on-storage",
        ),
        pytest.param(
            "storage",
            {"provider": "dropbox"},
            ("--provider 'dropbox'", "s3|gcs|azure"),
            id="unknown-storage-provider",
        ),
        pytest.param("storage", {"provider": "s3"}, ("missing: --bucket",), id="provider-alone"),
        pytest.param(
            "storage",
            {"bucket": "b"},
            ("needs --provider", "missing: --provider"),
            id="no-provider",
        ),
        pytest.param("ai", {"provider": "nope"}, ("not an ai provider",), id="unknown-ai"),
        pytest.param("ai", {"provider": "openai"}, ("missing: --api-key",), id="ai-no-key"),
        pytest.param(
            "ai",
            {"provider": "azure", "api_key": "k"},
            ("missing: --base-url",),
            id="azure-ai-needs-base-url",
        ),
        pytest.param(
            "storage", {**S3, "endpoint": "minio:9000"}, ("--endpoint", "URL"), id="bad-url"
        ),
        pytest.param(
            "storage", {**S3, "bucket": "two\\nlines"}, ("--bucket", "one line"), id="newline"
        ),
        pytest.param("generic", {"provider": "s3"}, ("storage and ai",), id="typed-generic"),
    ],
)
def test_typed_values_are_refused_naming_the_flags(
    kind: str, fields: dict[str, str], words: tuple[str, ...]
) -> None:
    fields = {k: v.replace("\\n", "\n") for k, v in fields.items()}
    with pytest.raises(InvalidSecretValue) as caught:
        typed_value(kind, fields)
    for word in words:
        assert word in caught.value.message
    assert "canary" not in caught.value.message and "NEW" not in caught.value.message


@pytest.mark.parametrize(
    ("kind", "value", "ok"),
    [
        ("storage", json.dumps({"type": "storage", **S3}).encode(), True),
        ("storage", b'{"secret_access_key": "NEW", "type": "storage"}', False),
        ("storage", json.dumps({"type": "ai", **S3}).encode(), False),
        ("storage", json.dumps({"type": "storage", **S3, "extra": 1}).encode(), False),
        ("storage", json.dumps({"type": "storage", **S3, "bucket": 5}).encode(), False),
        ("storage", b"[]", False),
        ("storage", b"\xff not json", False),
        ("ai", b'{"type": "ai", "provider": "anthropic", "api_key": "k"}', True),
        ("ai", b'{"type": "ai", "provider": "anthropic", "api_key": ""}', False),
        ("generic", b"\x00\xff any bytes", True),
        ("integration", b"whsec", True),
        ("generic", b"", False),
        ("apikey", b"fgs_" + b"A" * 43, True),
        ("apikey", b"fgs_" + b"A" * 42, False),
        ("password", b"x", False),
    ],
)
def test_check_value(kind: str, value: bytes, ok: bool) -> None:
    if ok:
        check_value(kind, value)
        return
    with pytest.raises(InvalidSecretValue) as caught:
        check_value(kind, value)
    assert "NEW" not in caught.value.message


def test_every_kind_has_a_value_type() -> None:
    assert set(VALUE_TYPES) == set(KINDS)
    azure = {"type": "storage", "provider": "azure", "bucket": "c", "access_key_id": "acct"}
    decoded = msgspec.json.decode(
        json.dumps({**azure, "secret_access_key": "k"}), type=VALUE_TYPES["storage"]
    )
    assert isinstance(decoded, AzureStorage)
