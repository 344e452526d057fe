"""The object checksums S3 clients send (``x-amz-checksum-<algorithm>``, as a header or an
aws-chunked trailer): CRC32, CRC32C, CRC64NVME, SHA-1 and SHA-256, base64 of the big-endian
digest. CRC32 and the SHA family from the standard library; CRC32C and CRC64NVME from
``awscrt``, as botocore computes them."""

from __future__ import annotations

import base64
import hashlib
import zlib
from typing import Protocol

from awscrt import checksums as crt

from flashgate.errors import S3Refused

PREFIX = "x-amz-checksum-"


class Digest(Protocol):
    def update(self, data: bytes) -> None: ...

    def digest(self) -> bytes: ...


class _Crc:
    def __init__(self, name: str) -> None:
        self._name = name
        self._value = 0

    def update(self, data: bytes) -> None:
        if self._name == "crc32":
            self._value = zlib.crc32(data, self._value)
        elif self._name == "crc32c":
            self._value = crt.crc32c(data, self._value)
        else:
            self._value = crt.crc64nvme(data, self._value)

    def digest(self) -> bytes:
        return self._value.to_bytes(8 if self._name == "crc64nvme" else 4, "big")


ALGORITHMS = ("crc32", "crc32c", "crc64nvme", "sha1", "sha256")


def new(algorithm: str) -> Digest:
    """A running checksum of ``algorithm`` (one of :data:`ALGORITHMS`)."""
    if algorithm in ("sha1", "sha256"):
        return hashlib.new(algorithm)
    if algorithm in ALGORITHMS:
        return _Crc(algorithm)
    raise S3Refused("InvalidRequest", 400, f"unsupported checksum algorithm {algorithm!r:.40}")


def algorithm_of(header: str) -> str:
    """``crc32`` of ``x-amz-checksum-crc32`` (a refusal for anything else)."""
    name = header.lower()
    algorithm = name[len(PREFIX) :] if name.startswith(PREFIX) else ""
    if algorithm not in ALGORITHMS:
        raise S3Refused("InvalidRequest", 400, f"unsupported checksum {name!r:.60}")
    return algorithm


def encode(digest: bytes) -> str:
    return base64.b64encode(digest).decode()
