"""``flashgate fleet attest`` (issue 14 §2): envelopes written before provenance existed
become loadable by the admin's statement over them as they stand, and only those.

What the CLI writes carries the admin's statement from the start; an envelope as an older
version wrote it (no statement in the database or the bucket) gets one from ``fleet attest``.
"""

from __future__ import annotations

import asyncio

import msgspec
import nats
import pytest

from flashgate.bridge.provenance import check_provenance
from flashgate.errors import Unproven
from flashgate.events.envelope import ENVELOPE_CODEC, SecretEnvelope
from flashgate.events.subjects import FleetNames
from flashgate.fleet.files import load_descriptor
from flashgate.fleet.identity_keys import load_ed25519_public
from tests.cli.test_secret_admin import Home, home, system  # noqa: F401  (fixtures)

pytestmark = pytest.mark.nats


def _no_rewraps(node: str, epoch: int) -> None:
    return None


async def _bucket(running: Home, key: str) -> tuple[SecretEnvelope, object]:
    nc = await nats.connect(running.nats_url)
    try:
        kv = await nc.jetstream().key_value(FleetNames(running.fleet).secrets_bucket)
        entry = await kv.get(key)
        assert entry.value is not None
        return ENVELOPE_CODEC.decode(entry.value), entry.revision
    finally:
        await nc.close()


async def _put_raw(running: Home, key: str, envelope: SecretEnvelope) -> None:
    nc = await nats.connect(running.nats_url)
    try:
        kv = await nc.jetstream().key_value(FleetNames(running.fleet).secrets_bucket)
        await kv.put(key, ENVELOPE_CODEC.encode(envelope))
    finally:
        await nc.close()


async def test_attest_adopts_old_envelopes_once(system: Home) -> None:  # noqa: F811
    running = system
    admin = load_ed25519_public(load_descriptor(running.path / "fleet").admin_key, "admin key")
    result = await running.run("secret", "put", "app/db-password", "--kind", "generic", input=b"pw")
    assert result.returncode == 0, str(result)
    written, _ = await _bucket(running, "app.db-password")
    check_provenance(written, admin, _no_rewraps)  # the CLI's own writes are proven

    # as an older version wrote it: no statement, in the database or the bucket
    await asyncio.to_thread(running.sql, "UPDATE secret_versions SET provenance = NULL")
    old = msgspec.structs.replace(written, provenance=None)
    await _put_raw(running, "app.db-password", old)
    with pytest.raises(Unproven):
        check_provenance(old, admin, _no_rewraps)

    # Without --yes it only lists what it would sign (nothing is signed).
    listed = await running.json("fleet", "attest")
    assert listed["attested"] == 0 and len(listed["unproven"]) == 1
    assert "app/db-password generic v1" in listed["unproven"][0]
    report = await running.json("fleet", "attest", "--yes")
    assert report["checked"] == 1 and report["attested"] == 1
    for _ in range(100):
        adopted, _ = await _bucket(running, "app.db-password")
        if adopted.provenance is not None:
            break
    check_provenance(adopted, admin, _no_rewraps)
    assert adopted.jwe == old.jwe
    [(stored,)] = await asyncio.to_thread(running.sql, "SELECT provenance FROM secret_versions")
    assert stored is not None

    # A migration, once per home: a second run is refused (whatever lacks a statement now
    # was not written by the admin tooling), unless --again.
    again = await running.run("fleet", "attest", "--yes")
    assert again.returncode != 0 and "attested envelopes before" in again.stderr.decode()
    report = await running.json("fleet", "attest", "--yes", "--again")
    assert report["checked"] == 1 and report["attested"] == 0
