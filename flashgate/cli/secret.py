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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from flashgate.cli.home import resolve_home
from flashgate.cli.options import home_option, json_option
from flashgate.cli.output import emit
from flashgate.cli.session import AdminSession, run
from flashgate.cli.statement import signed_statement
from flashgate.crypto import jwe
from flashgate.crypto.context import HEADER_PARAM, MAX_VERSION, SecretContext
from flashgate.crypto.encrypt import encrypt_secret
from flashgate.crypto.jwe import MAX_PLAINTEXT_BYTES, MAX_TOKEN_BYTES
from flashgate.crypto.publickey import FleetPublicKey, fleet_kid
from flashgate.errors import (
    ConfigurationError,
    FlashgateError,
    InvalidJwe,
    InvalidSecretValue,
    KindChange,
    NotFound,
    OversizedInput,
    VersionLimit,
)
from flashgate.events import commands as cmd
from flashgate.events.queries import Answer, SecretInfo
from flashgate.events.values import (
    AI_PROVIDERS,
    STORAGE_PROVIDERS,
    WRITABLE_KINDS,
    check_value,
    typed_value,
)
from flashgate.names import validate_name

#: Rows asked for per page of a listing (the most a query answers).
PAGE = 1000


def split_target(target: str) -> tuple[str, str]:
    repo, sep, name = target.partition("/")
    if not sep:
        raise ConfigurationError(f"expected REPO/NAME, got {target[:80]!r}")
    return validate_name(repo, "repository name"), validate_name(name, "secret name")


def _secret_flag(value: str | None, label: str) -> str | None:
    if value == "-":
        return getpass.getpass(f"{label}: ")
    return value


@dataclass(repr=False)
class ValueInput:
    """What the user gave as the value, read before connecting: the bytes of --value-file
    or stdin, typed flags, or a ready-made JWE (--jwe). It becomes a value once the
    secret's kind is known (:meth:`value`)."""

    data: bytes | None = None
    typed: dict[str, str] | None = None
    jwe: str | None = None

    def __repr__(self) -> str:  # holds the plaintext or credentials
        given = "jwe" if self.jwe is not None else "typed" if self.typed else "data"
        return f"ValueInput({given}=<redacted>)"

    def value(self, kind: str) -> bytes:
        """The plaintext, checked against ``kind`` (typed flags become the kind's JSON)."""
        if self.typed is not None:
            return typed_value(kind, self.typed)
        assert self.data is not None
        try:
            check_value(kind, self.data)
        except InvalidSecretValue as exc:
            article = "an" if kind[0] in "aeiou" else "a"
            raise InvalidSecretValue(
                f"the value is not {article} {kind} value: {exc.message}"
            ) from None
        return self.data


def read_input(value_file: Path | None, typed: dict[str, Any], jwe_file: Path | None) -> ValueInput:
    given = {k: v for k, v in typed.items() if v is not None}
    sources = [
        name
        for name, present in (
            ("--value-file", value_file is not None),
            ("typed flags", bool(given)),
            ("--jwe", jwe_file is not None),
        )
        if present
    ]
    if len(sources) > 1:
        raise ConfigurationError(f"give the value one way only, not {' and '.join(sources)}")
    if jwe_file is not None:
        return ValueInput(jwe=read_jwe_file(jwe_file))
    if given:
        return ValueInput(
            typed={
                k: v if k not in ("secret_access_key", "api_key") else _secret_flag(v, k) or ""
                for k, v in given.items()
            }
        )
    if value_file is not None:
        data = _read_file(value_file)
    else:
        if sys.stdin.isatty():
            raise ConfigurationError("no value: use --value-file, typed flags, --jwe or stdin")
        data = sys.stdin.buffer.read(MAX_PLAINTEXT_BYTES + 1)
    if len(data) > MAX_PLAINTEXT_BYTES:
        raise OversizedInput(f"secret values are limited to {MAX_PLAINTEXT_BYTES} bytes")
    if not data:  # `cat missing | flashgate secret put ...` must not store an empty secret
        raise ConfigurationError("the value is empty")
    return ValueInput(data=data)


def read_value(kind: str, value_file: Path | None, typed: dict[str, Any]) -> bytes:
    """The checked plaintext of a value given as --value-file, typed flags or stdin."""
    return read_input(value_file, typed, None).value(kind)


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


