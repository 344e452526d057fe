"""The ``flashgate`` command.

Every error the project raises on purpose ends as one line on stderr,
``flashgate: error: <cause>``, and exit status 1 (usage errors: click's status 2). No
traceback, and never a secret in the message. A command given ``--json`` also prints the
error as one JSON document on stdout (:mod:`flashgate.cli.output`).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from pathlib import Path

import click

from flashgate import __version__, environment, failpoints, logs
from flashgate.cli.apikey import apikey
from flashgate.cli.attest import attest
from flashgate.cli.backend import backend
from flashgate.cli.backend_key import backend_key
from flashgate.cli.bridge import bridge
from flashgate.cli.ceremony_progress import search_primes
from flashgate.cli.dev import dev
from flashgate.cli.fleet_status import status as fleet_status
from flashgate.cli.hardening import harden_process
from flashgate.cli.node_revoke import node
from flashgate.cli.output import ERROR_REPORTED, JSON_MODE, error_document
from flashgate.cli.passphrase import (
    ceremony_passphrases,
    env_passphrase,
    prompt_passphrase,
    warn_if_shared,
)
from flashgate.cli.reseal import reseal_cmd
from flashgate.cli.rotate_key import rotate_key
from flashgate.cli.schemas import schemas
from flashgate.cli.secret import secret
from flashgate.crypto.context import MAX_VERSION, SecretContext
from flashgate.crypto.encrypt import encrypt_secret
from flashgate.crypto.jwe import MAX_PLAINTEXT_BYTES, MAX_TOKEN_BYTES
from flashgate.crypto.threshold.dealing import DEFAULT_BITS
from flashgate.crypto.threshold.keys import MAX_PARTIES
from flashgate.environment import PASSPHRASE_ENV
from flashgate.errors import (
    ConfigurationError,
    DuplicateShares,
    FlashgateError,
    Interrupted,
    InvalidName,
    MalformedSealedFile,
    NotEnoughShares,
    OversizedInput,
    UnsealError,
)
from flashgate.events.envelope import ENVELOPE_CODEC, MAX_ENVELOPE_BYTES
from flashgate.events.values import KINDS
from flashgate.fleet.bundle import NodeBundle
from flashgate.fleet.ceremony import check_ceremony, default_node_ids, run_ceremony
from flashgate.fleet.descriptor import fleet_public_key
from flashgate.fleet.directory import check_out_dir, read_bundle, write_fleet_dir
from flashgate.fleet.files import load_descriptor
from flashgate.fleet.recovery import recover
from flashgate.names import validate_name


def _read_stdin(limit: int, what: str) -> bytes:
    data = sys.stdin.buffer.read(limit + 1)
    if len(data) > limit:
        raise OversizedInput(f"{what} on stdin is over {limit} bytes")
    return data


NameCallback = Callable[[click.Context, click.Parameter, str | None], str | None]


def _name(kind: str) -> NameCallback:
    """A click callback validating ``[a-z0-9_-]{1,64}``."""

    def callback(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        return None if value is None else validate_name(value, kind)

    return callback


def _kind(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if value not in KINDS:
        raise InvalidName(f"--kind {value[:40]!r} is not a secret kind ({', '.join(KINDS)})")
    return value


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="flashgate")
def cli() -> None:
    """Flashgate secret plane: threshold-RSA secrets for a fleet of Bridge Nodes."""
    logs.configure(level="warning")  # services (backend, bridge) configure their own


@cli.group()
def fleet() -> None:
    """Fleet key ceremony and fleet administration."""


@fleet.command("init")
@click.option(
    "--fleet",
    "fleet_name",
    required=True,
    callback=_name("fleet name"),
    help="Fleet name, [a-z0-9_-]{1,64}.",
)
@click.option("--nodes", type=int, required=True, help=f"Number of nodes n (1..{MAX_PARTIES}).")
@click.option("--threshold", type=int, required=True, help="Nodes needed to decrypt, t.")
@click.option(
    "--key-bits",
    type=int,
    default=DEFAULT_BITS,
    show_default=True,
    help="RSA modulus size; 2048 minimum.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    required=True,
    help="Directory for fleet.json, admin.key and nodes/.",
)
@click.option("--node-ids", help="Comma-separated node ids (default node-1 ... node-N).")
@click.option("--force", is_flag=True, help="Write into a non-empty directory.")
@click.option(
    "--insecure-test-key",
    is_flag=True,
    help="Allow key sizes under 2048 bits. NEVER for real secrets.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
def fleet_init(
    fleet_name: str,
    nodes: int,
    threshold: int,
    key_bits: int,
    out: Path,
    node_ids: str | None,
    force: bool,
    insecure_test_key: bool,
    quiet: bool,
) -> None:
    """Run the key ceremony: deal a t-of-n fleet key and seal one bundle per node.

    admin.key is sealed with FLASHGATE_ADMIN_PASSPHRASE, each node's bundle with its own
    FLASHGATE_PASSPHRASE_<NODE-ID> (FLASHGATE_PASSPHRASE_NODE_1 for node-1); one unset is
    prompted for on a terminal. FLASHGATE_PASSPHRASE alone seals every file with one
    passphrase (the weak setting; a warning says so). The process is hardened first (no
    core dumps, not dumpable, memory locked where allowed)."""
    harden_process(report_memory=not quiet)
    ids = [x.strip() for x in node_ids.split(",")] if node_ids else default_node_ids(nodes)
    if node_ids and len(ids) != nodes:
        raise ConfigurationError(f"--node-ids names {len(ids)} nodes, --nodes says {nodes}")
    check_ceremony(
        fleet=fleet_name,
        node_ids=ids,
        threshold=threshold,
        bits=key_bits,
        allow_insecure=insecure_test_key,
    )
    check_out_dir(out, force=force)
    passphrases = ceremony_passphrases(ids)
    if not quiet:
        warn_if_shared(passphrases)
    if insecure_test_key and key_bits < 2048 and not quiet:
        click.echo(f"warning: {key_bits}-bit INSECURE test key", err=True)
    primes = search_primes(key_bits, quiet=quiet)
    ceremony = run_ceremony(
        fleet=fleet_name,
        node_ids=ids,
        threshold=threshold,
        bits=key_bits,
        primes=primes,
        allow_insecure=insecure_test_key,
    )
    del primes
    failpoints.hit("ceremony.dealt")  # tests look at the process holding every share here
    if not quiet:
        click.echo("sealing bundles ...", err=True)
    written = write_fleet_dir(
        out, ceremony, passphrases.admin, node_passphrases=passphrases.nodes, force=force
    )
    if not quiet:
        d = ceremony.descriptor
        click.echo(
            f"fleet {d.fleet!r} epoch {d.epoch}: {threshold}-of-{nodes}, {key_bits}-bit key, "
            f"kid {d.public_key_jwk.kid}",
            err=True,
        )
        for path in written:
            click.echo(f"  wrote {path}", err=True)


@cli.command("encrypt")
@click.option("--fleet-dir", type=click.Path(path_type=Path), required=True)
@click.option("--repo", required=True, callback=_name("repository name"))
@click.option("--name", required=True, callback=_name("secret name"))
@click.option("--kind", required=True, callback=_kind, help=f"One of: {', '.join(KINDS)}.")
@click.option(
    "--version",
    "version",
    type=click.IntRange(min=1, max=MAX_VERSION),
    default=1,
    show_default=True,
)
def encrypt_cmd(fleet_dir: Path, repo: str, name: str, kind: str, version: int) -> None:
    """Encrypt stdin under the fleet key; print the JWE. Needs no passphrase."""
    descriptor = load_descriptor(fleet_dir)
    key = fleet_public_key(descriptor)
    plaintext = _read_stdin(MAX_PLAINTEXT_BYTES, "secret")
    context = SecretContext(
        fleet=descriptor.fleet, repo=repo, name=name, kind=kind, version=version
    )
    click.echo(encrypt_secret(key, context, plaintext))


@cli.command("recover")
@click.option("--fleet-dir", type=click.Path(path_type=Path), required=True)
@click.option(
    "--bundle",
    "bundles",
    type=click.Path(path_type=Path),
    multiple=True,
    required=True,
    help="A node bundle; give at least t of them.",
)
@click.option(
    "--passphrase-env",
    "passphrase_envs",
    multiple=True,
    metavar="BUNDLE=VAR",
    help="Bundle BUNDLE (its file name without .bundle, e.g. node-2, or its path as given) "
    f"is sealed with the passphrase in environment variable VAR. Repeatable. Other bundles: "
    f"{PASSPHRASE_ENV}, else a prompt per bundle on the terminal.",
)
def recover_cmd(
    fleet_dir: Path, bundles: tuple[Path, ...], passphrase_envs: tuple[str, ...]
) -> None:
    """Break-glass: decrypt a JWE from stdin with t node bundles, offline."""
    harden_process()  # before any bundle is opened: it holds shares
    descriptor = load_descriptor(fleet_dir)
    resolved = [p.resolve() for p in bundles]
    if len(set(resolved)) != len(resolved):
        raise DuplicateShares("the same bundle file was given more than once")
    if len(bundles) < descriptor.threshold:
        raise NotEnoughShares(
            f"{len(bundles)} bundle(s) given; fleet {descriptor.fleet!r} needs "
            f"{descriptor.threshold}"
        )
    env_of = _bundle_passphrase_envs(bundles, passphrase_envs)
    token, epoch = _read_envelope()
    opened = [_open_bundle(path, env_of.get(path)) for path in bundles]
    result = recover(descriptor, opened, token, labels=[str(p) for p in bundles], epoch=epoch)
    for faulty in result.faulty_nodes:
        click.echo(
            f"warning: bundle of {faulty!r} produced a faulty partial decryption and was left out",
            err=True,
        )
    if result.secret.context is None:
        click.echo(
            "note: this JWE carries no flashgate context (written by another tool); "
            "its location could not be checked",
            err=True,
        )
    else:
        click.echo(f"recovered {result.secret.context.describe()}", err=True)
    sys.stdout.buffer.write(result.secret.plaintext)
    sys.stdout.buffer.flush()


def _read_envelope() -> tuple[bytes, int | None]:
    """stdin: a compact JWE, or a whole envelope document (JSON, as in the secrets KV
    bucket) whose ``epoch`` lets recover check the fleet key epoch before decrypting."""
    data = _read_stdin(MAX_ENVELOPE_BYTES, "JWE or envelope")
    if not data.lstrip().startswith(b"{"):
        if len(data) > MAX_TOKEN_BYTES:
            raise OversizedInput(f"JWE on stdin is over {MAX_TOKEN_BYTES} bytes")
        return data, None
    envelope = ENVELOPE_CODEC.decode(data.strip())
    return envelope.jwe.encode("ascii"), envelope.epoch


def _bundle_name(path: Path) -> str:
    return path.name.removesuffix(".bundle")


def _bundle_passphrase_envs(bundles: tuple[Path, ...], options: tuple[str, ...]) -> dict[Path, str]:
    """``--passphrase-env BUNDLE=VAR`` options: bundle path -> variable name."""
    out: dict[Path, str] = {}
    for option in options:
        name, sep, var = option.partition("=")
        if not sep or not name or not var:
            raise ConfigurationError(f"--passphrase-env {option!r}: expected BUNDLE=VAR")
        matches = [p for p in bundles if name in (str(p), p.name, _bundle_name(p))]
        if len(matches) != 1:
            raise ConfigurationError(
                f"--passphrase-env {name}=...: {name!r} names "
                f"{'no' if not matches else len(matches)} --bundle; name it by its path"
            )
        if matches[0] in out:
            raise ConfigurationError(f"--passphrase-env names bundle {matches[0]} twice")
        out[matches[0]] = var
    return out


def _open_bundle(path: Path, env: str | None) -> NodeBundle:
    """Open one bundle with its own passphrase: its --passphrase-env variable, else
    FLASHGATE_PASSPHRASE, else a prompt on the terminal."""
    if env is not None:
        passphrase = env_passphrase(env)
    elif environment.is_set(PASSPHRASE_ENV):
        passphrase = env_passphrase(PASSPHRASE_ENV)
    else:
        passphrase = prompt_passphrase(
            f"passphrase of {path}",
            confirm=False,
            hint=f"set {PASSPHRASE_ENV}, or --passphrase-env {_bundle_name(path)}=VAR",
        )
    try:
        return read_bundle(path, passphrase)
    except MalformedSealedFile:
        raise
    except UnsealError as exc:
        if env is not None:
            source = env
        else:
            source = PASSPHRASE_ENV if environment.is_set(PASSPHRASE_ENV) else "the prompt"
        raise UnsealError(
            f"{exc.message} (passphrase from {source}; a bundle sealed with its own "
            f"passphrase: --passphrase-env {_bundle_name(path)}=VAR)"
        ) from exc


cli.add_command(dev)
cli.add_command(backend)
cli.add_command(bridge)
cli.add_command(secret)
cli.add_command(apikey)
cli.add_command(node)
fleet.add_command(fleet_status)
fleet.add_command(rotate_key)
fleet.add_command(reseal_cmd)
fleet.add_command(backend_key)
fleet.add_command(attest)
cli.add_command(schemas)


def _json_mode(meta: dict[str, object], exc: BaseException | None, args: list[str]) -> bool:
    """Was the failing command given --json? Recorded in ``ctx.meta`` by its (eager)
    ``--json`` option; a usage error found while parsing, before any option was processed,
    is told by the command having a --json option and ``--json`` being among the args."""
    if meta.get(ERROR_REPORTED):
        return False  # the command's own document carries the error
    if meta.get(JSON_MODE):
        return True
    ctx = getattr(exc, "ctx", None)
    if isinstance(exc, click.UsageError) and ctx is not None:
        has_json = any(p.name == "as_json" for p in ctx.command.params)
        given = args[: args.index("--")] if "--" in args else args
        return has_json and "--json" in given
    return False


def main(argv: list[str] | None = None) -> int:
    """Run the command; every error ends as one stderr line and an exit status, and under
    ``--json`` also as one JSON document on stdout (:mod:`flashgate.cli.output`)."""
    args = sys.argv[1:] if argv is None else list(argv)
    meta: dict[str, object] = {}
    error: BaseException | None = None
    try:
        try:
            with cli.make_context("flashgate", list(args)) as ctx:
                meta = ctx.meta
                cli.invoke(ctx)
        except (EOFError, KeyboardInterrupt) as exc:  # as click's own main does
            raise click.exceptions.Abort() from exc
    except click.exceptions.Exit as exc:  # --help, --version
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("flashgate: aborted", err=True)
        code, message, status = "aborted", "aborted", 130
    except click.ClickException as exc:
        exc.show()
        code = "usage_error" if isinstance(exc, click.UsageError) else "error"
        message, status, error = exc.format_message(), exc.exit_code, exc
    except FlashgateError as exc:
        click.echo(f"flashgate: error: {exc.message}", err=True)
        status = exc.exit_code if isinstance(exc, Interrupted) else 1
        code, message, error = exc.code, exc.message, exc
    except BrokenPipeError:
        return 1
    else:
        return 0
    if _json_mode(meta, error, args):
        with contextlib.suppress(BrokenPipeError):
            click.echo(error_document(code, message))
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
