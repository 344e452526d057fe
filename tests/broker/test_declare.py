"""declare_fleet(): the JetStream layout of DESIGN §3, created once, then left alone or updated."""

from __future__ import annotations

import pytest
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig, StreamInfo
from nats.js.errors import KeyNotFoundError, NotFoundError

from flashgate.broker.declare import (
    DAY,
    MIN_SECRETS_HISTORY,
    declare_fleet,
    default_replicas,
    reported_cluster_size,
)
from flashgate.errors import BrokerError, ConfigurationError
from flashgate.events.subjects import FleetNames, secret_key

pytestmark = pytest.mark.nats


def kv_stream(bucket: str) -> str:
    return f"KV_{bucket}"


async def all_infos(js: JetStreamContext, names: FleetNames) -> dict[str, StreamInfo]:
    streams = [
        names.command_stream,
        names.event_stream,
        kv_stream(names.secrets_bucket),
        kv_stream(names.fleet_bucket),
        kv_stream(names.ring_bucket),
        kv_stream(names.wraps_bucket),
        kv_stream(names.snapshots_bucket),
    ]
    return {stream: await js.stream_info(stream) for stream in streams}


async def test_declares_the_layout(js: JetStreamContext, fleet_names: FleetNames) -> None:
    declared = await declare_fleet(js, fleet_names)
    assert declared.created == (
        fleet_names.command_stream,
        fleet_names.event_stream,
        kv_stream(fleet_names.secrets_bucket),
        kv_stream(fleet_names.fleet_bucket),
        kv_stream(fleet_names.ring_bucket),
        kv_stream(fleet_names.wraps_bucket),
        kv_stream(fleet_names.snapshots_bucket),
    )
    assert declared.changes == ()
    cmd = declared.command_stream.config
    assert cmd.subjects == [fleet_names.command_subjects]
    assert cmd.storage == StorageType.FILE and cmd.retention == "limits"
    assert cmd.duplicate_window == 120.0 and cmd.max_age == 30 * DAY
    assert declared.event_stream.config.subjects == [fleet_names.event_subjects]
    infos = await all_infos(js, fleet_names)
    secrets = infos[kv_stream(fleet_names.secrets_bucket)].config
    assert secrets.max_msgs_per_subject == MIN_SECRETS_HISTORY == 5
    assert secrets.allow_direct is True
    assert infos[kv_stream(fleet_names.fleet_bucket)].config.max_msgs_per_subject == 16
    for bucket in (  # the fast path
        fleet_names.ring_bucket,
        fleet_names.wraps_bucket,
        fleet_names.snapshots_bucket,
    ):
        assert infos[kv_stream(bucket)].config.max_msgs_per_subject == 1

    ack = await js.publish(fleet_names.command_subject("secret.put"), b"{}")
    assert ack.stream == fleet_names.command_stream
    ack = await js.publish(fleet_names.event_subject("secret.stored"), b"{}")
    assert ack.stream == fleet_names.event_stream


async def test_declaring_twice_changes_nothing(
    js: JetStreamContext, fleet_names: FleetNames
) -> None:
    first = await declare_fleet(js, fleet_names)
    await js.publish(fleet_names.command_subject("secret.put"), b"cmd")
    await first.secrets.put(secret_key("repo", "db"), b"envelope")
    before = await all_infos(js, fleet_names)

    second = await declare_fleet(js, fleet_names)

    assert second.created == () and second.changes == ()
    after = await all_infos(js, fleet_names)
    for stream, info in before.items():
        assert after[stream].created == info.created, stream
        assert after[stream].config == info.config, stream
        assert after[stream].state.messages == info.state.messages, stream
    assert (await second.secrets.get(secret_key("repo", "db"))).value == b"envelope"


async def test_secrets_history_keeps_the_last_revisions(
    js: JetStreamContext, fleet_names: FleetNames
) -> None:
    declared = await declare_fleet(js, fleet_names, secrets_history=7)
    key = secret_key("repo", "api")
    revisions = [await declared.secrets.put(key, f"v{i}".encode()) for i in range(10)]

    # Read revisions one by one: nats-py's kv.history() stops at a watch marker that can
    # come too early (see test_jetstream.initial_updates).
    for revision in revisions[:3]:
        with pytest.raises(KeyNotFoundError):
            await declared.secrets.get(key, revision=revision)
    for i, revision in enumerate(revisions[3:], start=3):
        assert (await declared.secrets.get(key, revision=revision)).value == f"v{i}".encode()
    subject = f"$KV.{fleet_names.secrets_bucket}.{key}"
    info = await js.stream_info(kv_stream(fleet_names.secrets_bucket), subjects_filter=subject)
    assert info.state.subjects == {subject: 7}


