"""The fleet directory on disk (I/O):

    DIR/fleet.json               public descriptor, admin-signed       (0644)
    DIR/admin.key                sealed admin signing key              (0600)
    DIR/nodes/<node-id>.bundle   one sealed bundle per node            (0600)

Files are written to a temporary name and renamed, so a crash leaves no half file.
"""

from __future__ import annotations

import os
from pathlib import Path

from flashgate.crypto import seal
from flashgate.errors import ConfigurationError, FlashgateError, FleetMismatch, OversizedInput
from flashgate.events.fleet import (
    MAX_DESCRIPTOR_BYTES,
    MAX_ROSTER_BYTES,
    ROSTER_CODEC,
    FleetDescriptor,
    Roster,
    decode_descriptor,
    encode_descriptor,
    encode_roster,
)
from flashgate.events.signing import verify
from flashgate.fleet.bundle import NodeBundle, open_bundle, seal_admin_key
from flashgate.fleet.ceremony import Ceremony
from flashgate.fleet.descriptor import verify_descriptor
from flashgate.fleet.signing import load_ed25519_public

DESCRIPTOR_FILE = "fleet.json"
ROSTER_FILE = "roster.json"
ADMIN_KEY_FILE = "admin.key"
NODES_DIR = "nodes"


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_out_dir(out: Path, *, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigurationError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ConfigurationError(f"{out} is not empty (use --force to overwrite)")


def write_fleet_dir(
    out: Path,
    ceremony: Ceremony,
    passphrase: str,
    *,
    force: bool = False,
    params: seal.KdfParams = seal.DEFAULT_KDF,
) -> list[Path]:
    check_out_dir(out, force=force)
    seal.check_passphrase(passphrase)
    descriptor = ceremony.descriptor
    # Seal everything in memory first: a failure leaves the directory untouched.
    files: list[tuple[Path, bytes, int]] = [
        (
            out / ADMIN_KEY_FILE,
            seal_admin_key(descriptor.fleet, ceremony.admin_key, passphrase, params=params),
            0o600,
        ),
        *(
            (out / NODES_DIR / f"{b.node_id}.bundle", b.seal(passphrase, params=params), 0o600)
            for b in ceremony.bundles
        ),
        (out / ROSTER_FILE, encode_roster(ceremony.roster), 0o644),
        (out / DESCRIPTOR_FILE, encode_descriptor(descriptor), 0o644),  # last: marks "done"
    ]
    (out / NODES_DIR).mkdir(parents=True, exist_ok=True)
    os.chmod(out / NODES_DIR, 0o700)
    for path, data, mode in files:
        _write_atomic(path, data, mode)
    return [path for path, _, _ in files]


def _read_limited(path: Path, limit: int, what: str) -> bytes:
    try:
        size = path.stat().st_size
        if size > limit:
            raise OversizedInput(f"{what} {path} is over {limit} bytes")
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise ConfigurationError(f"{what} {path} does not exist") from exc
    except IsADirectoryError as exc:
        raise ConfigurationError(f"{what} {path} is a directory") from exc
    except OSError as exc:  # not a directory, permission denied, I/O error, ...
        raise ConfigurationError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc


def load_descriptor(fleet_dir: Path, pinned_admin_key: str | None = None) -> FleetDescriptor:
    """Read ``fleet.json`` and check its signature (against ``pinned_admin_key`` when given,
    else against the admin key it names: the fleet directory is then the trust anchor)."""
    data = _read_limited(fleet_dir / DESCRIPTOR_FILE, MAX_DESCRIPTOR_BYTES, "fleet descriptor")
    descriptor = decode_descriptor(data)
    verify_descriptor(descriptor, pinned_admin_key or descriptor.admin_key)
    return descriptor


def read_bundle(path: Path, passphrase: str) -> NodeBundle:
    blob = _read_limited(path, seal.MAX_SEALED_BYTES, "bundle")
    try:
        return open_bundle(blob, passphrase)
    except FlashgateError as exc:
        raise type(exc)(f"{path}: {exc.message}") from exc


def load_roster(fleet_dir: Path, descriptor: FleetDescriptor) -> Roster:
    """Read ``roster.json`` and check it: signed by the descriptor's admin, same fleet."""
    roster = ROSTER_CODEC.decode(_read_limited(fleet_dir / ROSTER_FILE, MAX_ROSTER_BYTES, "roster"))
    verify(roster, load_ed25519_public(descriptor.admin_key, "admin key"))
    if roster.fleet != descriptor.fleet:
        raise FleetMismatch(f"roster is for fleet {roster.fleet!r}, not {descriptor.fleet!r}")
    return roster
