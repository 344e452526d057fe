"""Bridge Nodes' NATS identities: one user NKey per node (NATS's own mechanism).

``fleet init`` makes a seed per node (:func:`new_seed`) and seals it in that node's bundle
(never written anywhere else); the public keys go into the fleet directory's public file
``nats-nodes.json`` (``{"<node>": "U..."}``), from which whoever writes the nats-server
config (``flashgate dev up``, ``flashgate dev nats-config --identities``) makes one NKey
user per active node. At connect, nats-py signs the server's nonce with the seed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import nkeys

from flashgate.crypto.rng import SYSTEM_RNG, Rng
from flashgate.errors import ConfigurationError, MalformedDocument
from flashgate.fleet.files import load_descriptor, load_roster, read_limited
from flashgate.names import validate_name

#: The fleet directory's public list of node NKeys.
IDENTITIES_FILE = "nats-nodes.json"
_MAX_IDENTITIES_BYTES = 64 * 1024


def new_seed(rng: Rng = SYSTEM_RNG) -> str:
    """A fresh user NKey seed (``SU...``): a secret, like the node's signing key."""
    raw = bytearray(rng.token_bytes(32))
    try:
        return bytes(nkeys.encode_seed(raw, nkeys.PREFIX_BYTE_USER)).decode()
    finally:
        raw[:] = bytes(len(raw))


def public_nkey(seed: str) -> str:
    """The public user NKey (``U...``) of ``seed``; :class:`MalformedDocument` if it is no
    user seed (the message never holds the seed)."""
    try:
        pair = nkeys.from_seed(bytearray(seed.encode()))
        public = bytes(pair.public_key).decode()
    except Exception as exc:  # nkeys raises its own errors and binascii's
        raise MalformedDocument(f"NATS NKey seed is invalid: {type(exc).__name__}") from exc
    if not public.startswith("U"):
        raise MalformedDocument("NATS NKey seed is not a user seed")
    return public


def identities_document(seeds: Iterable[tuple[str, str | None]]) -> bytes:
    """The ``nats-nodes.json`` for ``(node, seed)`` pairs: each node's public NKey."""
    identities = {node: public_nkey(seed) for node, seed in seeds if seed is not None}
    return (json.dumps(dict(sorted(identities.items())), indent=2) + "\n").encode()


def read_identities(path: Path) -> dict[str, str]:
    """``{node: public NKey}`` from a ``nats-nodes.json``."""
    if not path.exists():
        raise ConfigurationError(
            f"{path} does not exist: the fleet predates per-node NATS identities "
            "(run a new `flashgate fleet init`)"
        )
    try:
        data = json.loads(read_limited(path, _MAX_IDENTITIES_BYTES, "NATS identities"))
    except ValueError as exc:
        raise MalformedDocument(f"{path} is not JSON") from exc
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise MalformedDocument(f"{path} must map node ids to public NKeys")
    return {validate_name(node, "node id"): public for node, public in data.items()}


def active_identities(fleet_dir: Path) -> dict[str, str]:
    """``{node: public NKey}`` of the nodes that may log in to NATS: those of
    ``nats-nodes.json`` that the fleet directory's admin-signed ``roster.json`` lists as
    active (a revoked node is left out, and so loses its NATS user)."""
    descriptor = load_descriptor(fleet_dir)
    roster = load_roster(fleet_dir, descriptor)
    identities = read_identities(fleet_dir / IDENTITIES_FILE)
    active = {entry.id for entry in roster.nodes if entry.status == "active"}
    return {node: public for node, public in identities.items() if node in active}
