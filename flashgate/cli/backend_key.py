"""``flashgate fleet backend-key``: make the backend's event-signing key for a fleet made
before it existed (``fleet init`` makes it with the other files), or replace it.

Writes ``backend.key`` and ``backend.json`` (admin-signed) into the home's fleet
directory; hand both to the backend's fleet directory and restart it. See
:mod:`flashgate.fleet.backend_key` for what the key is trusted with.
"""

from __future__ import annotations

from pathlib import Path

import click

from flashgate.cli.hardening import harden_process
from flashgate.cli.home import fleet_dir, load_home_descriptor, read_admin_key, resolve_home
from flashgate.cli.options import home_option, json_option
from flashgate.cli.output import emit
from flashgate.cli.passphrase import admin_passphrase
from flashgate.errors import ConfigurationError
from flashgate.fleet.backend_key import BACKEND_PUBLIC_FILE, write_backend_key
from flashgate.fleet.bundle import open_admin_key


@click.command("backend-key")
@click.option("--force", is_flag=True, help="Replace the backend key the home has.")
@home_option
@json_option
def backend_key(force: bool, home: Path | None, as_json: bool) -> None:
    """Make the backend's event-signing key (needs FLASHGATE_ADMIN_PASSPHRASE for the admin key).

    Outcomes the admin tooling accepts must be signed with it; copy backend.key and
    backend.json into the backend's fleet directory (never to a bridge) and restart it."""
    root = resolve_home(home)
    descriptor = load_home_descriptor(root)
    out = fleet_dir(root)
    if (out / BACKEND_PUBLIC_FILE).exists() and not force:
        raise ConfigurationError(
            f"{out / BACKEND_PUBLIC_FILE} exists; give --force to replace the backend key"
        )
    harden_process()  # before the admin key is in this process's memory
    admin = open_admin_key(read_admin_key(root), admin_passphrase(), descriptor)
    written = write_backend_key(out, descriptor.fleet, admin)
    emit(
        as_json,
        {"written": [str(p) for p in written]},
        "wrote "
        + ", ".join(str(p) for p in written)
        + "\ncopy both to the backend's fleet directory and restart the backend",
    )
