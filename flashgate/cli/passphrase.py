"""Where sealing passphrases come from. One passphrase per holder:

- ``admin.key``: ``FLASHGATE_ADMIN_PASSPHRASE`` (``fleet init``, the admin tooling);
- a node's bundle: ``FLASHGATE_PASSPHRASE_<ID>`` at ``fleet init`` and ``dev up``
  (:func:`flashgate.environment.node_passphrase_env`), ``FLASHGATE_NODE_PASSPHRASE`` in
  the bridge that opens it.

Each falls back to the old single ``FLASHGATE_PASSPHRASE`` when its own variable is unset
(the weak setting: whoever holds one file's passphrase holds every file's; ``fleet init``
warns), then to a prompt on the terminal. ``dev`` commands use the public dev passphrase
(:data:`DEV_PASSPHRASE`) for what has no passphrase set, with a warning.
"""

from __future__ import annotations

import getpass
import os
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import click

from flashgate import environment
from flashgate.crypto.seal import check_passphrase
from flashgate.environment import (
    ADMIN_PASSPHRASE_ENV,
    NODE_PASSPHRASE_ENV,
    PASSPHRASE_ENV,
    node_passphrase_env,
)
from flashgate.errors import ConfigurationError

#: Used only by ``dev`` commands, for files with no passphrase set, with a warning.
DEV_PASSPHRASE = "flashgate-local-dev-only"  # noqa: S105 - documented dev-only default


def _value(var: str) -> str | None:
    """Variable ``var``'s value; None when unset; refused when set but empty."""
    value = environment.read(var)
    if value == "":
        raise ConfigurationError(f"{var} is set but empty")
    return value


def _own_or_shared(var: str) -> str | None:
    """``var``, else the shared ``FLASHGATE_PASSPHRASE``, else None."""
    return _value(var) or _value(PASSPHRASE_ENV)


def uses_shared_passphrase(var: str) -> bool:
    """Whether a file whose own variable is ``var`` is opened with ``FLASHGATE_PASSPHRASE``."""
    return not environment.read(var) and bool(environment.read(PASSPHRASE_ENV))


def admin_passphrase() -> str:
    """The passphrase of ``admin.key``: ``FLASHGATE_ADMIN_PASSPHRASE``, else
    ``FLASHGATE_PASSPHRASE``, else a prompt."""
    return _own_or_shared(ADMIN_PASSPHRASE_ENV) or prompt_passphrase(
        "admin key passphrase", confirm=False, hint=f"set {ADMIN_PASSPHRASE_ENV}"
    )


def node_passphrase(bundle: Path) -> str:
    """A bridge's passphrase, of its own bundle: ``FLASHGATE_NODE_PASSPHRASE``, else
    ``FLASHGATE_PASSPHRASE``, else a prompt. Never the admin's."""
    return _own_or_shared(NODE_PASSPHRASE_ENV) or prompt_passphrase(
        f"passphrase of {bundle}", confirm=False, hint=f"set {NODE_PASSPHRASE_ENV}"
    )


@dataclass(frozen=True)
class FleetPassphrases:
    """The passphrases a ceremony seals with: ``admin.key``'s and each node's bundle's."""

    admin: str = field(repr=False)
    nodes: dict[str, str] = field(repr=False)

    def shared(self) -> list[str]:
        """The files sealed with a passphrase another file is sealed with too."""
        files = {"admin.key": self.admin} | {f"{n}.bundle": p for n, p in self.nodes.items()}
        values = list(files.values())
        return [name for name, value in files.items() if values.count(value) > 1]


def _check_variables(node_ids: Sequence[str]) -> None:
    seen: dict[str, str] = {}
    for node_id in node_ids:
        var = node_passphrase_env(node_id)
        if var in seen:
            raise ConfigurationError(
                f"nodes {seen[var]!r} and {node_id!r} would both take their passphrase from "
                f"{var}; give them ids that differ in more than - and _"
            )
        seen[var] = node_id


def ceremony_passphrases(node_ids: Sequence[str]) -> FleetPassphrases:
    """``fleet init``: admin.key's passphrase and each bundle's, from their variables (or
    ``FLASHGATE_PASSPHRASE``), else prompted for, twice each; every one checked."""
    _check_variables(node_ids)
    admin = _own_or_shared(ADMIN_PASSPHRASE_ENV) or prompt_passphrase(
        "admin key passphrase", confirm=True, hint=f"set {ADMIN_PASSPHRASE_ENV}"
    )
    check_passphrase(admin)
    nodes: dict[str, str] = {}
    for node_id in node_ids:
        var = node_passphrase_env(node_id)
        value = _own_or_shared(var) or prompt_passphrase(
            f"passphrase of {node_id}'s bundle", confirm=True, hint=f"set {var} for {node_id}"
        )
        check_passphrase(value)
        nodes[node_id] = value
    return FleetPassphrases(admin=admin, nodes=nodes)


def warn_if_shared(passphrases: FleetPassphrases) -> None:
    """One warning line when files share a passphrase (never the passphrase itself)."""
    shared = passphrases.shared()
    if not shared:
        return
    named = ", ".join(shared[:4]) + (f" and {len(shared) - 4} more" if len(shared) > 4 else "")
    click.echo(
        f"warning: {named} share a passphrase: one passphrase for everything is the weak "
        f"setting (a bridge could open admin.key or another node's bundle); set "
        f"{ADMIN_PASSPHRASE_ENV} and {PASSPHRASE_ENV}_<NODE-ID> per node "
        f"(e.g. {node_passphrase_env('node-1')})",
        err=True,
    )


def dev_passphrases(node_ids: Sequence[str], *, sealing: bool) -> FleetPassphrases:
    """``dev`` commands: each file's variable (or ``FLASHGATE_PASSPHRASE``), else the public
    dev passphrase, with a warning that says what it is used for: ``sealing`` new files, or
    opening existing ones."""
    _check_variables(node_ids)
    admin = _own_or_shared(ADMIN_PASSPHRASE_ENV)
    nodes = {n: _own_or_shared(node_passphrase_env(n)) for n in node_ids}
    if admin is None or None in nodes.values():
        use = "sealing the new fleet" if sealing else "opening the existing bundles"
        click.echo(
            f"warning: no passphrase set ({ADMIN_PASSPHRASE_ENV}, "
            f"{PASSPHRASE_ENV}_<NODE-ID> or {PASSPHRASE_ENV}); {use} with the public dev "
            "passphrase (fine for a local demo, never for real secrets)",
            err=True,
        )
    return FleetPassphrases(
        admin=admin or DEV_PASSPHRASE,
        nodes={n: p or DEV_PASSPHRASE for n, p in nodes.items()},
    )


def passphrase_lines(var: str = PASSPHRASE_ENV) -> list[str]:
    """Shell lines that give another shell the passphrase in ``var`` these commands need:
    the public dev passphrase is printed; a passphrase the user set never is."""
    if _value(var) or _value(PASSPHRASE_ENV):
        return [f"# export {var} (the passphrase you set for this home)"]
    return [f"export {var}={shlex.quote(DEV_PASSPHRASE)}"]


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
