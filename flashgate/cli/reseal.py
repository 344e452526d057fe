"""``flashgate fleet reseal FILE``: change the passphrase of a node bundle or ``admin.key``."""

from __future__ import annotations

from pathlib import Path

import click

from flashgate import environment
from flashgate.cli.hardening import harden_process
from flashgate.cli.options import json_option
from flashgate.cli.output import emit
from flashgate.cli.passphrase import env_passphrase, prompt_passphrase
from flashgate.crypto import seal
from flashgate.environment import ADMIN_PASSPHRASE_ENV, NODE_PASSPHRASE_ENV, PASSPHRASE_ENV
from flashgate.errors import ConfigurationError, FlashgateError, MalformedSealedFile
from flashgate.fleet.bundle import ADMIN_KEY_PURPOSE, BUNDLE_PURPOSE, reseal
from flashgate.fleet.files import read_limited, write_atomic


@click.command("reseal")
@click.argument("file", type=click.Path(path_type=Path))
@click.option(
    "--old-passphrase-env",
    metavar="VAR",
    default=None,
    help=f"The current passphrase is in VAR (default: {ADMIN_PASSPHRASE_ENV} for admin.key, "
    f"{NODE_PASSPHRASE_ENV} for a bundle, else {PASSPHRASE_ENV}, else a prompt).",
)
@click.option(
    "--new-passphrase-env",
    metavar="VAR",
    default=None,
    help="The new passphrase is in VAR (default: a prompt, typed twice).",
)
@json_option
def reseal_cmd(
    file: Path, old_passphrase_env: str | None, new_passphrase_env: str | None, as_json: bool
) -> None:
    """Seal a node bundle or admin.key with a new passphrase.

    The file is fully opened and checked with the current passphrase, sealed again with
    the new one (a fresh salt), and replaced atomically (mode 0600): afterwards only the
    new passphrase opens it. The process is hardened before the file is opened."""
    harden_process()
    target = file.resolve() if file.is_symlink() else file
    blob = read_limited(target, seal.MAX_SEALED_BYTES, "sealed file")
    try:
        purpose = seal.sealed_purpose(blob)
    except FlashgateError as exc:
        raise MalformedSealedFile(f"{file}: {exc.message}") from exc
    old = (
        env_passphrase(old_passphrase_env)
        if old_passphrase_env
        else _passphrase(
            ADMIN_PASSPHRASE_ENV if purpose == ADMIN_KEY_PURPOSE else NODE_PASSPHRASE_ENV,
            f"current passphrase of {file}",
        )
    )
    new = (
        env_passphrase(new_passphrase_env)
        if new_passphrase_env
        else prompt_passphrase(
            f"new passphrase for {file}", confirm=True, hint="give --new-passphrase-env VAR"
        )
    )
    if new == old:
        raise ConfigurationError("the new passphrase is the current one")
    seal.check_passphrase(new)
    try:
        result = reseal(blob, old, new)
    except FlashgateError as exc:
        raise type(exc)(f"{file}: {exc.message}") from exc
    write_atomic(target, result.blob, 0o600)
    what = (
        f"node bundle of {result.node_id} (fleet {result.fleet!r}, epoch {result.epoch})"
        if purpose == BUNDLE_PURPOSE
        else f"admin key of fleet {result.fleet!r}"
    )
    emit(
        as_json,
        {
            "file": str(file),
            "kind": purpose,
            "fleet": result.fleet,
            "node_id": result.node_id,
            "epoch": result.epoch,
        },
        f"{file}: {what} resealed; only the new passphrase opens it",
    )


def _passphrase(var: str, prompt: str) -> str:
    """The file's own variable ``var``, else the old shared FLASHGATE_PASSPHRASE, else a
    prompt."""
    for name in (var, PASSPHRASE_ENV):
        if environment.is_set(name):
            return env_passphrase(name)
    return prompt_passphrase(
        prompt, confirm=False, hint=f"set {var} or give --old-passphrase-env VAR"
    )
