"""The node's own copy of the secrets bucket (from its KV watch).

Every envelope is checked on arrival: it must decode, sit under the key its metadata and
its JWE's bound context name, carry a well-formed JWE whose wrapped key fits the
epoch's public key, and be proven (:mod:`flashgate.bridge.provenance`). A responder looks
envelopes up here (never trusting a ciphertext sent to it); recent revisions are kept so
that a peer slightly ahead or behind still finds the one it asks about.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from flashgate.crypto import jwe
from flashgate.crypto.publickey import FleetPublicKey
from flashgate.errors import FlashgateError, StaleEpoch
from flashgate.events.envelope import ENVELOPE_CODEC, SecretEnvelope, check_envelope_location

#: Revisions kept per key beyond the current one.
KEEP_REVISIONS = 4


@dataclass(frozen=True, eq=False)
class Entry:
    key: str
    revision: int
    envelope: SecretEnvelope
    parsed: jwe.ParsedJWE
    ciphertext: int  # c: the wrapped content key as an integer
    digest: bytes  # SHA-256 of the encrypted-key bytes

    @property
    def version(self) -> int:
        return self.envelope.version

    @property
    def epoch(self) -> int:
        return self.envelope.epoch

    def __repr__(self) -> str:
        return f"Entry({self.key} rev {self.revision} v{self.version} e{self.epoch})"


def digest_of(parsed: jwe.ParsedJWE) -> bytes:
    return hashlib.sha256(parsed.encrypted_key).digest()


Prove = Callable[[SecretEnvelope], None]
"""Raises :class:`~flashgate.errors.Unproven` for an envelope without valid provenance."""


def make_entry(
    fleet: str,
    key: str,
    revision: int,
    raw: bytes,
    keys: dict[int, FleetPublicKey],
    *,
    prove: Prove,
) -> Entry:
    """Decode and check one bucket value. Raises the typed error that makes it unusable."""
    envelope = ENVELOPE_CODEC.decode(raw)
    parsed = check_envelope_location(envelope, fleet, key)
    prove(envelope)
    public = keys.get(envelope.epoch)
    if public is None:
        raise StaleEpoch(f"{key}: envelope for epoch {envelope.epoch}, which this node lacks")
    c = parsed.wrapped_key(public)
    return Entry(
        key=key,
        revision=revision,
        envelope=envelope,
        parsed=parsed,
        ciphertext=c,
        digest=digest_of(parsed),
    )


class EnvelopeStore:
    def __init__(self, fleet: str, keys: dict[int, FleetPublicKey], prove: Prove) -> None:
        self.fleet = fleet
        self.keys = keys
        self.prove = prove
        self.current: dict[str, Entry] = {}
        self._recent: OrderedDict[tuple[str, int], Entry] = OrderedDict()
        self.rejected: dict[str, str] = {}  # key -> reason code of an unusable value

    def ingest(self, key: str, revision: int, raw: bytes) -> Entry | None:
        """Take a bucket value. Returns the entry, or None (reason kept in ``rejected``)."""
        try:
            entry = make_entry(self.fleet, key, revision, raw, self.keys, prove=self.prove)
        except FlashgateError as exc:
            self.rejected[key] = exc.code
            return None
        self.rejected.pop(key, None)
        self.current[key] = entry
        self._remember(entry)
        return entry

    def remove(self, key: str) -> Entry | None:
        self.rejected.pop(key, None)
        return self.current.pop(key, None)

    def _remember(self, entry: Entry) -> None:
        self._recent[(entry.key, entry.revision)] = entry
        self._recent.move_to_end((entry.key, entry.revision))
        limit = max(1024, len(self.current) * (KEEP_REVISIONS + 1))
        while len(self._recent) > limit:
            self._recent.popitem(last=False)

    def lookup(self, key: str, revision: int) -> Entry | None:
        entry = self.current.get(key)
        if entry is not None and entry.revision == revision:
            return entry
        return self._recent.get((key, revision))

    def add_fetched(self, entry: Entry) -> None:
        """An older or newer revision fetched for a peer: remember it, not as current."""
        self._remember(entry)
