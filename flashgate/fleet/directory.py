"""Writing a whole fleet directory after a ceremony, and reading sealed node bundles.

Everything is sealed in memory first and written file by file to a temporary name and
renamed, ``fleet.json`` last: a failure leaves no half-written directory that looks done.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from flashgate.crypto import seal
from flashgate.errors import ConfigurationError, FlashgateError
from flashgate.events.fleet import encode_descriptor, encode_roster
from flashgate.fleet.backend_key import backend_key_files
from flashgate.fleet.bundle import NodeBundle, open_bundle, seal_admin_key
from flashgate.fleet.ceremony import Ceremony
from flashgate.fleet.files import (
    ADMIN_KEY_FILE,
    DESCRIPTOR_FILE,
    NODES_DIR,
    ROSTER_FILE,
    read_limited,
    write_atomic,
)
from flashgate.fleet.nats_identity import IDENTITIES_FILE, identities_document


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
    node_passphrases: Mapping[str, str] | None = None,
    force: bool = False,
    params: seal.KdfParams = seal.DEFAULT_KDF,
) -> list[Path]:
    """Seal admin.key with ``passphrase`` and each node's bundle with its entry in
    ``node_passphrases`` (which must name every node); without it, every bundle with
    ``passphrase`` too (one passphrase for everything: tests, old setups)."""
    check_out_dir(out, force=force)
    seal.check_passphrase(passphrase)
    own = dict(node_passphrases) if node_passphrases is not None else None
    if own is not None:
        missing = [b.node_id for b in ceremony.bundles if b.node_id not in own]
        if missing:
            raise ConfigurationError(f"no passphrase for the bundle of {', '.join(missing)}")
        for node_id in own:
            seal.check_passphrase(own[node_id])
    descriptor = ceremony.descriptor
    # Seal everything in memory first: a failure leaves the directory untouched.
    files: list[tuple[Path, bytes, int]] = [
        (
            out / ADMIN_KEY_FILE,
            seal_admin_key(descriptor.fleet, ceremony.admin_key, passphrase, params=params),
            0o600,
        ),
        *(
            (
                out / NODES_DIR / f"{b.node_id}.bundle",
                b.seal(passphrase if own is None else own[b.node_id], params=params),
                0o600,
            )
            for b in ceremony.bundles
        ),
        *backend_key_files(out, descriptor.fleet, ceremony.admin_key),
        (out / ROSTER_FILE, encode_roster(ceremony.roster), 0o644),
        (
            out / IDENTITIES_FILE,
            identities_document((b.node_id, b.nats_seed) for b in ceremony.bundles),
            0o644,
        ),
        (out / DESCRIPTOR_FILE, encode_descriptor(descriptor), 0o644),  # last: marks "done"
    ]
    (out / NODES_DIR).mkdir(parents=True, exist_ok=True)
    os.chmod(out / NODES_DIR, 0o700)
    for path, data, mode in files:
        write_atomic(path, data, mode)
    return [path for path, _, _ in files]


def read_bundle(path: Path, passphrase: str) -> NodeBundle:
    blob = read_limited(path, seal.MAX_SEALED_BYTES, "bundle")
    try:
        return open_bundle(blob, passphrase)
    except FlashgateError as exc:
        raise type(exc)(f"{path}: {exc.message}") from exc
