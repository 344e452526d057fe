"""``flashgate secret``: put, rotate, delete and list secrets of a running system.

Values are encrypted here, with the pinned fleet public key (``fleet.json``): neither the
broker nor the backend ever sees them. The value comes from ``--value-file``, from stdin,
or for the storage and ai kinds from typed flags (assembled into a small JSON document;
give ``-`` for a secret flag to type it at a hidden prompt instead of on the command line).
"""

from __future__ import annotations

import getpass
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from flashgate.cli.home import resolve_home
from flashgate.cli.output import emit, json_option
from flashgate.cli.session import AdminSession, run
from flashgate.crypto.context import SecretContext
from flashgate.crypto.encrypt import encrypt_secret
from flashgate.crypto.jwe import MAX_PLAINTEXT_BYTES
from flashgate.errors import ConfigurationError, NotFound, OversizedInput
from flashgate.events import commands as cmd
from flashgate.events.queries import SecretInfo
from flashgate.names import validate_name

KINDS = ("storage", "ai", "integration", "generic")

home_option = click.option(
    "--home",
    type=click.Path(path_type=Path),
    default=None,
    help="Admin home (default $FLASHGATE_HOME or ./.flashgate).",
)


def split_target(target: str) -> tuple[str, str]:
    repo, sep, name = target.partition("/")
    if not sep:
        raise ConfigurationError(f"expected REPO/NAME, got {target[:80]!r}")
    return validate_name(repo, "repository name"), validate_name(name, "secret name")


def _secret_flag(value: str | None, label: str) -> str | None:
    if value == "-":
        return getpass.getpass(f"{label}: ")
    return value


def read_value(kind: str, value_file: Path | None, typed: dict[str, Any]) -> bytes:
    given = {k: v for k, v in typed.items() if v is not None}
    if value_file is not None and given:
        raise ConfigurationError("give the value either as --value-file or as typed flags")
    if value_file is not None:
        data = _read_file(value_file)
    elif given:
        if kind not in ("storage", "ai"):
            raise ConfigurationError("typed value flags are for the storage and ai kinds")
        given = {
            k: _secret_flag(v, k) if k in ("secret_access_key", "api_key") else v
            for k, v in given.items()
        }
        data = json.dumps({"type": kind, **given}, sort_keys=True).encode()
    else:
        if sys.stdin.isatty():
            raise ConfigurationError("no value: use --value-file, typed flags or stdin")
        data = sys.stdin.buffer.read(MAX_PLAINTEXT_BYTES + 1)
    if len(data) > MAX_PLAINTEXT_BYTES:
        raise OversizedInput(f"secret values are limited to {MAX_PLAINTEXT_BYTES} bytes")
    if not data:  # `cat missing | flashgate secret put ...` must not store an empty secret
        raise ConfigurationError("the value is empty")
    return data


def _read_file(path: Path) -> bytes:
    """At most one byte more than the limit, from a file or ('-') stdin; one-line errors."""
    if str(path) == "-":
        return sys.stdin.buffer.read(MAX_PLAINTEXT_BYTES + 1)
    try:
        with path.open("rb") as f:
            return f.read(MAX_PLAINTEXT_BYTES + 1)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read --value-file {str(path)[:200]}: {exc.strerror}"
        ) from None