def read_jwe_file(path: Path) -> str:
    """The text of a --jwe file (one compact JWE), at most the largest token."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_TOKEN_BYTES + 2)
    except OSError as exc:
        raise ConfigurationError(f"cannot read --jwe {str(path)[:200]}: {exc.strerror}") from None
    if len(raw.strip()) > MAX_TOKEN_BYTES:
        raise OversizedInput(f"--jwe: a JWE is at most {MAX_TOKEN_BYTES} bytes")
    try:
        return raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise InvalidJwe("--jwe: the file is not a compact JWE (not ASCII)") from None


def check_jwe(token: str, key: FleetPublicKey, expected: SecretContext, epoch: int) -> None:
    """Check a JWE written elsewhere, as far as the admin can without the fleet's private
    key: the fleet profile (alg RSA-OAEP-256, enc A256GCM, no zip/crit/other parameters),
    ``kid`` (when present) naming this fleet's current key, the ``flashgate`` context
    header equal to the secret's, and a wrapped key that fits the fleet key. Raises
    :class:`InvalidJwe` saying exactly what is wrong."""
    try:
        parsed = jwe.parse(token)
    except FlashgateError as exc:
        raise InvalidJwe(f"--jwe: {exc.message}") from None
    kid = fleet_kid(expected.fleet, epoch)
    if "kid" in parsed.header and parsed.header["kid"] != kid:
        raise InvalidJwe(
            f"--jwe: kid is {str(parsed.header['kid'])[:80]!r}; the fleet key is {kid!r}"
        )
    if parsed.context is None:
        raise InvalidJwe(
            f"--jwe: the protected header has no {HEADER_PARAM!r} context; it must be "
            f"{json.dumps(expected.to_header(), sort_keys=True)}"
        )
    for field in ("fleet", "repo", "name", "kind", "version"):
        got, want = getattr(parsed.context, field), getattr(expected, field)
        if got != want:
            raise InvalidJwe(
                f"--jwe: the context's {field} is {got!r}; {expected.repo}/{expected.name} "
                f"needs {want!r} (context {json.dumps(expected.to_header(), sort_keys=True)})"
            )
    try:
        parsed.wrapped_key(key)
    except FlashgateError as exc:
        raise InvalidJwe(
            f"--jwe: {exc.message} (encrypt to the fleet public key of epoch {epoch}, {kid})"
        ) from None


def typed_value_options(fn: Any) -> Any:
    options = [
        click.option(
            "--value-file",
            type=click.Path(path_type=Path),
            default=None,
            help="Read the value from this file ('-' for stdin).",
        ),
        click.option(
            "--jwe",
            "jwe_file",
            type=click.Path(path_type=Path),
            default=None,
            help="A JWE written by another JOSE library for this secret and version "
            "(checked: alg, enc, kid, context).",
        ),
        click.option(
            "--provider",
            default=None,
            help=f"storage: {'|'.join(STORAGE_PROVIDERS)}; ai: {'|'.join(AI_PROVIDERS)}.",
        ),
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
    """The secret ``repo/name`` (live or deleted), looked up by name."""
    answer = await session.query("secrets", repo=repo, name=name, include_deleted=True, limit=1)
    found = [info for info in answer.secrets or [] if (info.repo, info.name) == (repo, name)]
    return found[0] if found else None


async def every_page(session: AdminSession, what: str, **query: Any) -> list[Answer]:
    """Every page of a ``secrets`` or ``apikeys`` listing (1000 rows a page), following
    each answer's ``next`` cursor."""
    pages: list[Answer] = []
    after: str | None = None
    while True:
        cursor = {} if after is None else {"after": after}  # an older backend knows no cursor
        answer = await session.query(what, **query, limit=PAGE, **cursor)
        pages.append(answer)
        if answer.next is None or answer.next == after:
            return pages
        after = answer.next


def next_version(repo: str, name: str, info: SecretInfo | None) -> int:
    """The version a write of ``repo/name`` gives (its current one + 1, live or deleted)."""
    if info is None:
        return 1
    if info.current_version >= MAX_VERSION:
        raise VersionLimit(
            f"{repo}/{name} is at version {info.current_version}, the highest a secret can "
            "have: it cannot be written again; use another name"
        )
    return info.current_version + 1


