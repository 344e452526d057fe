"""The public part of a fleet directory (I/O): reading ``fleet.json`` and ``roster.json``.

    DIR/fleet.json               public descriptor, admin-signed       (0644)
    DIR/roster.json              the node roster, admin-signed         (0644)
    DIR/admin.key                sealed admin signing key              (0600)
    DIR/nodes/<node-id>.bundle   one sealed bundle per node            (0600)

Sealed files are handled by :mod:`flashgate.fleet.directory`; this module needs no
threshold or sealing code, so the backend can use it.
"""

from __future__ import annotations

import os
from pathlib import Path

from flashgate.errors import ConfigurationError, FleetMismatch, OversizedInput
from flashgate.events.fleet import (
    MAX_DESCRIPTOR_BYTES,
    MAX_ROSTER_BYTES,
    ROSTER_CODEC,
    FleetDescriptor,
    Roster,
    decode_descriptor,
)
from flashgate.events.signing import verify
from flashgate.fleet.descriptor import verify_descriptor
from flashgate.fleet.identity_keys import load_ed25519_public

DESCRIPTOR_FILE = "fleet.json"
ROSTER_FILE = "roster.json"
ADMIN_KEY_FILE = "admin.key"
NODES_DIR = "nodes"


def write_atomic(path: Path, data: bytes, mode: int) -> None:
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


def read_limited(path: Path, limit: int, what: str) -> bytes:
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
    data = read_limited(fleet_dir / DESCRIPTOR_FILE, MAX_DESCRIPTOR_BYTES, "fleet descriptor")
    return parse_descriptor(data, pinned_admin_key)


def parse_descriptor(data: bytes, pinned_admin_key: str | None = None) -> FleetDescriptor:
    """Decode ``fleet.json``'s bytes and check the signature (see :func:`load_descriptor`)."""
    descriptor = decode_descriptor(data)
    verify_descriptor(descriptor, pinned_admin_key or descriptor.admin_key)
    return descriptor


def load_roster(fleet_dir: Path, descriptor: FleetDescriptor) -> Roster:
    """Read ``roster.json`` and check it: signed by the descriptor's admin, same fleet."""
    data = read_limited(fleet_dir / ROSTER_FILE, MAX_ROSTER_BYTES, "roster")
    return parse_roster(data, descriptor)


def parse_roster(data: bytes, descriptor: FleetDescriptor) -> Roster:
    """Decode ``roster.json``'s bytes and check them (see :func:`load_roster`)."""
    roster = ROSTER_CODEC.decode(data)
    verify(roster, load_ed25519_public(descriptor.admin_key, "admin key"))
    if roster.fleet != descriptor.fleet:
        raise FleetMismatch(f"roster is for fleet {roster.fleet!r}, not {descriptor.fleet!r}")
    return roster
