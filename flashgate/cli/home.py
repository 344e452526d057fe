"""The admin's home directory (``--home``, ``FLASHGATE_HOME``, default ``./.flashgate``).

HOME/fleet/          the ceremony's output (fleet.json, roster.json, admin.key, nodes/)
HOME/config.json     connection settings: NATS URLs and the admin's NATS credentials
                     (0600; written by ``flashgate dev up``; reading it warns when
                     other users can read it)
HOME/backend.db      the dev cluster's SQLite database
HOME/nats/           the dev cluster's nats-server (config, JetStream store, log)
HOME/logs/           the dev cluster's service logs
HOME/run/            the dev cluster's pid files and ``dev-up.lock``
"""

from __future__ import annotations

import contextlib
import shlex
import stat
from collections.abc import Iterator
from pathlib import Path

import click
import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from flashgate import environment
from flashgate.crypto import seal
from flashgate.environment import HOME_ENV, NATS_URL_ENV
from flashgate.errors import FlashgateError, HomeFileError
from flashgate.events.fleet import MAX_DESCRIPTOR_BYTES, MAX_ROSTER_BYTES, FleetDescriptor, Roster
from flashgate.fleet.backend_key import BACKEND_PUBLIC_FILE, load_backend_public
from flashgate.fleet.bundle import ADMIN_KEY_PURPOSE
from flashgate.fleet.files import (
    ADMIN_KEY_FILE,
    DESCRIPTOR_FILE,
    ROSTER_FILE,
    parse_descriptor,
    parse_roster,
    write_atomic,
)
from flashgate.runnable import command

CONFIG_FILE = "config.json"
MAX_CONFIG_BYTES = 1 << 20


#: What to do about each file of the home when it is missing or unusable.
def home_file_remedy(home: Path, name: str) -> str:
    """What to do about a missing or unusable home file; every command in it runs as pasted."""
    admin_home = "or point --home / FLASHGATE_HOME at the admin home"
    if name == CONFIG_FILE:
        start = command("dev", "up", "--home", home)
        return f"start the system with `{start}` or set FLASHGATE_NATS_URL"
    if name == DESCRIPTOR_FILE:
        return f"copy the fleet's fleet.json (written by `fleet init`) there, {admin_home}"
    if name == ROSTER_FILE:
        return (
            "copy the fleet's latest roster.json (written by `fleet init`, then by "
            f"`node revoke`) there, {admin_home}"
        )
    if name == BACKEND_PUBLIC_FILE:
        make = command("fleet", "backend-key", "--home", home)
        return (
            f"make the backend's event key with `{make}` and restart the backend with the "
            f"fleet directory it writes, {admin_home}"
        )
    return f"restore admin.key from the ceremony's offline backup, {admin_home}"


class RoleLogin(msgspec.Struct, kw_only=True):
    user: str
    password: str

    def __repr__(self) -> str:
        return f"RoleLogin(user={self.user!r}, password=<redacted>)"


class HomeConfig(msgspec.Struct, kw_only=True):
    nats: list[str]
    logins: dict[str, RoleLogin] = {}


def resolve_home(home: Path | None) -> Path:
    return Path(home or environment.read(HOME_ENV) or ".flashgate")


def fleet_dir(home: Path) -> Path:
    return home / "fleet"


def home_file(home: Path, name: str) -> Path:
    """Where a file of the home lives: config.json in HOME, the fleet's files in HOME/fleet."""
    return home / name if name == CONFIG_FILE else fleet_dir(home) / name


def _home_file_error(home: Path, name: str, problem: str) -> HomeFileError:
    remedy = home_file_remedy(home, name)
    problem = " ".join(problem.split())  # one line, whatever the cause says
    return HomeFileError(f"{home_file(home, name)} {problem}: {remedy}")


def read_home_file(home: Path, name: str, limit: int) -> bytes:
    """The bytes of a file of the home; :class:`HomeFileError` (naming the file and what to
    do) when it is missing, not a file, unreadable or over ``limit`` bytes."""
    path = home_file(home, name)
    try:
        if path.stat().st_size > limit:
            raise _home_file_error(home, name, f"is over {limit} bytes")
        return path.read_bytes()
    except FileNotFoundError:
        problem = "does not exist"
    except IsADirectoryError:
        problem = "is a directory, not a file"
    except OSError as exc:  # permission denied, not a directory, I/O error, ...
        problem = f"cannot be read ({exc.strerror or type(exc).__name__})"
    raise _home_file_error(home, name, problem)


@contextlib.contextmanager
def checking_home_file(home: Path, name: str) -> Iterator[None]:
    """Turn an error about a home file's contents into a :class:`HomeFileError`."""
    try:
        yield
    except HomeFileError:
        raise
    except FlashgateError as exc:
        raise _home_file_error(home, name, f"is not usable ({exc.message})") from exc


def load_home_descriptor(home: Path) -> FleetDescriptor:
    data = read_home_file(home, DESCRIPTOR_FILE, MAX_DESCRIPTOR_BYTES)
    with checking_home_file(home, DESCRIPTOR_FILE):
        return parse_descriptor(data)


def load_home_roster(home: Path, descriptor: FleetDescriptor) -> Roster:
    data = read_home_file(home, ROSTER_FILE, MAX_ROSTER_BYTES)
    with checking_home_file(home, ROSTER_FILE):
        return parse_roster(data, descriptor)


def load_home_backend_key(home: Path, descriptor: FleetDescriptor) -> Ed25519PublicKey:
    """The backend's event key (``backend.json``, admin-signed): outcomes must verify under it."""
    read_home_file(home, BACKEND_PUBLIC_FILE, 4 * 1024)  # missing: the remedy
    with checking_home_file(home, BACKEND_PUBLIC_FILE):
        return load_backend_public(fleet_dir(home), descriptor)


def read_admin_key(home: Path) -> bytes:
    """The sealed admin key's bytes, checked to be a sealed admin key (not yet opened)."""
    blob = read_home_file(home, ADMIN_KEY_FILE, seal.MAX_SEALED_BYTES)
    with checking_home_file(home, ADMIN_KEY_FILE):
        seal.check_sealed(blob, ADMIN_KEY_PURPOSE)
    return blob


def load_config(home: Path) -> HomeConfig:
    path = home_file(home, CONFIG_FILE)
    if not path.exists() and not path.is_symlink():
        url = environment.read(NATS_URL_ENV)
        if url:
            return HomeConfig(nats=[u.strip() for u in url.split(",") if u.strip()])
    data = read_home_file(home, CONFIG_FILE, MAX_CONFIG_BYTES)
    try:
        config = msgspec.json.decode(data, type=HomeConfig)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise _home_file_error(home, CONFIG_FILE, f"is not a valid config ({exc})") from exc
    warn_if_readable_by_others(home_file(home, CONFIG_FILE))  # after the error, if any: one line
    return config


def warn_if_readable_by_others(path: Path) -> None:
    """One line on stderr when ``path`` (it holds NATS passwords) is group or world
    readable, with the command that fixes it."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        click.echo(
            f"warning: {path} is readable by other users and holds NATS passwords: "
            f"chmod 600 {shlex.quote(str(path))}",
            err=True,
        )


def save_config(home: Path, config: HomeConfig) -> None:
    home.mkdir(parents=True, exist_ok=True)
    write_atomic(home / CONFIG_FILE, msgspec.json.format(msgspec.json.encode(config)), 0o600)
