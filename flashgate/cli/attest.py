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
"""

from __future__ import annotations

from pathlib import Path

import click

from flashgate.bridge.provenance import ProvenanceCheck
from flashgate.cli.home import resolve_home
from flashgate.cli.options import home_option, json_option
from flashgate.cli.output import emit
from flashgate.cli.session import AdminSession, run
from flashgate.errors import FlashgateError
from flashgate.events import commands as cmd
from flashgate.events.envelope import (
    ENVELOPE_CODEC,
    SecretEnvelope,
    check_statement,
    proven_api_key,
    statement_for,
)
from flashgate.events.signing import sign, verify


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


@click.command("attest")
@home_option
@json_option
def attest(home: Path | None, as_json: bool) -> None:
    """Sign the envelopes written before provenance existed, as they stand (run once)."""

    async def go() -> tuple[int, int]:
        async with AdminSession(resolve_home(home)) as session:
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
            return len(keys), len(todo)

    checked, attested = run(go())
    emit(
        as_json,
        {"checked": checked, "attested": attested},
        f"{attested} of {checked} envelope(s) attested",
    )
