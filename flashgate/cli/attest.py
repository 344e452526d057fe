"""``flashgate fleet attest``: adopt the envelopes written before provenance existed.

Nodes load an envelope only with the admin's signed statement over it (DESIGN §8). An
envelope written by an older version carries none, so the nodes leave it pending
(``unproven``); so do they an envelope re-wrapped by a node revoked since. This command
reads every live envelope from the secrets bucket, signs a statement over each such one
exactly as it stands (its context, epoch, JWE digest and API key; a re-wrapped one only if
the admin's original statement still proves its body), and sends them in
``envelope.attest`` commands; the backend puts each into its envelope if that envelope is
still the one read.

The admin tooling cannot decrypt an envelope: this is trust on first use of what the bucket
holds at that moment. Run it once, right after upgrading, before anyone but the admin could
have written to the bucket since the last write the admin made (docs/security-model.md).

Because it signs what it did not write, it never signs silently: it lists every envelope it
would adopt (name, kind, version, API key scope and access) and signs only with ``--yes``.
And it is a migration, run once per admin home: the run that signs anything records it in
``HOME/attested.json``; a later run refuses unless ``--again``. After the upgrade, an
envelope without the admin's statement was not written by the admin tooling: adopting it
would hand a compromised backend exactly what provenance takes away (an adversarial review
of the first version of this command, which signed on every run, said so).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from flashgate.bridge.provenance import ProvenanceCheck
from flashgate.cli.home import home_file, resolve_home
from flashgate.cli.options import home_option, json_option
from flashgate.cli.output import emit
from flashgate.cli.session import AdminSession, run
from flashgate.errors import ConfigurationError, FlashgateError
from flashgate.events import commands as cmd
from flashgate.events.envelope import (
    ENVELOPE_CODEC,
    SecretEnvelope,
    check_statement,
    proven_api_key,
    statement_for,
)
from flashgate.events.signing import sign, verify
from flashgate.fleet.files import write_atomic

#: In the admin home: when ``fleet attest`` last signed envelopes, and how many.
ATTESTED_FILE = "attested.json"


def _needs_statement(envelope: SecretEnvelope, check: ProvenanceCheck) -> bool:
    """Not proven as the nodes check it: no statement (written before provenance), or a
    re-wrap attested by a node no longer active (revoked since). The latter is re-stated
    only if the admin's original statement still proves its body: the value is the
    admin's, only its wrapped key was written by a node."""
    try:
        check(envelope)
    except FlashgateError:
        pass
    else:
        return False
    provenance = envelope.provenance
    if provenance is None:
        return True
    try:
        check_statement(
            provenance.statement,
            envelope.context,
            api_key=proven_api_key(envelope.api_key),
            token=envelope.jwe,
            epoch=None,
        )
        verify(provenance.statement, check.admin)
    except FlashgateError:
        return False  # someone else's: never adopted (the nodes keep refusing it)
    return True


def _describe(envelope: SecretEnvelope) -> str:
    e = envelope
    what = f"{e.repo}/{e.name} {e.kind} v{e.version} epoch {e.epoch}"
    if e.api_key is not None:
        what += f" (API key {e.api_key.key_id}: {e.api_key.scope} {e.api_key.access})"
    return what


@click.command("attest")
@click.option("--yes", is_flag=True, help="Sign the envelopes listed (without it: only list).")
@click.option("--again", is_flag=True, help="Run although this home has attested before.")
@home_option
@json_option
def attest(yes: bool, again: bool, home: Path | None, as_json: bool) -> None:
    """Sign the envelopes written before provenance existed, as they stand (run once).

    Lists what it would sign; signs only with --yes. A home that has attested before is
    refused without --again: after the upgrade, an envelope without the admin's statement
    was not written by the admin tooling."""
    root = resolve_home(home)
    marker = home_file(root, ATTESTED_FILE)
    if marker.exists() and not again:
        raise ConfigurationError(
            f"this home attested envelopes before ({marker}); an envelope without the "
            "admin's statement now was not written by the admin tooling: find out who wrote "
            "it and rewrite the secret, or give --again if you are sure"
        )

    async def go() -> tuple[int, list[str], int]:
        async with AdminSession(root) as session:
            assert session.nc is not None
            admin = session.admin_key
            roster = await session.synced_roster()
            descriptor = session.descriptor
            check = ProvenanceCheck(
                admin=admin.public_key(),
                roster=lambda: roster,
                members=lambda epoch: (
                    {n.id: n.index for n in descriptor.nodes} if epoch == descriptor.epoch else None
                ),
            )
            kv = await session.nc.jetstream().key_value(session.names.secrets_bucket)
            try:
                keys = await kv.keys()
            except Exception:  # nats-py raises NoKeysError for an empty bucket
                keys = []
            todo: list[SecretEnvelope] = []
            for key in sorted(keys):
                entry = await kv.get(key)
                if entry.value is None or entry.operation is not None:
                    continue
                envelope = ENVELOPE_CODEC.decode(entry.value)
                if _needs_statement(envelope, check):
                    todo.append(envelope)
            listed = [_describe(envelope) for envelope in todo]
            if not yes:
                return len(keys), listed, 0
            for start in range(0, len(todo), cmd.MAX_ATTESTED):
                base = session.base()
                statements = [
                    sign(
                        statement_for(
                            envelope, command_id=base["command_id"], issued_at=base["issued_at"]
                        ),
                        admin,
                    )
                    for envelope in todo[start : start + cmd.MAX_ATTESTED]
                ]
                await session.send(
                    cmd.AttestEnvelopes(**base, statements=statements), show=not as_json
                )
            return len(keys), listed, len(todo)

    checked, listed, attested = run(go())
    if attested:
        record = {"at": int(time.time()), "attested": attested}
        write_atomic(marker, json.dumps(record).encode(), 0o600)
    if yes:
        text = f"{attested} of {checked} envelope(s) attested"
    else:
        text = "\n".join(
            [f"{len(listed)} of {checked} envelope(s) carry no statement of the admin's:"]
            + [f"  {line}" for line in listed]
            + ["sign them as they stand with --yes (only if the admin wrote them)"]
        )
    emit(
        as_json,
        {"checked": checked, "attested": attested, "unproven": listed},
        text,
    )
