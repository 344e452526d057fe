"""Node bundles: a node's identity keys, key share, pinned admin key and fleet descriptor,
sealed at rest with a passphrase (:mod:`flashgate.crypto.seal`, purpose ``node-bundle``).

Sealed contents are a msgpack map of :class:`BundleFile`. A bundle never holds a decrypted
secret. The admin signing key is sealed the same way (purpose ``admin-key``).

A running node re-seals its bundle with the newest admin-signed roster it accepted
(``roster``; absent in a bundle fresh from the ceremony) and, after a fleet key rotation,
with its share of the new epoch: the highest roster serial and fleet key epoch it has seen
survive a restart and cannot be rolled back by whoever writes the fleet bucket
(docs/security-model.md). The stored roster is checked against the pinned admin key when
the bundle is opened, like the descriptor.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from flashgate.crypto import seal
from flashgate.crypto.encoding import b64url_decode, b64url_encode, int_to_bytes
from flashgate.crypto.rng import SYSTEM_RNG, Rng
from flashgate.crypto.threshold.keys import KeyShare, ThresholdPublicKey
from flashgate.crypto.threshold.partial import share_matches
from flashgate.errors import (
    FlashgateError,
    FleetMismatch,
    InvalidKey,
    MalformedDocument,
    MalformedSealedFile,
)
from flashgate.events.fleet import FleetDescriptor, Roster
from flashgate.events.signing import verify
from flashgate.fleet.descriptor import node_entry
from flashgate.fleet.identity_keys import load_ed25519_public, private_raw, public_b64
from flashgate.fleet.nats_identity import public_nkey
from flashgate.fleet.threshold_key import verified_threshold_key

BUNDLE_PURPOSE = "node-bundle"
ADMIN_KEY_PURPOSE = "admin-key"
BUNDLE_FORMAT = 1


class BundleFile(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    format: int = BUNDLE_FORMAT
    fleet: str
    epoch: int
    node_id: str
    index: int
    signing_key: str  # Ed25519 private key, raw 32 bytes
    exchange_key: str  # X25519 private key, raw 32 bytes
    share: str  # s_i, k bytes big-endian
    admin_key: str  # the pinned admin public key
    descriptor: FleetDescriptor
    #: The newest admin-signed roster this node accepted (None: none yet, serial 1 holds).
    roster: Roster | None = None
    #: The node's own NATS user NKey seed (``SU...``; None: a bundle from before per-node
    #: NATS identities, which logs in with a user and password).
    nats_seed: str | None = None


class AdminKeyFile(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    format: int = 1
    fleet: str
    signing_key: str  # Ed25519 private key, raw 32 bytes


@dataclass(frozen=True, eq=False)
class NodeBundle:
    node_id: str
    share: KeyShare
    signing_key: Ed25519PrivateKey
    exchange_key: X25519PrivateKey
    admin_key: str
    descriptor: FleetDescriptor
    public: ThresholdPublicKey
    roster: Roster | None = None  # the newest admin-signed roster accepted
    nats_seed: str | None = None  # the node's NATS user NKey seed (flashgate.fleet.nats_identity)

    @property
    def fleet(self) -> str:
        return self.descriptor.fleet

    @property
    def epoch(self) -> int:
        return self.descriptor.epoch

    @property
    def index(self) -> int:
        return self.share.index

    def __repr__(self) -> str:
        return (
            f"NodeBundle(node_id={self.node_id!r}, fleet={self.fleet!r}, epoch={self.epoch}, "
            f"index={self.index}, secrets=<redacted>)"
        )

    def seal(
        self, passphrase: str, *, params: seal.KdfParams = seal.DEFAULT_KDF, rng: Rng = SYSTEM_RNG
    ) -> bytes:
        contents = BundleFile(
            fleet=self.fleet,
            epoch=self.epoch,
            node_id=self.node_id,
            index=self.index,
            signing_key=b64url_encode(private_raw(self.signing_key)),
            exchange_key=b64url_encode(private_raw(self.exchange_key)),
            share=b64url_encode(int_to_bytes(self.share.secret_value, self.public.key.byte_length)),
            admin_key=self.admin_key,
            descriptor=self.descriptor,
            roster=self.roster,
            nats_seed=self.nats_seed,
        )
        return seal.seal(
            msgspec.msgpack.encode(contents), passphrase, BUNDLE_PURPOSE, params=params, rng=rng
        )


def open_bundle(blob: bytes, passphrase: str) -> NodeBundle:
    """Unseal and fully check a bundle: descriptor signature under the pinned admin key,
    the node's place in the descriptor, its identity keys and its share (v^s_i = v_i)."""
    raw = seal.unseal(blob, passphrase, BUNDLE_PURPOSE)
    try:
        contents = msgspec.msgpack.decode(raw, type=BundleFile)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise MalformedSealedFile(f"bundle contents are invalid: {exc}") from exc
    if contents.format != BUNDLE_FORMAT:
        raise MalformedSealedFile(f"unsupported bundle format {contents.format}")
    descriptor = contents.descriptor
    public = verified_threshold_key(descriptor, contents.admin_key)
    if (contents.fleet, contents.epoch) != (descriptor.fleet, descriptor.epoch):
        raise FleetMismatch("bundle header and its descriptor name different fleets or epochs")
    entry = node_entry(descriptor, contents.node_id)
    try:
        signing_key = Ed25519PrivateKey.from_private_bytes(
            b64url_decode(contents.signing_key, "signing key")
        )
        exchange_key = X25519PrivateKey.from_private_bytes(
            b64url_decode(contents.exchange_key, "exchange key")
        )
        share = KeyShare(
            contents.index, int.from_bytes(b64url_decode(contents.share, "share"), "big"), public
        )
    except (FlashgateError, ValueError) as exc:
        raise MalformedDocument(f"bundle key material is invalid: {type(exc).__name__}") from exc
    if entry.index != contents.index:
        raise MalformedDocument("bundle share index differs from the descriptor's")
    if (
        public_b64(signing_key) != entry.signing_key
        or public_b64(exchange_key) != entry.exchange_key
    ):
        raise MalformedDocument("bundle identity keys differ from the descriptor's")
    if not share_matches(share, public):
        raise InvalidKey(
            f"the key share of node {contents.node_id!r} does not match its verification key"
        )
    if contents.roster is not None:
        verify(contents.roster, load_ed25519_public(contents.admin_key, "admin key"))
        if contents.roster.fleet != descriptor.fleet:
            raise FleetMismatch("the bundle's roster is for another fleet")
    if contents.nats_seed is not None:
        public_nkey(contents.nats_seed)  # a user seed, or MalformedDocument
    return NodeBundle(
        node_id=contents.node_id,
        share=share,
        signing_key=signing_key,
        exchange_key=exchange_key,
        admin_key=contents.admin_key,
        descriptor=descriptor,
        public=public,
        roster=contents.roster,
        nats_seed=contents.nats_seed,
    )


