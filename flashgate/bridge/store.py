"""The node's own copy of the secrets bucket (from its KV watch).

Every envelope is checked on arrival: it must decode, sit under the key its metadata and
its JWE's bound context name, carry a well-formed JWE whose wrapped key fits the
epoch's public key, and be proven (:mod:`flashgate.bridge.provenance`). A responder looks
envelopes up here (never trusting a ciphertext sent to it). Per key it keeps the current
revision and the one that revision replaced (a peer still loading it, a request in
flight), nothing older: a superseded revision two steps back, a deleted secret (both
forgotten on delete) or one whose epoch retired is never served, although the bucket's
history may still hold it (issue 14 §4).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from flashgate.bridge.signatures import Signature, settle
from flashgate.crypto import jwe
from flashgate.crypto.publickey import FleetPublicKey
from flashgate.errors import EnvelopeReleased, FlashgateError, StaleEpoch, Tombstoned
from flashgate.events.envelope import ENVELOPE_CODEC, SecretEnvelope, check_envelope_location


class Entry:
    """A checked envelope revision.

    Until it is loaded it keeps the decoded envelope and its parsed JWE; once loaded
    (:meth:`release`) only what a running node reads of it again stays: its version,
    epoch, the wrapped key (for partials) and its digest, the size of the value, and what
    the tombstone and revocation checks read of its proof (the statement's time and API
    key id, the re-wrapping node). A node holding 100k secrets kept every decoded envelope
    otherwise (about 2 KB each). Whoever needs the whole envelope again (a fleet key
    rotation's re-wrap) reads it from the bucket (:meth:`SecretsWatch.fetch_latest`)."""

    __slots__ = (
        "_envelope",
        "_parsed",
        "api_key_id",
        "digest",
        "encrypted_key",
        "epoch",
        "issued_at",
        "key",
        "revision",
        "rewrapped_by",
        "size",
        "version",
    )

    #: Where responders look it up (the secrets bucket; ring terms are the ring's).
    source: Literal["secrets"] = "secrets"

    def __init__(
        self,
        key: str,
        revision: int,
        envelope: SecretEnvelope,
        parsed: jwe.ParsedJWE,
        size: int,
    ) -> None:
        self.key = key
        self.revision = revision
        self.version = envelope.version
        self.epoch = envelope.epoch
        self.encrypted_key = parsed.encrypted_key
        self.digest = hashlib.sha256(parsed.encrypted_key).digest()
        self.size = size
        provenance = envelope.provenance
        statement = provenance.statement if provenance is not None else None
        self.issued_at = statement.issued_at if statement is not None else None
        self.api_key_id = (
            statement.api_key.key_id if statement is not None and statement.api_key else None
        )
        rewrap = provenance.rewrap if provenance is not None else None
        self.rewrapped_by = rewrap.node_id if rewrap is not None else None
        self._envelope: SecretEnvelope | None = envelope
        self._parsed: jwe.ParsedJWE | None = parsed

    @property
    def retained(self) -> bool:
        """Whether the whole envelope is still here (not loaded yet)."""
        return self._envelope is not None

    @property
    def envelope(self) -> SecretEnvelope:
        """The decoded envelope (until loaded: :meth:`release`)."""
        if self._envelope is None:
            raise EnvelopeReleased(f"{self.key}: the envelope was let go once loaded")
        return self._envelope

    @property
    def parsed(self) -> jwe.ParsedJWE:
        """The envelope's JWE, parsed and checked on arrival (until loaded)."""
        if self._parsed is None:
            raise EnvelopeReleased(f"{self.key}: the envelope was let go once loaded")
        return self._parsed

    @property
    def ciphertext(self) -> int:
        """c: the wrapped content key as an integer (checked against its epoch's key on
        arrival)."""
        return int.from_bytes(self.encrypted_key, "big")

    def release(self) -> None:
        """Loaded: let the decoded envelope and parsed JWE go."""
        self._envelope = None
        self._parsed = None

    def __repr__(self) -> str:
        return f"Entry({self.key} rev {self.revision} v{self.version} e{self.epoch})"


def digest_of(parsed: jwe.ParsedJWE) -> bytes:
    return hashlib.sha256(parsed.encrypted_key).digest()


Prove = Callable[[SecretEnvelope], Sequence[Signature] | None]
"""Checks who wrote an envelope and that it is still alive, all but its Ed25519 signatures,
which it returns (:mod:`flashgate.bridge.signatures`); raises the typed error (for example
:class:`~flashgate.errors.Unproven`) for anything else wrong."""


class ProvenValues(Protocol):
    """Envelope values found proven before (:mod:`flashgate.bridge.verified_statements`)."""

    def proven_value(self, fleet: str, key: str, raw: bytes) -> tuple[bytes, bool] | None: ...
    def remember_value(self, fingerprint: bytes) -> None: ...


def check_entry(
    fleet: str,
    key: str,
    revision: int,
    raw: bytes,
    keys: dict[int, FleetPublicKey],
    *,
    prove: Prove,
    proven: bool = False,
) -> tuple[Entry, Sequence[Signature]]:
    """Decode and check one bucket value, all but its signatures (returned with the entry,
    which is usable only once they verify). Raises the typed error that makes it unusable.
    ``proven``: this very value was proven before; ``prove`` then checks only what rests
    on this node's state, and the value is decoded without its constraints checked again
    (:meth:`~flashgate.events.codec.Codec.decode_accepted`: it passed them when proven)."""
    envelope = ENVELOPE_CODEC.decode_accepted(raw) if proven else ENVELOPE_CODEC.decode(raw)
    parsed = check_envelope_location(envelope, fleet, key, proven=proven)
    signatures = prove(envelope) or ()
    public = keys.get(envelope.epoch)
    if public is None:
        raise StaleEpoch(f"{key}: envelope for epoch {envelope.epoch}, which this node lacks")
    parsed.wrapped_key(public)  # fits the epoch's key (raises otherwise)
    return Entry(key, revision, envelope, parsed, len(raw)), signatures


def make_entry(
    fleet: str,
    key: str,
    revision: int,
    raw: bytes,
    keys: dict[int, FleetPublicKey],
    *,
    prove: Prove,
) -> Entry:
    """Decode and check one bucket value, its signatures too (verified here). Raises the
    typed error that makes it unusable."""
    entry, signatures = check_entry(fleet, key, revision, raw, keys, prove=prove)
    settle(signatures, [s.verify() for s in signatures])
    return entry


@dataclass(slots=True)
class Checked:
    """A bucket value checked by :meth:`EnvelopeStore.check`: its entry and the signatures
    still to verify, or the error that makes it unusable."""

    key: str
    revision: int
    entry: Entry | None
    signatures: Sequence[Signature] = ()
    error: FlashgateError | None = None
    generation: int = 0  # the store's, when checked
    #: The value's fingerprint (kept once it is admitted), and whether the value was
    #: proven before (then only what rests on this node's state was checked).
    fingerprint: bytes | None = None
    proven: bool = False
    #: The value itself, kept only when refused for an epoch the node lacked: the epoch
    #: may arrive before it is admitted, and it is then checked again.
    raw: bytes | None = None


class EnvelopeStore:
    def __init__(
        self,
        fleet: str,
        keys: dict[int, FleetPublicKey],
        prove: Prove,
        *,
        prove_rest: Prove | None = None,
        memo: ProvenValues | None = None,
    ) -> None:
        self.fleet = fleet
        self.keys = keys
        self.prove = prove
        #: For a value found proven before (``memo``): the checks that rest on this
        #: node's state (None: every value is checked in full).
        self.prove_rest = prove_rest
        self.memo = memo
        self.current: dict[str, Entry] = {}
        self._replaced: dict[str, Entry] = {}  # key -> the revision the current one replaced
        # key -> the latest revision taken, usable or not, for keys with no current entry
        # (a current entry is the latest taken: 100k of these ints were kept twice).
        self._seen: dict[str, int] = {}
        self.rejected: dict[str, str] = {}  # key -> reason code of an unusable value
        self._generation = 0  # counts drop_where calls: what a pending admit re-checks

    def ingest(self, key: str, revision: int, raw: bytes) -> Entry | None:
        """Take a bucket value (its signatures verified here). Returns the entry, or None
        (reason kept in ``rejected``)."""
        checked = self.check(key, revision, raw)
        return self.admit(checked, [s.verify() for s in checked.signatures])

    def fingerprint(self, key: str, raw: bytes) -> tuple[bytes, bool] | None:
        """The value's fingerprint and whether it is known proven (at an earlier start);
        None when this store checks every value in full (no memo)."""
        if self.memo is None or self.prove_rest is None:
            return None
        return self.memo.proven_value(self.fleet, key, raw)

    def check(
        self, key: str, revision: int, raw: bytes, *, found: tuple[bytes, bool] | None = None
    ) -> Checked:
        """Check a bucket value but for its signatures, changing nothing here (then
        :meth:`admit` it with their verification, in the order the values arrived).
        ``found``: the value's :meth:`fingerprint`, if the caller has it, whose second item
        the caller may have set: the value's stateless part was just proven elsewhere (the
        signature worker, :func:`~flashgate.bridge.value_proof.value_proven`)."""
        if found is None:
            found = self.fingerprint(key, raw)
        proven = found is not None and found[1] and self.prove_rest is not None
        try:
            entry, signatures = check_entry(
                self.fleet,
                key,
                revision,
                raw,
                self.keys,
                prove=self.prove_rest if proven and self.prove_rest else self.prove,
                proven=proven,
            )
        except FlashgateError as exc:
            stale = raw if isinstance(exc, StaleEpoch) else None
            return Checked(key, revision, None, error=exc, generation=self._generation, raw=stale)
        return Checked(
            key,
            revision,
            entry,
            signatures,
            generation=self._generation,
            fingerprint=found[0] if found is not None else None,
            proven=proven,
        )

    def admit(self, checked: Checked, valid: Sequence[bool]) -> Entry | None:
        """Take a :meth:`check`-ed value, ``valid`` telling which of its signatures verified.
        Returns the entry, or None (reason kept in ``rejected``). A revision older than one
        already taken changes nothing (the current entry is returned); the same revision
        again (read again once its epoch arrived) replaces only itself. A value checked
        before a revocation or a tombstone dropped entries is checked against them again."""
        if checked.raw is not None:  # refused for an epoch that may have arrived since
            again = self.check(checked.key, checked.revision, checked.raw)
            if not isinstance(again.error, StaleEpoch):
                checked, valid = again, [s.verify() for s in again.signatures]
        key, revision, entry = checked.key, checked.revision, checked.entry
        seen = self.latest_taken(key)
        if revision < seen:
            return self.current.get(key)
        if revision > seen:
            self._supersede(key)
            self._seen[key] = revision
        try:
            if checked.error is not None:
                raise checked.error
            assert entry is not None
            # A value remembered as proven needs no statement remembered as well (one
            # fingerprint per value: a second per statement cost 12 MB at 100k secrets);
            # a re-wrap attestation is not part of the value's proof, and is remembered.
            settle(checked.signatures, valid, value_remembered=checked.fingerprint is not None)
            if entry.epoch not in self.keys:  # retired since it was checked
                raise StaleEpoch(f"{key}: envelope for epoch {entry.epoch}, which this node lacks")
            if checked.generation != self._generation:  # its signatures verified; the rest again
                reprove = self.prove_rest if checked.proven and self.prove_rest else self.prove
                reprove(entry.envelope)
        except FlashgateError as exc:
            self.rejected[key] = exc.code
            return None
        self.rejected.pop(key, None)
        self.current[key] = entry
        self._seen.pop(key, None)  # the current entry's revision is the latest taken
        if checked.fingerprint is not None and self.memo is not None:
            self.memo.remember_value(checked.fingerprint)
        return entry

    def latest_taken(self, key: str) -> int:
        """The latest revision of ``key`` taken, usable or not (0: none)."""
        entry = self.current.get(key)
        return entry.revision if entry is not None else self._seen.get(key, 0)

    def _supersede(self, key: str) -> None:
        """A newer revision of ``key`` arrived (usable or not): the current entry becomes
        the one in flight; with none (the revision before was unusable), nothing is."""
        previous = self.current.pop(key, None)
        if previous is not None:
            self._replaced[key] = previous
        else:
            self._replaced.pop(key, None)

    def remove(self, key: str) -> Entry | None:
        """Deleted upstream: no revision of ``key`` is served any more."""
        self.rejected.pop(key, None)
        self._replaced.pop(key, None)
        self._seen.pop(key, None)
        return self.current.pop(key, None)

    def drop_where(self, dead: Callable[[Entry], bool], reason: str = Tombstoned.code) -> list[str]:
        """Forget every revision (current or in flight) that is ``dead``; the keys whose
        current revision went are returned, marked rejected with ``reason``."""
        self._generation += 1
        for key, entry in list(self._replaced.items()):
            if dead(entry):
                del self._replaced[key]
        dropped = []
        for key, entry in list(self.current.items()):
            if dead(entry):
                del self.current[key]
                self._seen[key] = entry.revision  # an older revision stays refused
                self.rejected[key] = reason
                dropped.append(key)
        return dropped

    def lookup(self, key: str, revision: int) -> Entry | None:
        """The current revision of ``key`` or the one it replaced; None for any other."""
        entry = self.current.get(key)
        if entry is None or entry.revision != revision:
            entry = self._replaced.get(key)
        return entry if entry is not None and entry.revision == revision else None
