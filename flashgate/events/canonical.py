"""Canonical bytes for signatures, re-derivable by any implementation.

    signed_bytes = b"flashgate/v1/" + DOMAIN + b"\\n" + JSON

where JSON is the document with its ``signature`` member removed, serialized with object
keys sorted by code point, no insignificant whitespace, UTF-8, integers in decimal. Fields
that are strings in the document (keys in JSON documents are unpadded base64url text) stay
as they are; raw ``bytes`` fields of msgpack messages become standard base64 with padding
(RFC 4648 §4). A tagged union member keeps its ``type`` tag, so the type is signed too.
For documents whose strings are ASCII (all signed documents here) this coincides with
RFC 8785 JCS. The domain keeps a signature over one document type from being valid for
another.

A field added to a signed type after it shipped may be listed in the type's
``unsigned_at_default`` class variable: at its default value it is left out of the signed
bytes, so a message that does not use it signs and verifies exactly as before the field
existed (nodes of the previous version keep verifying each other's requests during an
upgrade).
"""

from __future__ import annotations

from typing import Any

import msgspec

SIGNATURE_FIELD = "signature"


def canonical_json(document: dict[str, Any]) -> bytes:
    return msgspec.json.encode(document, order="sorted")


def signed_bytes(domain: str, struct: msgspec.Struct) -> bytes:
    document = msgspec.to_builtins(struct)
    document.pop(SIGNATURE_FIELD, None)
    defaults: dict[str, Any] = getattr(type(struct), "unsigned_at_default", {})
    for name, default in defaults.items():
        if document.get(name, default) == default:
            document.pop(name, None)
    return b"flashgate/v1/" + domain.encode("ascii") + b"\n" + canonical_json(document)
