"""The backend never publishes a roster older than the fleet bucket's (issue 14, §1): an
honest backend started on a database restored from before a revocation must not undo it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import msgspec
from nats.aio.client import Client

from flashgate.backend import db
from flashgate.backend.service import Backend, BackendSettings
from flashgate.events.fleet import ROSTER_CODEC
from flashgate.events.signing import sign
from flashgate.events.subjects import FleetNames
from tests.support.databases import sqlite_url
from tests.support.fleets import FleetFixture


async def test_a_roster_below_the_buckets_is_not_published(
    tmp_path: Path, nats_url: str, nc: Client, fleet: FleetFixture
) -> None:
    url = sqlite_url(tmp_path / "restored.db")
    # a database that never saw the revocation: roster serial 1
    await asyncio.to_thread(db.migrate, url)
    first = Backend(BackendSettings(nats_urls=[nats_url], db_url=url, fleet_dir=fleet.dir))
    await first.start()
    await first.stop()
    kv = await nc.jetstream().key_value(fleet.names.fleet_bucket)
    newer = sign(
        msgspec.structs.replace(
            fleet.ceremony.roster,
            serial=2,
            issued_at=int(time.time() * 1000),
            signature="",
            nodes=[
                msgspec.structs.replace(n, status="revoked") if n.id == "node-3" else n
                for n in fleet.ceremony.roster.nodes
            ],
        ),
        fleet.admin,
    )
    await kv.put(FleetNames.ROSTER_KEY, ROSTER_CODEC.encode(newer))
    again = Backend(BackendSettings(nats_urls=[nats_url], db_url=url, fleet_dir=fleet.dir))
    await again.start()
    await again.stop()
    held = ROSTER_CODEC.decode((await kv.get(FleetNames.ROSTER_KEY)).value)
    assert held.serial == 2


async def test_a_forged_roster_in_the_bucket_is_replaced(
    tmp_path: Path, nats_url: str, nc: Client, fleet: FleetFixture
) -> None:
    """Only an admin-signed roster holds the backend back: junk is overwritten."""
    url = sqlite_url(tmp_path / "backend.db")
    await asyncio.to_thread(db.migrate, url)
    backend = Backend(BackendSettings(nats_urls=[nats_url], db_url=url, fleet_dir=fleet.dir))
    await backend.start()
    await backend.stop()
    kv = await nc.jetstream().key_value(fleet.names.fleet_bucket)
    forged = msgspec.structs.replace(fleet.ceremony.roster, serial=9)  # signature now wrong
    await kv.put(FleetNames.ROSTER_KEY, ROSTER_CODEC.encode(forged))
    backend = Backend(BackendSettings(nats_urls=[nats_url], db_url=url, fleet_dir=fleet.dir))
    await backend.start()
    await backend.stop()
    held = ROSTER_CODEC.decode((await kv.get(FleetNames.ROSTER_KEY)).value)
    assert held.serial == 1
