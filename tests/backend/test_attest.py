"""``envelope.attest`` (issue 14 §2, the migration of envelopes written before provenance):
the admin's statements over envelopes as they stand in the bucket are put into them, and
only into exactly the envelopes stated."""

from __future__ import annotations

import asyncio
import time

import msgspec
from sqlalchemy import update

from flashgate.backend.models import ApiKey, SecretVersion
from flashgate.backend.service import Backend
from flashgate.bridge.provenance import check_provenance
from flashgate.crypto.api_key_tokens import new_key_id, new_key_secret
from flashgate.errors import Unproven
from flashgate.events import commands as cmd
from flashgate.events.envelope import SecretEnvelope, statement_for
from flashgate.events.signing import sign
from tests.backend.test_commands import kv_envelope, wait_kv
from tests.support.admin_client import AdminClient
from tests.support.material import stated


def _no_rewraps(node: str, epoch: int) -> None:
    return None


async def _wait_proven(admin: AdminClient, key: str, timeout: float = 10.0) -> SecretEnvelope:
    deadline = time.monotonic() + timeout
    while True:
        env = await kv_envelope(admin, key)
        if env.provenance is not None:
            return env
        if time.monotonic() > deadline:
            raise TimeoutError(f"{key} never got its provenance")
        await asyncio.sleep(0.05)


async def test_old_envelopes_are_adopted_by_the_admins_statement(
    backend: Backend, admin: AdminClient
) -> None:
    await admin.send(admin.put("payments", "db", b"old value"))
    key_id = new_key_id()
    created = await admin.send(
        sign(
            stated(
                cmd.CreateApiKey,
                admin.fleet.admin,
                **admin.base(),
                key_id=key_id,
                repo="payments",
                scope="storage",
                access="read",
                label="old key",
                epoch=1,
                jwe=admin.jwe("payments", key_id, new_key_secret(), kind="apikey"),
            ),
            admin.fleet.admin,
        )
    )
    assert created.type == "io.flashgate.apikey.created", created.data
    # as written before provenance existed: no statement in the database or the bucket
    assert backend.store is not None
    async with backend.store.transaction() as session:
        await session.execute(update(SecretVersion).values(provenance=None))
        await session.execute(update(ApiKey).values(provenance=None))
    old = {}
    for key in ("payments.db", f"payments.{key_id}"):
        env = msgspec.structs.replace(await wait_kv(admin, key, 1), provenance=None)
        old[key] = env

    admin_public = admin.fleet.admin.public_key()
    for env in old.values():
        try:
            check_provenance(env, admin_public, _no_rewraps)
            raise AssertionError("an envelope without provenance was accepted")
        except Unproven:
            pass

    base = admin.base()
    statements = [
        sign(
            statement_for(env, command_id=base["command_id"], issued_at=base["issued_at"]),
            admin.fleet.admin,
        )
        for env in old.values()
    ]
    event = await admin.send(
        sign(cmd.AttestEnvelopes(**base, statements=statements), admin.fleet.admin)
    )
    assert event.type == "io.flashgate.envelope.attested", event.data
    assert event.data.count == 2
    for key in old:
        env = await _wait_proven(admin, key)
        check_provenance(env, admin_public, _no_rewraps)


async def test_a_statement_over_an_envelope_that_changed_is_refused(
    backend: Backend, admin: AdminClient
) -> None:
    await admin.send(admin.put("payments", "db", b"v1"))
    v1 = await wait_kv(admin, "payments.db", 1)
    await admin.send(admin.rotate("payments", "db", b"v2", version=2))
    await wait_kv(admin, "payments.db", 2)
    base = admin.base()
    statement = sign(
        statement_for(v1, command_id=base["command_id"], issued_at=base["issued_at"]),
        admin.fleet.admin,
    )
    event = await admin.send(
        sign(cmd.AttestEnvelopes(**base, statements=[statement]), admin.fleet.admin)
    )
    assert event.type == "io.flashgate.command.rejected"
    assert event.data.reason == "stale_version", event.data
