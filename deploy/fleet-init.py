"""The compose stack's one-shot ceremony and hand-out (run by the `init` service).

    python fleet-init.py --ceremony DIR --public DIR --nodes-root DIR -- FLEET-INIT-ARGS...

1. If DIR (the private ceremony volume) has no fleet.json yet: `flashgate fleet init
   --out DIR FLEET-INIT-ARGS`: admin.key sealed with FLASHGATE_ADMIN_PASSPHRASE, each
   node's bundle with that node's own passphrase (FLASHGATE_PASSPHRASE_<ID>, e.g.
   FLASHGATE_PASSPHRASE_NODE_1 for node-1); the ceremony process is hardened first.
2. Each bundle still in DIR/nodes/ is moved to NODES_ROOT/<id>/<id>.bundle, unless that
   file exists (a bridge re-seals its bundle with a newer roster or after a fleet key
   rotation: it is never overwritten), then deleted from DIR: after the hand-out no volume
   but the node's own holds its share.
3. fleet.json and roster.json (public) are copied to the public volume on every run, so
   the backend sees the admin's latest copies, and so are the backend's event key
   (backend.key, 0600, and its admin-signed backend.json): that volume is the backend's
   alone.
4. With --nats-auth DIR: DIR/authorization.conf, the users nats-server includes (the role
   logins, their passwords from its environment, and one NKey user per node that
   roster.json lists as active: a revoked node has none), written again on every run.
   After `flashgate node revoke`: run init again, then reload the server
   (`docker compose kill -s HUP nats`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flashgate.broker.permissions import AUTHORIZATION_INCLUDE, authorization_config
from flashgate.cli.main import main as flashgate_main
from flashgate.events.subjects import FleetNames
from flashgate.fleet.backend_key import BACKEND_KEY_FILE, BACKEND_PUBLIC_FILE
from flashgate.fleet.files import (
    DESCRIPTOR_FILE,
    NODES_DIR,
    ROSTER_FILE,
    load_descriptor,
    write_atomic,
)
from flashgate.fleet.nats_identity import active_identities

#: The file nats-server includes (deploy/nats.conf), in the nats-auth volume.
AUTHORIZATION_FILE = Path(AUTHORIZATION_INCLUDE).name


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ceremony", type=Path, required=True)
    parser.add_argument("--public", type=Path, required=True)
    parser.add_argument("--nodes-root", type=Path, required=True)
    parser.add_argument("--nats-auth", type=Path, default=None)
    parser.add_argument("init_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    init_args = args.init_args[1:] if args.init_args[:1] == ["--"] else args.init_args
    ceremony, public, nodes_root = args.ceremony, args.public, args.nodes_root

    if not (ceremony / DESCRIPTOR_FILE).exists():
        status = flashgate_main(["fleet", "init", "--out", str(ceremony), *init_args])
        if status:
            return status
    for path in sorted((ceremony / NODES_DIR).glob("*.bundle")):
        node_id = path.stem
        target = nodes_root / node_id / path.name
        if not target.exists():
            write_atomic(target, path.read_bytes(), 0o600)  # sealed with the node's own
            print(f"fleet-init: {node_id}'s bundle handed out", file=sys.stderr)
        path.unlink()  # the node's volume holds the only copy now
    for name in (DESCRIPTOR_FILE, ROSTER_FILE, BACKEND_PUBLIC_FILE, BACKEND_KEY_FILE):
        if (ceremony / name).exists():
            mode = 0o600 if name == BACKEND_KEY_FILE else 0o644
            write_atomic(public / name, (ceremony / name).read_bytes(), mode)
    if args.nats_auth is not None:
        names = FleetNames(load_descriptor(ceremony).fleet)
        users = authorization_config(names, None, active_identities(ceremony))
        write_atomic(args.nats_auth / AUTHORIZATION_FILE, users.encode(), 0o644)
        print("fleet-init: NATS users written", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
