"""``flashgate apikey``: repository API keys, made client-side and shown exactly once."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import get_args

import click

from flashgate.cli.home import load_home_roster, resolve_home
from flashgate.cli.options import home_option, json_option
from flashgate.cli.output import emit, mark_error_reported
from flashgate.cli.secret import every_page
from flashgate.cli.session import AdminSession, run
from flashgate.cli.statement import signed_statement
from flashgate.crypto.api_key_tokens import is_key_id, new_key_id, new_key_secret
from flashgate.crypto.context import SecretContext
from flashgate.crypto.encrypt import encrypt_secret
from flashgate.errors import ApiKeyRefused, ConfigurationError, NoOutcome
from flashgate.events import commands as cmd
from flashgate.events.envelope import ProvenApiKey
from flashgate.events.types import StorageAccess
from flashgate.events.values import AI_PROVIDERS
from flashgate.names import validate_name
from flashgate.runnable import command

STORAGE_ACCESS: tuple[str, ...] = get_args(StorageAccess)  # the wire type decides
#: A key's name: what the wire's Label allows (flashgate/events/types.py).
MAX_NAME_CHARS = 128


def check_label(name: str) -> str:
    """A key's --name: 1 to 128 characters of one line (errors name --name)."""
    if not name.strip():
        raise ConfigurationError("--name is empty: give the key a name for people")
    if len(name) > MAX_NAME_CHARS:
        raise ConfigurationError(f"--name is {len(name)} characters; at most {MAX_NAME_CHARS}")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise ConfigurationError("--name must be one line without control characters")
    return name


def check_access(scope: str, access: str | None) -> str:
    """--access for the scope: read|write|admin for storage, a provider for ai."""
    choices = STORAGE_ACCESS if scope == "storage" else AI_PROVIDERS
    if access is None:
        if scope == "storage":
            return "read"
        raise ConfigurationError(f"ai keys need --access PROVIDER ({'|'.join(choices)})")
    if access not in choices:
        raise ConfigurationError(
            f"--access {access[:40]!r} is not valid for {scope} keys ({'|'.join(choices)})"
        )
    return access


@click.group()
def apikey() -> None:
    """Repository API keys (needs FLASHGATE_ADMIN_PASSPHRASE for the admin key)."""


@apikey.command("create")
@click.argument("repo")
@click.option("--scope", type=click.Choice(["storage", "ai"]), required=True)
@click.option("--name", "label", required=True, help="A label for people (can be renamed).")
@click.option(
    "--access",
    default=None,
    help=f"storage: {'|'.join(STORAGE_ACCESS)} (default read); ai: the provider "
    f"({'|'.join(AI_PROVIDERS)}).",
)
@home_option
@json_option
def create(
    repo: str, scope: str, label: str, access: str | None, home: Path | None, as_json: bool
) -> None:
    """Create an API key. Its secret is printed once and cannot be shown again."""
    validate_name(repo, "repository name")
    label = check_label(label)
    access = check_access(scope, access)
    key_id, secret = new_key_id(), new_key_secret()

    async def go() -> None:
        async with AdminSession(resolve_home(home)) as session:
            epoch = int(session.descriptor.epoch)
            context = SecretContext(
                fleet=session.fleet, repo=repo, name=key_id, kind="apikey", version=1
            )
            token = encrypt_secret(session.key, context, secret)
            base = session.base()
            proven = ProvenApiKey(key_id=key_id, scope=scope, access=access)  # type: ignore[arg-type]
            statement = signed_statement(
                session.admin_key, base, context, epoch=epoch, token=token, api_key=proven
            )
            try:
                await session.send(
                    cmd.CreateApiKey(
                        **base,
                        statement=statement,
                        key_id=key_id,
                        repo=repo,
                        scope=scope,  # type: ignore[arg-type]
                        access=access,
                        label=label,
                        epoch=epoch,
                        jwe=token,
                    ),
                    show=not as_json,
                )
            except NoOutcome as exc:
                # The command is out: the backend may still apply it. The secret is shown
                # anyway, or a key created late would have a secret nobody ever saw.
                unconfirmed.append(exc)

    unconfirmed: list[NoOutcome] = []
    run(go())
    shown = secret.decode()
    if as_json:
        document: dict[str, object] = {
            "key_id": key_id,
            "secret": shown,
            "repo": repo,
            "scope": scope,
            "access": access,
            "name": label,
        }
        if unconfirmed:  # one document: the secret, and why the exit status is 1
            document["error"] = {"code": unconfirmed[0].code, "message": unconfirmed[0].message}
            mark_error_reported()
        click.echo(json.dumps(document, sort_keys=True))
    else:
        click.echo(f"key id:  {key_id}\nsecret:  {shown}")
    click.echo(
        "warning: this is the only time the secret is shown; store it now. "
        "A lost secret means a new key.",
        err=True,
    )
    if unconfirmed:
        click.echo(
            f"warning: {unconfirmed[0]}; the key may still be created: if "
            f"`{command('apikey', 'list', repo, '--home', resolve_home(home))}` shows {key_id}, "
            "the secret above is its secret",
            err=True,
        )
        raise unconfirmed[0]


