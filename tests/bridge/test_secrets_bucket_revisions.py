"""Which revisions of the secrets bucket a responder reads (real nats-server): only a key's
latest, never its history (issue 14 §4). A superseded or deleted revision is still in the
bucket's history; :meth:`SecretsWatch.fetch_latest` never returns it."""

from __future__ import annotations

from typing import cast

from nats.js import JetStreamContext

from flashgate.bridge.loader import Loader
from flashgate.bridge.secrets_watch import SecretsWatch
from flashgate.bridge.vault import Vault
from flashgate.broker.declare import declare_fleet
from flashgate.events.subjects import FleetNames
from tests.support.bridge_units import FLEET, SecretSpec, envelope_bytes, new_store

SPECS = tuple(SecretSpec("payments", "openai", b"sk-%d" % v, version=v) for v in (1, 2, 3))


def never_spawned(coroutine: object) -> None:
    raise AssertionError("nothing is spawned here")


async def test_only_the_latest_revision_is_read_from_the_bucket(
    js: JetStreamContext, fleet_names: FleetNames
) -> None:
    kv = (await declare_fleet(js, fleet_names)).secrets
    key = SPECS[0].key
    revisions = [await kv.put(key, envelope_bytes(spec)) for spec in SPECS]
    watch = SecretsWatch(
        fleet=FLEET,
        store=new_store(),
        loader=cast(Loader, None),
        vault=Vault(),
        spawn=never_spawned,
        kv=kv,
    )
    latest = await watch.fetch_latest(key)
    assert latest is not None and (latest.revision, latest.version) == (revisions[-1], 3)
    assert (await kv.get(key, revision=revisions[0])).value  # still in the history

    await kv.delete(key)
    assert await watch.fetch_latest(key) is None
    assert await watch.fetch_latest("payments.missing") is None