def typed_value_options(fn: Any) -> Any:
    options = [
        click.option(
            "--value-file",
            type=click.Path(path_type=Path),
            default=None,
            help="Read the value from this file ('-' for stdin).",
        ),
        click.option("--provider", default=None, help="storage: s3|gcs|azure; ai: openai|..."),
        click.option("--bucket", default=None, help="storage: bucket or container."),
        click.option("--region", default=None, help="storage: region."),
        click.option("--endpoint", default=None, help="storage: endpoint URL."),
        click.option("--access-key-id", default=None, help="storage: access key id."),
        click.option("--secret-access-key", default=None, help="storage: secret ('-': prompt)."),
        click.option("--base-url", default=None, help="ai: API base URL."),
        click.option("--api-key", default=None, help="ai: API key ('-': prompt)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


TYPED = (
    "provider",
    "bucket",
    "region",
    "endpoint",
    "access_key_id",
    "secret_access_key",
    "base_url",
    "api_key",
)


async def find_secret(session: AdminSession, repo: str, name: str) -> SecretInfo | None:
    answer = await session.query("secrets", repo=repo, include_deleted=True, limit=1000)
    for info in answer.secrets or []:
        if info.name == name:
            return info
    return None


@click.group()
def secret() -> None:
    """Secrets of a running system (needs FLASHGATE_PASSPHRASE for the admin key)."""


async def _write(
    home: Path | None,
    target: str,
    kind: str | None,
    value_of: Callable[[str], bytes],
    rotate: bool,
    as_json: bool,
) -> None:
    """``value_of(kind)`` reads the value once the kind is known (a rotation keeps the
    secret's kind unless --kind is given, and typed flags depend on it)."""
    repo, name = split_target(target)
    async with AdminSession(resolve_home(home)) as session:
        info = await find_secret(session, repo, name)
        if rotate:
            if info is None or info.deleted:
                raise NotFound(f"{repo}/{name} does not exist; use `secret put`")
            kind = kind or info.kind
        elif info is not None and not info.deleted:
            raise ConfigurationError(
                f"{repo}/{name} exists at version {info.current_version}; use `secret rotate`"
            )
        assert kind is not None
        value = value_of(kind)
        version = (info.current_version + 1) if info is not None else 1
        epoch = int(session.descriptor.epoch)
        context = SecretContext(
            fleet=session.fleet, repo=repo, name=name, kind=kind, version=version
        )
        token = encrypt_secret(session.key, context, value)
        fields: dict[str, Any] = {
            "repo": repo,
            "name": name,
            "kind": kind,
            "version": version,
            "epoch": epoch,
            "jwe": token,
        }
        command: cmd.Command = (
            cmd.RotateSecret(**session.base(), **fields)
            if rotate
            else cmd.PutSecret(**session.base(), **fields)
        )
        event = await session.send(command, show=not as_json)
    emit(
        as_json,
        {
            "repo": repo,
            "name": name,
            "version": version,
            "kind": kind,
            "event": event.type,
            "command_id": command.command_id,
        },
        f"{repo}/{name}: version {version} ({'rotated' if rotate else 'created'})",
    )


@secret.command("put")
@click.argument("target", metavar="REPO/NAME")
@click.option("--kind", type=click.Choice(KINDS), required=True)
@typed_value_options
@home_option
@json_option
def put(
    target: str, kind: str, value_file: Path | None, home: Path | None, as_json: bool, **typed: Any
) -> None:
    """Create a secret (or re-create a deleted one at its next version)."""
    value = read_value(kind, value_file, {k: typed[k] for k in TYPED})
    run(_write(home, target, kind, lambda _: value, False, as_json))


@secret.command("rotate")
@click.argument("target", metavar="REPO/NAME")
@click.option("--kind", type=click.Choice(KINDS), default=None, help="Default: unchanged.")
@typed_value_options
@home_option
@json_option
def rotate(
    target: str,
    kind: str | None,
    value_file: Path | None,
    home: Path | None,
    as_json: bool,
    **typed: Any,
) -> None:
    """Replace a secret's value with a new version."""
    given = {k: typed[k] for k in TYPED}
    if kind is not None or not any(v is not None for v in given.values()):
        value = read_value(kind or "generic", value_file, given)  # before connecting
        run(_write(home, target, kind, lambda _: value, True, as_json))
    else:  # typed flags without --kind: the secret's own kind decides
        run(_write(home, target, kind, lambda k: read_value(k, value_file, given), True, as_json))


@secret.command("delete")
@click.argument("target", metavar="REPO/NAME")
@home_option
@json_option
def delete(target: str, home: Path | None, as_json: bool) -> None:
    """Delete a secret: every node purges it."""
    repo, name = split_target(target)

    async def go() -> None:
        async with AdminSession(resolve_home(home)) as session:
            event = await session.send(
                cmd.DeleteSecret(**session.base(), repo=repo, name=name), show=not as_json
            )
        emit(as_json, {"repo": repo, "name": name, "event": event.type}, f"{repo}/{name}: deleted")

    run(go())


@secret.command("list")
@click.argument("repo", required=False)
@click.option("--all", "include_deleted", is_flag=True, help="Include deleted secrets.")
@home_option
@json_option
def list_(repo: str | None, include_deleted: bool, home: Path | None, as_json: bool) -> None:
    """Secrets with their versions (metadata only)."""
    if repo is not None:
        validate_name(repo, "repository name")

    async def go() -> None:
        async with AdminSession(resolve_home(home), signing=False) as session:
            answer = await session.query(
                "secrets", repo=repo, include_deleted=include_deleted, limit=1000
            )
        rows = answer.secrets or []
        if as_json:
            click.echo(
                json.dumps(
                    [
                        {
                            "repo": s.repo,
                            "name": s.name,
                            "kind": s.kind,
                            "version": s.current_version,
                            "deleted": s.deleted,
                            "versions": [v.version for v in s.versions],
                        }
                        for s in rows
                    ],
                    sort_keys=True,
                )
            )
            return
        click.echo(f"{'SECRET':40} {'KIND':12} {'VERSION':>7}  STATE")
        for s in rows:
            click.echo(
                f"{s.repo + '/' + s.name:40} {s.kind:12} {s.current_version:>7}  "
                f"{'deleted' if s.deleted else 'live'}"
            )

    run(go())
