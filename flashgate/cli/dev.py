"""``flashgate dev``: local, single-machine conveniences.

``dev up`` (:mod:`flashgate.cli.devup`) runs the whole system on this machine. ``dev demo``
runs the key ceremony into a home directory (once) and shows the offline path end to end:
encrypt a secret with the public key alone, recover it from t bundles. ``dev nats-config``
prints a deployment nats-server config (monitoring on loopback unless ``--monitor-address``
says otherwise) that includes its users; ``--authorization FLEET_DIR`` prints those: a
user per role and an NKey user per active node of the fleet directory.

Commands these print for the user to paste name ``flashgate`` as it can be run
(:func:`flashgate_command`) and export the passphrase when it is the public dev one
(:func:`flashgate.cli.passphrase.passphrase_lines`); a passphrase the user set is never
printed.
"""

from __future__ import annotations

import secrets
import shlex
from pathlib import Path

import click

from flashgate.cli.ceremony_progress import search_primes
from flashgate.cli.devup import up
from flashgate.cli.hardening import harden_process
from flashgate.cli.passphrase import dev_passphrases, passphrase_lines
from flashgate.crypto.context import SecretContext
from flashgate.crypto.encrypt import encrypt_secret
from flashgate.crypto.threshold.dealing import DEFAULT_BITS
from flashgate.errors import ConfigurationError, FlashgateError
from flashgate.events.values import check_value, typed_value
from flashgate.fleet.ceremony import default_node_ids, run_ceremony
from flashgate.fleet.descriptor import fleet_public_key
from flashgate.fleet.directory import read_bundle, write_fleet_dir
from flashgate.fleet.files import DESCRIPTOR_FILE, load_descriptor
from flashgate.fleet.recovery import recover
from flashgate.runnable import flashgate_command


@click.group()
def dev() -> None:
    """Local development: the local cluster (`up`), an offline demo, NATS config."""


dev.add_command(up)


@dev.command("demo")
@click.option(
    "--home",
    type=click.Path(path_type=Path),
    default=Path(".flashgate-demo"),
    show_default=True,
    help="Where the demo fleet lives.",
)
@click.option("--nodes", type=int, default=3, show_default=True)
@click.option("--threshold", type=int, default=2, show_default=True)
@click.option("--key-bits", type=int, default=DEFAULT_BITS, show_default=True)
@click.option("--insecure-test-key", is_flag=True, help="Allow key sizes under 2048 (tests).")
def demo(home: Path, nodes: int, threshold: int, key_bits: int, insecure_test_key: bool) -> None:
    """Ceremony (first run only), then encrypt a secret and recover it from t bundles."""
    harden_process()  # it deals a fleet key and opens t bundles
    fleet_dir = home.resolve() / "fleet"
    has_fleet = (fleet_dir / DESCRIPTOR_FILE).exists()
    node_ids = (
        [n.id for n in load_descriptor(fleet_dir).nodes] if has_fleet else default_node_ids(nodes)
    )
    passphrases = dev_passphrases(node_ids, sealing=not has_fleet)
    if not has_fleet:
        click.echo(f"1. key ceremony: fleet 'demo', {threshold}-of-{nodes}, {key_bits}-bit key")
        primes = search_primes(key_bits, quiet=False)
        ceremony = run_ceremony(
            fleet="demo",
            node_ids=default_node_ids(nodes),
            threshold=threshold,
            bits=key_bits,
            primes=primes,
            allow_insecure=insecure_test_key,
        )
        write_fleet_dir(fleet_dir, ceremony, passphrases.admin, node_passphrases=passphrases.nodes)
        click.echo(f"   wrote {fleet_dir}/fleet.json, admin.key, nodes/*.bundle")
    else:
        click.echo(f"1. key ceremony: reusing the fleet in {fleet_dir}")
    descriptor = load_descriptor(fleet_dir)
    key = fleet_public_key(descriptor)
    # A well-formed ai value (events/values.py), as `secret put --kind ai` would store it.
    value = typed_value(
        "ai", {"provider": "openai", "api_key": f"demo-api-key-{secrets.token_hex(16)}"}
    )
    context = SecretContext(
        fleet=descriptor.fleet, repo="demo-repo", name="openai", kind="ai", version=1
    )
    token = encrypt_secret(key, context, value)
    click.echo(
        f"2. encrypted a {len(value)}-byte secret with the public key only: "
        f"a {len(token)}-character JWE (RSA-OAEP-256 + A256GCM)"
    )
    chosen = default_node_ids(len(descriptor.nodes))[: descriptor.threshold]
    bundles = [
        read_bundle(fleet_dir / "nodes" / f"{n}.bundle", passphrases.nodes[n]) for n in chosen
    ]
    result = recover(descriptor, bundles, token, expected=context)
    if result.secret.plaintext != value:
        raise FlashgateError("demo recovery returned a different value")
    check_value(context.kind, result.secret.plaintext)  # what a node checks before it holds it
    click.echo(
        f"3. recovered {context.describe()} from {', '.join(chosen)}: "
        "the value matches (partial decryptions combined, y^e = c checked)"
    )
    fg = flashgate_command()
    fleet_arg = shlex.quote(str(fleet_dir))
    bundle_args = " ".join(
        f"--bundle {shlex.quote(str(fleet_dir / 'nodes' / f'{n}.bundle'))}" for n in chosen
    )
    click.echo("\ntry it yourself:")
    for line in passphrase_lines():
        click.echo(f"  {line}")
    click.echo(
        f"  printf %s hello | {fg} encrypt --fleet-dir {fleet_arg} --repo r --name n "
        "--kind generic > s.jwe"
    )
    click.echo(f"  {fg} recover --fleet-dir {fleet_arg} {bundle_args} < s.jwe")


def _host_port(ctx: click.Context, param: click.Parameter, value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter(f"{value!r} is not HOST:PORT (e.g. 127.0.0.1:8222)")
    return value


@dev.command("nats-config")
@click.option("--fleet", "fleet_name", required=True, help="Fleet name.")
@click.option(
    "--monitor-address",
    default="127.0.0.1:8222",
    show_default=True,
    callback=_host_port,
    help="HOST:PORT of the monitoring endpoint (it names every client and subject).",
)
@click.option(
    "--authorization",
    "fleet_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Print instead the users to include: the role logins and one NKey user per "
    "active node of this fleet directory (nats-nodes.json, roster.json).",
)
def nats_config(fleet_name: str, monitor_address: str, fleet_dir: Path | None) -> None:
    """Print a nats-server config (the users are included from auth/authorization.conf),
    or with --authorization the users themselves (passwords from the environment)."""
    from flashgate.broker.permissions import authorization_config, server_config
    from flashgate.events.subjects import FleetNames
    from flashgate.fleet.nats_identity import active_identities

    names = FleetNames(fleet_name)
    if fleet_dir is not None:
        if load_descriptor(fleet_dir).fleet != fleet_name:
            raise ConfigurationError(f"{fleet_dir} holds another fleet than {fleet_name!r}")
        click.echo(authorization_config(names, None, active_identities(fleet_dir)), nl=False)
        return
    click.echo(server_config(names, monitor_address=monitor_address), nl=False)
