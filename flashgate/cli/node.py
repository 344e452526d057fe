"""``flashgate node revoke``: a new admin-signed roster without the node."""

from __future__ import annotations

import time
from pathlib import Path

import click
import msgspec

from flashgate.cli.home import fleet_dir, resolve_home
from flashgate.cli.secret import emit, home_option, json_option
from flashgate.cli.session import AdminSession, run
from flashgate.errors import ConfigurationError
from flashgate.events import commands as cmd
from flashgate.events.fleet import encode_roster
from flashgate.events.signing import sign
from flashgate.fleet.files import ROSTER_FILE, write_atomic
from flashgate.names import validate_name


@click.group()
def node() -> None:
    """Bridge Nodes of the fleet."""


@node.command("revoke")
@click.argument("node_id")
@home_option
@json_option
def revoke(node_id: str, home: Path | None, as_json: bool) -> None:
    """Revoke a node: peers refuse it at once. Follow with `flashgate fleet rotate-key`."""
    validate_name(node_id, "node id")
    root = resolve_home(home)

    async def go() -> None:
        async with AdminSession(root) as session:
            current = await session.synced_roster()
            entry = current.node(node_id)
            if entry is None:
                raise ConfigurationError(f"{node_id} is not in the roster")
            if entry.status == "revoked":  # perhaps by a run whose outcome came too late
                raise ConfigurationError(
                    f"{node_id} is already revoked (roster serial {current.serial}); "
                    "the home's roster.json has it"
                )
            nodes = [
                msgspec.structs.replace(n, status="revoked") if n.id == node_id else n
                for n in current.nodes
            ]
            roster = sign(
                msgspec.structs.replace(
                    current,
                    serial=current.serial + 1,
                    issued_at=int(time.time() * 1000),
                    nodes=nodes,
                    signature="",
                ),
                session.admin_key,
            )
            event = await session.send(
                cmd.RevokeNode(**session.base(), node_id=node_id, roster=roster), show=not as_json
            )
            write_atomic(fleet_dir(root) / ROSTER_FILE, encode_roster(roster), 0o644)
        emit(
            as_json,
            {"node_id": node_id, "roster_serial": roster.serial, "event": event.type},
            f"{node_id}: revoked (roster serial {roster.serial}); rotate the fleet key next",
        )

    run(go())
