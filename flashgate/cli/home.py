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

import os
import shlex
import stat
from pathlib import Path

import click
import msgspec

from flashgate.errors import ConfigurationError
from flashgate.fleet.files import write_atomic

HOME_ENV = "FLASHGATE_HOME"
CONFIG_FILE = "config.json"


class RoleLogin(msgspec.Struct, kw_only=True):
    user: str
    password: str

    def __repr__(self) -> str:
        return f"RoleLogin(user={self.user!r}, password=<redacted>)"


class HomeConfig(msgspec.Struct, kw_only=True):
    nats: list[str]
    logins: dict[str, RoleLogin] = {}


def resolve_home(home: Path | None) -> Path:
    return Path(home or os.environ.get(HOME_ENV) or ".flashgate")


def fleet_dir(home: Path) -> Path:
    return home / "fleet"


def load_config(home: Path) -> HomeConfig:
    path = home / CONFIG_FILE
    if not path.exists():
        url = os.environ.get("FLASHGATE_NATS_URL")
        if url:
            return HomeConfig(nats=[u.strip() for u in url.split(",") if u.strip()])
        from flashgate.cli.dev import flashgate_command  # the command as it can be run

        start = f"{flashgate_command()} dev up --home {shlex.quote(str(home))}"
        raise ConfigurationError(
            f"{path} does not exist: start the system with `{start}` or set FLASHGATE_NATS_URL"
        )
    warn_if_readable_by_others(path)
    try:
        return msgspec.json.decode(path.read_bytes(), type=HomeConfig)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ConfigurationError(f"{path} is not a valid config: {exc}") from exc


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