@pytest.mark.parametrize("history", [0, 1, 4, 65])
async def test_secrets_history_out_of_range_is_refused_before_any_io(
    js: JetStreamContext, fleet_names: FleetNames, history: int
) -> None:
    with pytest.raises(ConfigurationError, match="history"):
        await declare_fleet(js, fleet_names, secrets_history=history)
    with pytest.raises(NotFoundError):
        await js.stream_info(fleet_names.command_stream)


async def test_replicas_out_of_range_is_refused(
    js: JetStreamContext, fleet_names: FleetNames
) -> None:
    with pytest.raises(ConfigurationError, match="replicas"):
        await declare_fleet(js, fleet_names, replicas=0)


async def test_an_updatable_difference_is_applied_and_data_kept(
    js: JetStreamContext, fleet_names: FleetNames
) -> None:
    first = await declare_fleet(js, fleet_names)
    await first.secrets.put(secret_key("repo", "db"), b"envelope")
    await js.publish(fleet_names.event_subject("secret.stored"), b"evt")
    before = await all_infos(js, fleet_names)

    second = await declare_fleet(js, fleet_names, secrets_history=10, event_max_age=7 * DAY)

    changed = {(change.stream, change.field, change.old, change.new) for change in second.changes}
    assert changed == {
        (kv_stream(fleet_names.secrets_bucket), "max_msgs_per_subject", 5, 10),
        (fleet_names.event_stream, "max_age", 30 * DAY * 10**9, 7 * DAY * 10**9),
    }
    after = await all_infos(js, fleet_names)
    assert after[kv_stream(fleet_names.secrets_bucket)].config.max_msgs_per_subject == 10
    assert after[fleet_names.event_stream].config.max_age == 7 * DAY
    for stream, info in before.items():
        assert after[stream].created == info.created
        assert after[stream].state.messages == info.state.messages
    assert (await second.secrets.get(secret_key("repo", "db"))).value == b"envelope"
    assert (
        await declare_fleet(js, fleet_names, secrets_history=10, event_max_age=7 * DAY)
    ).changes == ()


async def test_a_difference_the_server_cannot_apply_names_stream_and_field(
    js: JetStreamContext, fleet_names: FleetNames
) -> None:
    await js.add_stream(
        StreamConfig(
            name=fleet_names.command_stream,
            subjects=[fleet_names.command_subjects],
            storage=StorageType.MEMORY,
        )
    )
    with pytest.raises(BrokerError) as caught:
        await declare_fleet(js, fleet_names)
    assert fleet_names.command_stream in caught.value.message
    assert "storage" in caught.value.message


async def test_replicas_beyond_a_single_server_are_a_broker_error(
    js: JetStreamContext, fleet_names: FleetNames
) -> None:
    with pytest.raises(BrokerError, match=fleet_names.command_stream):
        await declare_fleet(js, fleet_names, replicas=3)


async def test_more_replicas_than_servers_on_an_existing_stream_is_reported_not_fatal(
    js: JetStreamContext, fleet_names: FleetNames
) -> None:
    """One server cannot hold R3: the streams keep working at R1, and the declaration
    says which ones differ instead of failing the backend's start."""
    await declare_fleet(js, fleet_names)
    declared = await declare_fleet(js, fleet_names, replicas=3)
    assert declared.replicas == 3
    assert {(c.stream, c.field, c.old, c.new) for c in declared.replica_mismatches} == {
        (stream, "num_replicas", 1, 3) for stream in (await all_infos(js, fleet_names))
    }
    assert declared.changes == ()
    assert (await js.stream_info(fleet_names.command_stream)).config.num_replicas == 1


async def test_replicas_follow_a_single_server(
    js: JetStreamContext, fleet_names: FleetNames
) -> None:
    declared = await declare_fleet(js, fleet_names)
    assert declared.replicas == 1


def test_reported_cluster_size_reads_the_servers_info() -> None:
    class FakeClient:
        def __init__(self, info: dict[str, object]) -> None:
            self._server_info = info

    alone = FakeClient({"server_name": "n1"})
    three = FakeClient({"cluster": "c", "connect_urls": ["a:1", "b:1", "c:1"]})
    quiet = FakeClient({"cluster": "c"})  # no_advertise: nothing to count
    assert reported_cluster_size(alone) == 1  # type: ignore[arg-type]
    assert reported_cluster_size(three) == 3  # type: ignore[arg-type]
    assert reported_cluster_size(quiet) == 1  # type: ignore[arg-type]
    assert [default_replicas(n) for n in (1, 2, 3, 5)] == [1, 2, 3, 3]
