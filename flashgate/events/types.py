"""Constrained field types shared by the wire Structs (validated on decode, in the schemas)."""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta

from flashgate.crypto.context import MAX_VERSION
from flashgate.names import NAME_PATTERN

Name = Annotated[str, Meta(pattern=NAME_PATTERN, description="[a-z0-9_-]{1,64}")]
SecretKey = Annotated[
    str,
    Meta(
        pattern=r"^[a-z0-9_-]{1,64}\.[a-z0-9_-]{1,64}$",
        description="secrets-bucket key: <repo>.<name>",
    ),
]
Epoch = Annotated[int, Meta(ge=1, le=2**31 - 1)]
Version = Annotated[int, Meta(ge=1, le=MAX_VERSION)]
Serial = Annotated[int, Meta(ge=1, le=2**53 - 1)]
Revision = Annotated[int, Meta(ge=1, le=2**63 - 1)]
Count = Annotated[int, Meta(ge=0, le=2**53 - 1)]
UnixMillis = Annotated[int, Meta(ge=0, le=2**53 - 1, description="milliseconds since the epoch")]
CommandId = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{16,64}$")]
Actor = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.@:+-]{1,128}$")]
Label = Annotated[str, Meta(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")]
Detail = Annotated[str, Meta(max_length=512)]
ReasonCode = Annotated[str, Meta(pattern=r"^[a-z0-9_]{1,64}$")]
B64Url = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]*$", max_length=16384)]
Ed25519Key = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{43}$", description="32 bytes")]
Ed25519Sig = Annotated[str, Meta(pattern=r"^([A-Za-z0-9_-]{86})?$", description="64 bytes")]
Sha256 = Annotated[bytes, Meta(min_length=32, max_length=32)]
X25519Raw = Annotated[bytes, Meta(min_length=32, max_length=32)]
SignatureRaw = Annotated[bytes, Meta(min_length=0, max_length=64)]
RequestId = Annotated[bytes, Meta(min_length=16, max_length=16)]

SecretKind = Literal["storage", "ai", "integration", "generic", "apikey"]
#: The kinds a secret write may give (``apikey`` is reserved for API keys' envelopes).
WritableSecretKind = Literal["storage", "ai", "integration", "generic"]
#: The access levels of a storage API key.
StorageAccess = Literal["read", "write", "admin"]
NodeStatusValue = Literal["active", "revoked"]
ApiKeyScope = Literal["storage", "ai"]
