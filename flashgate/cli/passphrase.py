"""Where sealing passphrases come from: an environment variable (``FLASHGATE_PASSPHRASE``
by default, or one named per file), else a prompt on the terminal; for ``dev`` commands
only, the public dev passphrase (:data:`DEV_PASSPHRASE`) with a warning."""

from __future__ import annotations

import getpass
import os
import shlex
import sys

import click

from flashgate import environment
from flashgate.environment import PASSPHRASE_ENV
from flashgate.errors import ConfigurationError

#: Used only when FLASHGATE_PASSPHRASE is unset, only by ``dev`` commands, with a warning.
DEV_PASSPHRASE = "flashgate-local-dev-only"  # noqa: S105 - documented dev-only default


def passphrase_is_set() -> bool:
    return bool(environment.read(PASSPHRASE_ENV))


def dev_passphrase(*, sealing: bool) -> str:
    """``FLASHGATE_PASSPHRASE``, or the public dev passphrase with a warning that says
    what it is used for: ``sealing`` new files, or opening existing ones."""
    value = environment.read(PASSPHRASE_ENV)
    if value:
        return value
    use = "sealing the new fleet" if sealing else "opening the existing bundles"
    click.echo(
        f"warning: {PASSPHRASE_ENV} is unset; {use} with the public dev passphrase "
        "(fine for a local demo, never for real secrets)",
        err=True,
    )
    return DEV_PASSPHRASE


def passphrase_lines() -> list[str]:
    """Shell lines that give another shell the passphrase these commands need: the
    public dev passphrase is printed; a passphrase the user set never is."""
    if passphrase_is_set():
        return [f"# export {PASSPHRASE_ENV} (the passphrase you set for this home)"]
    return [f"export {PASSPHRASE_ENV}={shlex.quote(DEV_PASSPHRASE)}"]


def get_passphrase(*, confirm: bool) -> str:
    value = environment.read(PASSPHRASE_ENV)
    if value:
        return value
    if value == "":
        raise ConfigurationError(f"{PASSPHRASE_ENV} is set but empty")
    if not sys.stdin.isatty():
        raise ConfigurationError(
            f"no passphrase: set {PASSPHRASE_ENV} (stdin is not a terminal to prompt on)"
        )
    first = getpass.getpass("bundle passphrase: ")
    if confirm and getpass.getpass("again: ") != first:
        raise ConfigurationError("the passphrases do not match")
    if not first:
        raise ConfigurationError("empty passphrase")
    return first


def env_passphrase(var: str) -> str:
    """The passphrase in environment variable ``var`` (named by an option)."""
    value = environment.read(var)
    if value is None:
        raise ConfigurationError(f"environment variable {var} is not set")
    if value == "":
        raise ConfigurationError(f"environment variable {var} is set but empty")
    return value


def terminal_available() -> bool:
    """Can we prompt someone? stdin is a terminal, or (stdin carrying data, as for
    ``recover < envelope.jwe``) stderr is one and the controlling terminal opens."""
    if sys.stdin.isatty():
        return True
    if not sys.stderr.isatty():
        return False
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return False
    os.close(fd)
    return True


def prompt_passphrase(prompt: str, *, confirm: bool, hint: str) -> str:
    """Ask on the terminal (getpass reads /dev/tty); ``hint`` says what to set instead when
    there is no terminal."""
    if not terminal_available():
        raise ConfigurationError(f"no passphrase: {hint} (no terminal to prompt on)")
    first = getpass.getpass(f"{prompt}: ")
    if confirm and getpass.getpass("again: ") != first:
        raise ConfigurationError("the passphrases do not match")
    if not first:
        raise ConfigurationError("empty passphrase")
    return first