def seal_admin_key(
    fleet: str,
    key: Ed25519PrivateKey,
    passphrase: str,
    *,
    params: seal.KdfParams = seal.DEFAULT_KDF,
    rng: Rng = SYSTEM_RNG,
) -> bytes:
    contents = AdminKeyFile(fleet=fleet, signing_key=b64url_encode(private_raw(key)))
    return seal.seal(
        msgspec.msgpack.encode(contents), passphrase, ADMIN_KEY_PURPOSE, params=params, rng=rng
    )


def open_admin_key(blob: bytes, passphrase: str, descriptor: FleetDescriptor) -> Ed25519PrivateKey:
    raw = seal.unseal(blob, passphrase, ADMIN_KEY_PURPOSE)
    try:
        contents = msgspec.msgpack.decode(raw, type=AdminKeyFile)
        key = Ed25519PrivateKey.from_private_bytes(b64url_decode(contents.signing_key, "key"))
    except (msgspec.ValidationError, msgspec.DecodeError, FlashgateError, ValueError) as exc:
        raise MalformedSealedFile("admin key file contents are invalid") from exc
    if contents.fleet != descriptor.fleet or public_b64(key) != descriptor.admin_key:
        raise FleetMismatch("this admin key does not belong to the fleet descriptor")
    return key


@dataclass(frozen=True)
class Resealed:
    purpose: str  # BUNDLE_PURPOSE or ADMIN_KEY_PURPOSE
    fleet: str
    node_id: str | None  # a bundle's node
    epoch: int | None  # a bundle's epoch
    blob: bytes

    def __repr__(self) -> str:
        return f"Resealed(purpose={self.purpose!r}, fleet={self.fleet!r}, node_id={self.node_id!r})"


def reseal(
    blob: bytes,
    old_passphrase: str,
    new_passphrase: str,
    *,
    params: seal.KdfParams = seal.DEFAULT_KDF,
    rng: Rng = SYSTEM_RNG,
) -> Resealed:
    """Open a node bundle or a sealed admin key with ``old_passphrase`` (a bundle is fully
    checked, as a node would) and seal the same contents with ``new_passphrase`` (a fresh
    salt and nonce: the old passphrase opens nothing of the result)."""
    seal.check_passphrase(new_passphrase)
    purpose = seal.sealed_purpose(blob)
    if purpose == BUNDLE_PURPOSE:
        bundle = open_bundle(blob, old_passphrase)
        return Resealed(
            purpose=purpose,
            fleet=bundle.fleet,
            node_id=bundle.node_id,
            epoch=bundle.epoch,
            blob=bundle.seal(new_passphrase, params=params, rng=rng),
        )
    if purpose == ADMIN_KEY_PURPOSE:
        raw = seal.unseal(blob, old_passphrase, ADMIN_KEY_PURPOSE)
        try:
            contents = msgspec.msgpack.decode(raw, type=AdminKeyFile)
            Ed25519PrivateKey.from_private_bytes(b64url_decode(contents.signing_key, "key"))
        except (msgspec.ValidationError, msgspec.DecodeError, FlashgateError, ValueError) as exc:
            raise MalformedSealedFile("admin key file contents are invalid") from exc
        return Resealed(
            purpose=purpose,
            fleet=contents.fleet,
            node_id=None,
            epoch=None,
            blob=seal.seal(raw, new_passphrase, ADMIN_KEY_PURPOSE, params=params, rng=rng),
        )
    raise MalformedSealedFile(f"sealed file holds a {purpose!r}, not a node bundle or an admin key")
