"""The backend's event-signing key: ``backend.key`` (private) and ``backend.json`` (public,
admin-signed), both in the fleet directory.

    DIR/backend.key    Ed25519 private key, PKCS#8 PEM, unencrypted          (0600)
    DIR/backend.json   {fleet, signing_key, issued_at}, admin-signed          (0644)

Made at ``fleet init`` (and ``dev up``) with the other fleet files, while the admin key is
in hand, so the public half is signed by the admin and pinned wherever the descriptor is:
the admin tooling believes an outcome only when it verifies under this key. For a fleet
made before this key existed, ``flashgate fleet backend-key`` makes the pair.

Trust: the backend is trusted with the outcomes of commands (it decides them), never with
the integrity of secrets, which nodes check against admin signatures. This key stops a
party that can write the event stream but does not hold ``backend.key`` (the broker, a
rogue holding a bridge login) from forging outcomes. ``backend.key`` belongs to the
backend only: it is not sealed (the backend runs without a passphrase), so deploy it to
the backend's fleet directory alone, never to bridges; anyone holding it can forge
outcomes, not secrets.
"""

from __future__ import annotations

import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from flashgate.crypto.encoding import b64url_encode
from flashgate.crypto.rng import SYSTEM_RNG, Rng
from flashgate.errors import ConfigurationError, FlashgateError, FleetMismatch, InvalidKey
from flashgate.events.fleet import BACKEND_KEY_CODEC, BackendKey, FleetDescriptor
from flashgate.events.signing import sign, verify
from flashgate.fleet.files import read_limited, write_atomic
from flashgate.fleet.identity_keys import load_ed25519_public, new_ed25519, public_b64

BACKEND_KEY_FILE = "backend.key"
BACKEND_PUBLIC_FILE = "backend.json"
_MAX_BYTES = 4 * 1024


def backend_key_files(
    out: Path, fleet: str, admin_key: Ed25519PrivateKey, rng: Rng = SYSTEM_RNG
) -> list[tuple[Path, bytes, int]]:
    """A new backend key pair as (path, bytes, mode): the public half admin-signed."""
    key = new_ed25519(rng)
    document = sign(
        BackendKey(fleet=fleet, signing_key=public_b64(key), issued_at=int(time.time() * 1000)),
        admin_key,
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return [
        (out / BACKEND_KEY_FILE, pem, 0o600),
        (out / BACKEND_PUBLIC_FILE, BACKEND_KEY_CODEC.encode(document) + b"\n", 0o644),
    ]


def write_backend_key(out: Path, fleet: str, admin_key: Ed25519PrivateKey) -> list[Path]:
    files = backend_key_files(out, fleet, admin_key)
    for path, data, mode in files:
        write_atomic(path, data, mode)
    return [path for path, _, _ in files]


def load_backend_public(fleet_dir: Path, descriptor: FleetDescriptor) -> Ed25519PublicKey:
    """The backend's event key from ``backend.json``, checked against the admin key the
    descriptor names (the caller has pinned or checked the descriptor)."""
    path = fleet_dir / BACKEND_PUBLIC_FILE
    if not path.exists():
        raise ConfigurationError(
            f"{path} does not exist: the backend's event key is made by `fleet init`, or for "
            "an older fleet by `flashgate fleet backend-key`; give the backend both files"
        )
    data = read_limited(path, _MAX_BYTES, "backend key")
    try:
        document = BACKEND_KEY_CODEC.decode(data)
        verify(document, load_ed25519_public(descriptor.admin_key, "admin key"))
        if document.fleet != descriptor.fleet:
            raise FleetMismatch(f"it is fleet {document.fleet!r}'s, not {descriptor.fleet!r}'s")
        return load_ed25519_public(document.signing_key, "backend key")
    except FlashgateError as exc:
        raise type(exc)(f"{path}: {exc.message}") from exc


def load_backend_signing_key(fleet_dir: Path, descriptor: FleetDescriptor) -> Ed25519PrivateKey:
    """``backend.key``, checked to be the private half of the admin-signed ``backend.json``."""
    public = load_backend_public(fleet_dir, descriptor)
    path = fleet_dir / BACKEND_KEY_FILE
    data = read_limited(path, _MAX_BYTES, "backend key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise InvalidKey(f"{path} is not an unencrypted PKCS#8 Ed25519 key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidKey(f"{path} is not an Ed25519 key")
    if public_b64(key) != public_b64_of(public):
        raise ConfigurationError(f"{path} is not the key that {BACKEND_PUBLIC_FILE} names")
    return key


def public_b64_of(public: Ed25519PublicKey) -> str:
    return b64url_encode(
        public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