@click.group()
def secret() -> None:
    """Secrets of a running system (needs FLASHGATE_ADMIN_PASSPHRASE for the admin key)."""


async def _write(
    home: Path | None,
    target: str,
    kind: str | None,
    given: ValueInput,
    rotate: bool,
    as_json: bool,
) -> None:
    """Write the next version of ``target``. A rotation keeps the secret's kind (``kind``,
    when given, must be it); the value is checked against the kind once it is known."""
    repo, name = split_target(target)
    async with AdminSession(resolve_home(home)) as session:
        info = await find_secret(session, repo, name)
        if rotate:
            if info is None or info.deleted:
                raise NotFound(f"{repo}/{name} does not exist; use `secret put`")
            if kind is not None and kind != info.kind:
                raise KindChange(
                    f"{repo}/{name} is of kind {info.kind}, not {kind}: a rotation keeps the "
                    f"kind (to change it, `secret delete {repo}/{name}` then `secret put` it)"
                )
            kind = info.kind
        elif info is not None and not info.deleted:
            raise ConfigurationError(
                f"{repo}/{name} exists at version {info.current_version}; use `secret rotate`"
            )
        assert kind is not None
        version = next_version(repo, name, info)
        epoch = int(session.descriptor.epoch)
        context = SecretContext(
            fleet=session.fleet, repo=repo, name=name, kind=kind, version=version
        )
        if given.jwe is not None:
            check_jwe(given.jwe, session.key, context, epoch)
            token = given.jwe
        else:
            try:
                value = given.value(kind)
            except InvalidSecretValue as exc:
                if rotate and "missing:" in exc.message:
                    raise InvalidSecretValue(
                        f"{repo}/{name}: {exc.message} (a rotation replaces the whole value: "
                        "the old one cannot be read here)"
                    ) from None
                raise InvalidSecretValue(f"{repo}/{name}: {exc.message}") from None
            token = encrypt_secret(session.key, context, value)
        base = session.base()
        fields: dict[str, Any] = {
            "statement": signed_statement(
                session.admin_key, base, context, epoch=epoch, token=token
            ),
            "repo": repo,
            "name": name,
            "kind": kind,
            "version": version,
            "epoch": epoch,
            "jwe": token,
        }
        command: cmd.Command = (
            cmd.RotateSecret(**base, **fields) if rotate else cmd.PutSecret(**base, **fields)
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
@click.option("--kind", type=click.Choice(WRITABLE_KINDS), required=True)
@typed_value_options
@home_option
@json_option
def put(
    target: str,
    kind: str,
    value_file: Path | None,
    jwe_file: Path | None,
    home: Path | None,
    as_json: bool,
    **typed: Any,
) -> None:
    """Create a secret (or re-create a deleted one at its next version)."""
    split_target(target)
    given = read_input(value_file, {k: typed[k] for k in TYPED}, jwe_file)
    if given.jwe is None:
        try:
            given.value(kind)  # refused before connecting
        except InvalidSecretValue as exc:
            raise InvalidSecretValue(f"{target}: {exc.message}") from None
    run(_write(home, target, kind, given, False, as_json))


@secret.command("rotate")
@click.argument("target", metavar="REPO/NAME")
@click.option(
    "--kind",
    type=click.Choice(WRITABLE_KINDS),
    default=None,
    help="The secret's kind (a rotation never changes it; default: the secret's own).",
)
@typed_value_options
@home_option
@json_option
def rotate(
    target: str,
    kind: str | None,
    value_file: Path | None,
    jwe_file: Path | None,
    home: Path | None,
    as_json: bool,
    **typed: Any,
) -> None:
    """Replace a secret's value with a new version (the whole value: typed flags must
    give every field the kind and provider need)."""
    split_target(target)
    given = read_input(value_file, {k: typed[k] for k in TYPED}, jwe_file)
    run(_write(home, target, kind, given, True, as_json))


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
            pages = await every_page(session, "secrets", repo=repo, include_deleted=include_deleted)
        rows = [info for answer in pages for info in answer.secrets or []]
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
