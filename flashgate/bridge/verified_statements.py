"""The admin statements this node has verified, remembered across restarts.

Checking an envelope on arrival (:mod:`flashgate.bridge.provenance`) is dominated by one
Ed25519 verification of the admin's :class:`~flashgate.events.envelope.EnvelopeStatement`
(about 100 µs with OpenSSL here; a node starting with 100k secrets does 100k of them).
That verification is a pure function of (admin public key, signed bytes, signature), so
its answer "valid" can be remembered:

- **Verifying.** :class:`StatementVerifier` verifies with libsodium (PyNaCl, about half
  OpenSSL's time here). libsodium accepts a subset of what OpenSSL accepts (both check
  ``[S]B = R + [k]A`` without the cofactor on the encodings as given; libsodium also
  refuses small-order and non-canonical points), so no signature is accepted that was
  refused before.
- **Remembering.** A valid verification is kept as its *fingerprint*, SHA-256 over a
  domain tag, the admin's raw public key, the signature and the signed bytes. A statement
  whose fingerprint is kept is not verified again; nothing else is skipped (but see proven
  envelope values, below): the statement
  is still checked against the envelope (context, API key, JWE digests), and the re-wrap
  attestation, the roster, the epoch's members and the tombstones are checked live, as
  before. Refusals are never kept. Another admin key, another signature or other bytes
  give another fingerprint (a miss).
- **The file** (``<bundle>.verified``, beside the bundle like ``<bundle>.tombstones``):
  ``MAGIC``, the count, the fingerprints, and an HMAC-SHA256 over all of it under a key
  derived (HKDF-SHA256) from this node's Ed25519 signing key, which exists only inside its
  sealed bundle and this process. Whoever can write the node's disk (but not read its
  unsealed bundle) cannot add a fingerprint: a file whose MAC, magic or length is wrong
  is ignored as a whole (logged) and every statement is verified again. It holds no
  secret (fingerprints of public, admin-signed statements). It is bounded
  (:data:`MAX_ENTRIES`); a save keeps the fingerprints used or added since this process
  started, so statements of deleted or replaced envelopes drop out.
- **Proven envelope values.** The same file also keeps, with another domain tag, the
  fingerprint of each envelope *value* found proven: SHA-256 over the tag
  (:data:`~flashgate.bridge.value_proof.VALUE_TAG`, which carries ``CHECKS_VERSION``),
  the admin's raw public key, the fleet, the bucket key and the
  value's bytes, kept once the value is admitted (:meth:`StatementVerifier.proven_value`,
  :meth:`StatementVerifier.remember_value`); the tag also names the flashgate and msgspec
  releases.
  Everything that fingerprint stands for is a pure function of those inputs: the JWE's
  profile (its header), its bound context equal to the envelope's metadata, the admin's
  statement about this very envelope, and the statement's signature. A restarting node
  reads the same values again: for a value whose fingerprint is kept it splits the JWE
  without checking its header again and skips the statement
  (:func:`flashgate.events.envelope.check_envelope_location`,
  :func:`flashgate.bridge.provenance.provenance_signatures`): about a third of checking an
  envelope. Everything that depends on this node's state is still checked every time: the
  envelope's location, its epoch and the wrapped key's fit to that epoch's key, the
  tombstones, a re-wrap attestation (its binding to this envelope, its node active in the
  roster and a member of the epoch; its signature unless remembered, below).
  :data:`~flashgate.bridge.value_proof.CHECKS_VERSION` is
  raised whenever what a value must pass changes, so a value proven under older rules is
  checked in full again. A value's fingerprint is kept instead of its statement's, not
  beside it (memory: 12 MB per 100k), so a re-wrapped value (a fleet key rotation: a new
  value) is proven in full once. A value the signature worker proved at this start
  (:func:`~flashgate.bridge.value_proof.value_proven`) is taken as one proven before.
- **Re-wrap attestations.** After a fleet key rotation every value also carries a node's
  signed attestation, which is not part of the value's proof (its node must be active
  in the roster). Its binding to the envelope (epoch, JWE digest, the statement's
  signature) and its node are checked every time, before the memo is asked; its
  verification is remembered as a statement's is, with the node's
  public key in the fingerprint (the same tag: the signed bytes name their domain), beside
  the value's: one fingerprint more per re-wrapped value, and a restart verifies no
  signature at all (it verified one per secret before). A node re-keyed since has its
  attestations verified again.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import structlog
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from flashgate.bridge.signatures import Signature
from flashgate.bridge.value_proof import VALUE_TAG
from flashgate.crypto.encoding import b64url_decode
from flashgate.errors import MalformedEnvelope, SignatureInvalid
from flashgate.events.envelope import EnvelopeStatement
from flashgate.events.signing import domain_of, signing_bytes
from flashgate.fleet.files import write_atomic

log = structlog.get_logger("flashgate.bridge")

MAGIC = b"flashgate verified statements 1\n"
#: At most this many fingerprints in the file (32 bytes each: 32 MiB).
MAX_ENTRIES = 1 << 20
FINGERPRINT_BYTES = 32
_COUNT_BYTES = 4
_MAC_BYTES = 32
_FINGERPRINT_TAG = b"flashgate verified admin statement v1\x00"
_HKDF_INFO = b"flashgate verified-statements file mac v1"


def verified_path(bundle_path: Path) -> Path:
    """Where a node keeps its verified statements: beside its bundle."""
    return bundle_path.with_name(bundle_path.name + ".verified")


def file_mac_key(signing_seed: bytes, fleet: str, node_id: str) -> bytes:
    """The file's HMAC key: HKDF-SHA256 of the node's Ed25519 signing key (raw 32 bytes),
    bound to its fleet and node id (never the signing key itself)."""
    info = _HKDF_INFO + b"\x00" + fleet.encode() + b"\x00" + node_id.encode()
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(signing_seed)


class VerifiedStatements:
    """Fingerprints of verified admin statements, in memory and in one authenticated file."""

    def __init__(self, path: Path | None, mac_key: bytes) -> None:
        self.path = path
        self._mac_key = mac_key
        self._known: set[bytes] = set()  # read from the file, not used yet in this run
        self._used: set[bytes] = set()  # used or added in this run (what a save keeps)
        self._added = 0  # added since the last save
        self.loaded = 0
        self.ignored_file = False

    def __len__(self) -> int:
        return len(self._known) + len(self._used)

    def __repr__(self) -> str:
        return f"VerifiedStatements(<{len(self)} kept>)"

    def take(self, fingerprint: bytes) -> bool:
        """Whether ``fingerprint`` is known verified (then it is kept at the next save)."""
        if fingerprint in self._used:
            return True
        if fingerprint in self._known:
            self._known.discard(fingerprint)
            self._used.add(fingerprint)
            return True
        return False

    def knows(self, fingerprint: bytes) -> bool:
        """Whether ``fingerprint`` is known verified (nothing is marked used)."""
        return fingerprint in self._used or fingerprint in self._known

    def add(self, fingerprint: bytes) -> None:
        if fingerprint not in self._used and len(self._used) < MAX_ENTRIES:
            self._used.add(fingerprint)
            self._added += 1

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self._mac_key, body, hashlib.sha256).digest()

    def load(self) -> int:
        """Read the file (blocking I/O). A file that does not authenticate, or is too large
        or malformed, is ignored as a whole and logged. Returns how many were read."""
        if self.path is None:
            return 0
        limit = len(MAGIC) + _COUNT_BYTES + MAX_ENTRIES * FINGERPRINT_BYTES + _MAC_BYTES
        try:
            with self.path.open("rb") as file:
                data = file.read(limit + 1)
        except FileNotFoundError:
            return 0
        except OSError as exc:
            log.error("verified statements not read", path=str(self.path), error=str(exc))
            return 0
        fingerprints = self._parse(data, limit)
        if fingerprints is None:
            self.ignored_file = True
            log.error(
                "verified statements file does not authenticate; ignored (every statement "
                "is verified again)",
                path=str(self.path),
            )
            return 0
        self._known.update(fingerprints)
        self._known.difference_update(self._used)
        self.loaded = len(fingerprints)
        return self.loaded

    def _parse(self, data: bytes, limit: int) -> list[bytes] | None:
        head = len(MAGIC) + _COUNT_BYTES
        if len(data) > limit or len(data) < head + _MAC_BYTES or not data.startswith(MAGIC):
            return None
        count = int.from_bytes(data[len(MAGIC) : head], "big")
        if count > MAX_ENTRIES or len(data) != head + count * FINGERPRINT_BYTES + _MAC_BYTES:
            return None
        body, mac = data[:-_MAC_BYTES], data[-_MAC_BYTES:]
        if not hmac.compare_digest(self._mac(body), mac):
            return None
        return [body[i : i + FINGERPRINT_BYTES] for i in range(head, len(body), FINGERPRINT_BYTES)]

    def snapshot(self) -> bytes | None:
        """The file's contents now, or None when there is nothing new to keep (call on the
        event loop; write the result with :meth:`write`, in a thread)."""
        if self.path is None or (self._added == 0 and not self._known):
            return None
        kept = sorted(self._used)[:MAX_ENTRIES]
        self._added = 0
        self._known.clear()  # not used in this run: dropped from the file
        body = MAGIC + len(kept).to_bytes(_COUNT_BYTES, "big") + b"".join(kept)
        return body + self._mac(body)

    def write(self, data: bytes) -> None:
        """Write a :meth:`snapshot` atomically (blocking I/O: run it in a thread)."""
        if self.path is None:
            return
        try:
            write_atomic(self.path, data, 0o600)
        except OSError as exc:
            log.error("verified statements not kept", path=str(self.path), error=str(exc))


class StatementVerifier:
    """Verifies admin statements under the pinned admin key (and re-wrap attestations
    under their node's key), remembering valid ones in ``cache`` (None: verify every
    time). ``verified`` counts Ed25519 verifications done, ``hits`` the ones the cache
    saved."""

    def __init__(self, admin: Ed25519PublicKey, cache: VerifiedStatements | None = None) -> None:
        self._admin_raw = admin.public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.cache = cache
        self.verified = 0
        self.hits = 0
        self.values_known = 0  # envelope values found proven before (module docs)

    def __call__(self, statement: EnvelopeStatement) -> None:
        """Raise :class:`SignatureInvalid` unless the statement's signature verifies."""
        raw = statement.signature
        refusal = f"{domain_of(statement)} signature does not verify"
        try:
            signature = raw if isinstance(raw, bytes) else b64url_decode(raw)
        except (MalformedEnvelope, ValueError) as exc:
            raise SignatureInvalid(refusal) from exc
        job = self.pending(signature, signing_bytes(statement), refusal)
        if job is None:
            return
        if not job.verify():
            raise SignatureInvalid(refusal)
        if job.remember is not None:
            job.remember()

    def pending(
        self, signature: bytes, signed: bytes, refusal: str, *, signer: bytes | None = None
    ) -> Signature | None:
        """The verification a statement (its raw signature and signed bytes) still needs,
        or None when it is remembered as verified. The returned signature, once verified,
        is remembered by its ``remember``. ``signer``: the raw public key of a node whose
        re-wrap attestation this is (None: the admin's statement)."""
        public = self._admin_raw if signer is None else signer
        fingerprint = b""
        if self.cache is not None:
            fingerprint = hashlib.sha256(_FINGERPRINT_TAG + public + signature + signed).digest()
            if len(signature) == 64 and self.cache.take(fingerprint):
                self.hits += 1
                return None

        self.verified += 1  # the returned signature is verified next

        def remember() -> None:
            if self.cache is not None:
                self.cache.add(fingerprint)

        return Signature(public, signature, signed, refusal, remember, signer is None)

    @property
    def admin_raw(self) -> bytes:
        """The pinned admin public key, raw (what a proven value's fingerprint names)."""
        return self._admin_raw

    def proven_value(self, fleet: str, key: str, raw: bytes) -> tuple[bytes, bool] | None:
        """The fingerprint of an envelope value (``raw``, found under ``key`` of ``fleet``)
        and whether it is known proven; None without a cache. Nothing is marked: once the
        value is admitted, :meth:`remember_value` keeps its fingerprint (at the next save)."""
        if self.cache is None:
            return None
        fingerprint = hashlib.sha256(
            b"\x00".join((VALUE_TAG + self._admin_raw, fleet.encode(), key.encode(), raw))
        ).digest()
        return fingerprint, self.cache.knows(fingerprint)

    def remember_value(self, fingerprint: bytes) -> None:
        """An envelope value was admitted: its fingerprint is kept (counted in
        ``values_known`` when it was known already)."""
        if self.cache is None:
            return
        if self.cache.take(fingerprint):
            self.values_known += 1
        else:
            self.cache.add(fingerprint)
