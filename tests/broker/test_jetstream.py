"""The JetStream behaviour flashgate relies on, checked on the real server.

* commands are deduplicated by ``Nats-Msg-Id`` within the stream's duplicate window;
* a KV watch first delivers the current value of every key, then one end-of-initial-values
  marker (nats-py yields ``None``), then live updates, deletions as ``DEL`` entries;
* without ``include_history`` the initial values are the latest revision of each key only.
"""

from __future__ import annotations

import pytest
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from flashgate.broker.declare import DeclaredFleet, declare_fleet
from flashgate.events.subjects import FleetNames, secret_key

pytestmark = pytest.mark.nats

WATCH_TIMEOUT = 5.0


@pytest.fixture
async def fleet(js: JetStreamContext, fleet_names: FleetNames) -> DeclaredFleet:
    return await declare_fleet(js, fleet_names)


async def next_update(watcher: KeyValue.KeyWatcher) -> KeyValue.Entry | None:
    update: KeyValue.Entry | None = await watcher.updates(timeout=WATCH_TIMEOUT)
    return update


def described(entry: KeyValue.Entry | None) -> tuple[str, str | None, bytes | None] | None:
    if entry is None:
        return None
    return entry.key, entry.operation, entry.value


async def test_the_same_command_id_is_stored_once(
    js: JetStreamContext, fleet_names: FleetNames, fleet: DeclaredFleet
) -> None:
    subject = fleet_names.command_subject("secret.put")
    headers = {"Nats-Msg-Id": "cmd-0001"}
    first = await js.publish(subject, b'{"n":1}', headers=headers)
    second = await js.publish(subject, b'{"n":1}', headers=headers)
    other = await js.publish(subject, b'{"n":2}', headers={"Nats-Msg-Id": "cmd-0002"})

    assert not first.duplicate
    assert second.duplicate is True and second.seq == first.seq
    assert not other.duplicate
    info = await js.stream_info(fleet_names.command_stream)
    assert info.state.messages == 2


async def test_watch_delivers_current_values_then_marker_then_live_changes(
    fleet: DeclaredFleet,
) -> None:
    kv = fleet.secrets
    keys = [secret_key("repo", name) for name in ("a", "b", "c")]
    for key in keys:
        await kv.put(key, f"{key}=1".encode())

    watcher = await kv.watch(">")
    try:
        initial = [described(await next_update(watcher)) for _ in keys]
        marker = await next_update(watcher)
        await kv.put(keys[0], b"live")
        live = described(await next_update(watcher))
        await kv.delete(keys[1])
        deleted = described(await next_update(watcher))
    finally:
        await watcher.stop()

    assert initial == [(key, None, f"{key}=1".encode()) for key in keys]
    assert marker is None
    assert live == (keys[0], None, b"live")
    assert deleted == (keys[1], "DEL", b"")


async def test_watch_without_history_sees_only_the_latest_revisions(
    fleet: DeclaredFleet,
) -> None:
    kv = fleet.secrets
    a, b = secret_key("repo", "a"), secret_key("repo", "b")
    for key, value in [(a, b"a1"), (b, b"b1"), (a, b"a2"), (a, b"a3")]:
        await kv.put(key, value)

    latest = await kv.watch(">", include_history=False)
    everything = await kv.watch(">", include_history=True)
    try:
        seen_latest = [described(await next_update(latest)) for _ in range(2)]
        assert await next_update(latest) is None
        seen_all = [described(await next_update(everything)) for _ in range(4)]
        assert await next_update(everything) is None
    finally:
        await latest.stop()
        await everything.stop()

    assert seen_latest == [(b, None, b"b1"), (a, None, b"a3")]
    assert seen_all == [(a, None, b"a1"), (b, None, b"b1"), (a, None, b"a2"), (a, None, b"a3")]


async def test_watching_an_empty_bucket_yields_the_marker_at_once(
    fleet: DeclaredFleet,
) -> None:
    watcher = await fleet.secrets.watch(">")
    try:
        assert await next_update(watcher) is None
    finally:
        await watcher.stop()
