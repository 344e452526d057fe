"""The ring terms a node knows (DESIGN §6): checked on arrival, re-checked on use.

A value of the ring bucket becomes a :class:`Term` only when it decodes, sits under the
key its term id names, is for this fleet and for an epoch whose public key this node
holds, its JWE is a ring term's JWE (:func:`flashgate.crypto.fastwrap.parse_term`) whose
SHA-256 is the signed one, it was made no later than now (plus the clock skew), and it is
**proven** (:meth:`TermStore.proven`): its maker is active in this node's roster and a
member of the term's epoch, and the maker's Ed25519 signature verifies. Proof is checked
again on every use (a share request for it, opening it, wrapping under it), because the
roster moves: a term made by a node revoked since is refused from then on.

A term past its hard expiry (:data:`HARD_EXPIRY_FACTOR` times its stated age limit) is
refused too, by requesters and responders: nobody gets a partial for it any more.

Responders serve partials for a term's JWE only through :meth:`TermStore.lookup`, so the
ring bucket is no decryption oracle: whoever can write it can only get a partial for a JWE
an active member signed as a term.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from flashgate.crypto import fastwrap, jwe
from flashgate.crypto.publickey import FleetPublicKey
from flashgate.errors import FlashgateError, SignatureInvalid, StaleEpoch, Unproven
from flashgate.events.envelope import jwe_sha256
from flashgate.events.fleet import Roster
from flashgate.events.ring import STORED_TERM_CODEC, RingTerm, term_key
from flashgate.events.signing import verify
from flashgate.fleet.identity_keys import load_ed25519_public

#: A term is refused altogether (no partial, no unwrap) this many times its age limit
#: after it was made; it stops being used for new wraps at its age limit.
HARD_EXPIRY_FACTOR = 2
#: How far in the future a term's ``created_at`` may be (clocks within seconds, NTP).
CLOCK_SKEW_MS = 30_000


@dataclass(frozen=True, eq=False)
class Term:
    """A checked ring term: what the collector asks partials for (like an envelope's
    :class:`~flashgate.bridge.store.Entry`: key, revision, digest, ciphertext)."""

    key: str  # term.<id>
    revision: int
    term: RingTerm
    parsed: jwe.ParsedJWE
    ciphertext: int
    digest: bytes
    source: Literal["ring"] = "ring"

    @property
    def term_id(self) -> str:
        return self.term.term_id

    @property
    def epoch(self) -> int:
        return self.term.epoch

    def expires_at(self) -> int:
        """Past this (ms), the term is refused altogether."""
        return self.term.created_at + HARD_EXPIRY_FACTOR * self.term.max_age_ms

    def __repr__(self) -> str:
        return f"Term({self.term_id} rev {self.revision} e{self.epoch} by {self.term.creator})"


@dataclass
class TermStore:
    fleet: str
    keys: dict[int, FleetPublicKey]  # the epochs this node holds (shared with the store)
    roster: Callable[[], Roster]
    members: Callable[[int], Mapping[str, int] | None]
    clock: Callable[[], int]
    current: dict[str, Term] = field(default_factory=dict)  # key -> term
    rejected: dict[str, str] = field(default_factory=dict)  # key -> reason code
    #: key -> created_at of a refused term that decodes (to purge it once it is old)
    refused_made_at: dict[str, int] = field(default_factory=dict)
    _keys_cache: dict[str, tuple[str, Ed25519PublicKey]] = field(default_factory=dict, repr=False)
    #: term key -> the maker's roster key its signature verified under (checked again
    #: only if the roster names another key for the maker).
    _verified: dict[str, str] = field(default_factory=dict, repr=False)

    def ingest(self, key: str, revision: int, raw: bytes) -> Term | None:
        """Take a ring bucket value; None when unusable (reason in ``rejected``)."""
        try:
            term = self.check(key, revision, raw)
        except FlashgateError as exc:
            self.rejected[key] = exc.code
            self.current.pop(key, None)
            self._verified.pop(key, None)
            try:
                self.refused_made_at[key] = STORED_TERM_CODEC.decode(raw).term.created_at
            except FlashgateError:
                self.refused_made_at[key] = 0
            return None
        self.rejected.pop(key, None)
        self.refused_made_at.pop(key, None)
        self.current[key] = term
        return term

    def check(self, key: str, revision: int, raw: bytes) -> Term:
        stored = STORED_TERM_CODEC.decode(raw)
        signed = stored.term
        if key != term_key(signed.term_id):
            raise Unproven(f"{key}: a term stored under another term's key")
        if signed.fleet != self.fleet:
            raise Unproven(f"{key}: a term of fleet {signed.fleet!r}")
        if signed.jwe_sha256 != jwe_sha256(stored.jwe):
            raise Unproven(f"{key}: the term's JWE is not the signed one")
        public = self.keys.get(signed.epoch)
        if public is None:
            raise StaleEpoch(f"{key}: a term of epoch {signed.epoch}, which this node lacks")
        parsed = fastwrap.parse_term(stored.jwe)
        ciphertext = parsed.wrapped_key(public)
        if signed.created_at > self.clock() + CLOCK_SKEW_MS:
            raise Unproven(f"{key}: a term made in the future")
        term = Term(
            key=key,
            revision=revision,
            term=signed,
            parsed=parsed,
            ciphertext=ciphertext,
            digest=hashlib.sha256(parsed.encrypted_key).digest(),
        )
        self.proven(term)
        return term

    def proven(self, term: Term) -> None:
        """Raise :class:`Unproven` unless the term's maker is active in this node's roster
        and a member of its epoch, its signature verifies and it has not expired."""
        signed = term.term
        if self.clock() > term.expires_at():
            raise Unproven(f"{term.key}: the term expired")
        node = self.roster().node(signed.creator)
        members = self.members(signed.epoch)
        if node is None or node.status != "active" or members is None:
            raise Unproven(f"{term.key}: made by {signed.creator}, not an active member")
        if signed.creator not in members:
            raise Unproven(f"{term.key}: made by {signed.creator}, not a member of its epoch")
        if self._verified.get(term.key) == node.signing_key and self.current.get(term.key) is term:
            return
        cached = self._keys_cache.get(signed.creator)
        if cached is None or cached[0] != node.signing_key:
            cached = (node.signing_key, load_ed25519_public(node.signing_key, "node key"))
            self._keys_cache[signed.creator] = cached
        try:
            verify(signed, cached[1])
        except SignatureInvalid:
            raise Unproven(f"{term.key}: the maker's signature does not verify") from None
        self._verified[term.key] = node.signing_key

    def is_proven(self, term: Term) -> bool:
        try:
            self.proven(term)
        except FlashgateError:
            return False
        return True

    def remove(self, key: str) -> Term | None:
        self.rejected.pop(key, None)
        self.refused_made_at.pop(key, None)
        self._verified.pop(key, None)
        return self.current.pop(key, None)

    def lookup(self, key: str, revision: int) -> Term | None:
        """A responder's look-up: the term at exactly ``revision``, still proven."""
        term = self.current.get(key)
        if term is None or term.revision != revision or not self.is_proven(term):
            return None
        return term

    def by_id(self, term_id: str) -> Term | None:
        return self.current.get(term_key(term_id))
