"""``flashgate node revoke``: a new admin-signed roster without the node."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import click
import msgspec

from flashgate.cli.home import fleet_dir, resolve_home
from flashgate.cli.options import home_option, json_option
from flashgate.cli.output import emit
from flashgate.cli.session import AdminSession, run
from flashgate.errors import BelowThreshold, ConfigurationError
from flashgate.events import commands as cmd
from flashgate.events.fleet import encode_roster
from flashgate.events.signing import sign
from flashgate.fleet.files import ROSTER_FILE, write_atomic
from flashgate.names import validate_name


@click.group()
def node() -> None:
    """Bridge Nodes of the fleet."""


def check_revocation(
    nodes: Sequence[tuple[str, str]], threshold: int, node_id: str, *, force: bool
) -> str | None:
    """Refuse (:class:`BelowThreshold`) to revoke ``node_id`` when fewer than ``threshold``
    active nodes would remain, unless ``force``; returns a warning when the revocation
    leaves no margin (exactly t active: the fleet can lose no node) or is forced.
    ``nodes`` are the roster's (id, status) pairs."""
    left = sum(1 for n, status in nodes if status == "active" and n != node_id)
    instead = (
        "add nodes instead: run a new ceremony (`fleet init`) with more nodes and "
        "move the secrets to it"
    )
    if left < threshold:
        below = (
            f"revoking {node_id} leaves {left} active node(s), fewer than the threshold "
            f"{threshold}: no secret would load any more and `fleet rotate-key` "
            "would refuse"
        )
        if not force:
            raise BelowThreshold(f"{below}; {instead}, or give --force to revoke it anyway")
        return f"warning: --force: {below}; {instead}"
    if left == threshold:
        return (
            f"warning: {left} active node(s) remain for a threshold of {threshold}: the fleet "
            f"can lose no node (one more down or revoked and nothing loads); {instead}"
        )
    return None


@node.command("revoke")
@click.argument("node_id")
@click.option(
    "--force",
    is_flag=True,
    help="Revoke even when fewer active nodes than the threshold would remain.",
)
@home_option
@json_option
def revoke(node_id: str, force: bool, home: Path | None, as_json: bool) -> None:
    """Revoke a node: peers refuse it at once. Follow with `flashgate fleet rotate-key`.

    Refused when it would leave fewer active nodes than the threshold (unless --force);
    a warning when it leaves exactly the threshold."""
    validate_name(node_id, "node id")
    root = resolve_home(home)
    warnings: list[str] = []

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
            warning = check_revocation(
                [(n.id, n.status) for n in current.nodes],
                session.descriptor.threshold,
                node_id,
                force=force,
            )
            if warning is not None:
                warnings.append(warning)
                click.echo(warning, err=True)
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
        document = {"node_id": node_id, "roster_serial": roster.serial, "event": event.type}
        if warnings:
            document["warning"] = warnings[0].removeprefix("warning: ")
        emit(
            as_json,
            document,
            f"{node_id}: revoked (roster serial {roster.serial}); rotate the fleet key next",
        )

    run(go())