@apikey.command("list")
@click.argument("repo", required=False)
@click.option("--all", "include_revoked", is_flag=True, help="Include revoked keys.")
@home_option
@json_option
def list_(repo: str | None, include_revoked: bool, home: Path | None, as_json: bool) -> None:
    """API keys (metadata only)."""

    async def go() -> None:
        async with AdminSession(resolve_home(home), signing=False) as session:
            pages = await every_page(session, "apikeys", repo=repo, include_deleted=include_revoked)
        keys = [key for answer in pages for key in answer.api_keys or []]
        if as_json:
            click.echo(
                json.dumps(
                    [
                        {
                            "key_id": k.key_id,
                            "repo": k.repo,
                            "scope": k.scope,
                            "access": k.access,
                            "name": k.label,
                            "revoked": k.revoked_at is not None,
                        }
                        for k in keys
                    ],
                    sort_keys=True,
                )
            )
            return
        click.echo(f"{'KEY ID':30} {'REPO':20} {'SCOPE':8} {'ACCESS':10} NAME")
        for k in keys:
            state = " (revoked)" if k.revoked_at else ""
            click.echo(f"{k.key_id:30} {k.repo:20} {k.scope:8} {k.access:10} {k.label}{state}")

    run(go())


@apikey.command("revoke")
@click.argument("key_id")
@home_option
@json_option
def revoke(key_id: str, home: Path | None, as_json: bool) -> None:
    """Revoke an API key (kept for audit; every node forgets its secret)."""
    if not is_key_id(key_id):
        raise ConfigurationError(f"{key_id[:40]!r} is not an API key id (fgk_...)")

    async def go() -> None:
        async with AdminSession(resolve_home(home)) as session:
            event = await session.send(
                cmd.RevokeApiKey(**session.base(), key_id=key_id), show=not as_json
            )
        emit(as_json, {"key_id": key_id, "event": event.type}, f"{key_id}: revoked")

    run(go())


@apikey.command("rename")
@click.argument("key_id")
@click.option("--name", "label", required=True, help="The key's new name.")
@home_option
@json_option
def rename(key_id: str, label: str, home: Path | None, as_json: bool) -> None:
    """Give an API key a new name (its id and secret do not change)."""
    if not is_key_id(key_id):
        raise ConfigurationError(f"{key_id[:40]!r} is not an API key id (fgk_...)")
    label = check_label(label)

    async def go() -> None:
        async with AdminSession(resolve_home(home)) as session:
            event = await session.send(
                cmd.RenameApiKey(**session.base(), key_id=key_id, label=label),
                show=not as_json,
            )
        emit(
            as_json,
            {"key_id": key_id, "name": label, "event": event.type},
            f"{key_id}: renamed to {label}",
        )

    run(go())


@apikey.command("verify")
@click.argument("key_id")
@click.option(
    "--node",
    "nodes",
    multiple=True,
    help="Ask only this node (repeatable); default: every active node of the roster.",
)
@home_option
@json_option
def verify_(key_id: str, nodes: tuple[str, ...], home: Path | None, as_json: bool) -> None:
    """Check an API key secret (read from stdin) against each node's vault.

    The secret is sealed to each node's identity key (the broker never sees it); each node
    answers, signed, whether its `verify_api_key` accepts it. Exit status 1 unless every
    node asked accepts it.
    """
    if not is_key_id(key_id):
        raise ConfigurationError(f"{key_id[:40]!r} is not an API key id (fgk_...)")
    presented = sys.stdin.buffer.read(4096).strip()
    if not presented:
        raise ConfigurationError("pipe the API key secret on stdin")
    root = resolve_home(home)

    async def go() -> dict[str, str]:
        async with AdminSession(root) as session:
            roster = load_home_roster(root, session.descriptor)
            entries = [n for n in roster.nodes if n.status == "active"]
            if nodes:
                unknown = set(nodes) - {n.id for n in entries}
                if unknown:
                    raise ConfigurationError(f"not active in the roster: {sorted(unknown)}")
                entries = [n for n in entries if n.id in nodes]
            results = await asyncio.gather(
                *(session.check_api_key(n, key_id, presented) for n in entries)
            )
        return {
            n.id: "offline" if r is None else ("valid" if r.valid else (r.refused or "invalid"))
            for n, r in zip(entries, results, strict=True)
        }

    outcome = run(go())
    bad = sorted(n for n, v in outcome.items() if v != "valid")
    refused = ApiKeyRefused(f"not accepted by {', '.join(bad)}") if bad else None
    if as_json:  # one document: the verdicts, and why the exit status is 1
        document: dict[str, object] = {"key_id": key_id, "nodes": outcome}
        if refused is not None:
            document["error"] = {"code": refused.code, "message": refused.message}
            mark_error_reported()
        click.echo(json.dumps(document, sort_keys=True))
    else:
        for node_id, verdict in outcome.items():
            click.echo(f"{node_id:16} {verdict}")
    if refused is not None:
        raise refused
