"""Declaring a fleet's JetStream layout (DESIGN §3), idempotently.

:func:`declare_fleet` makes the JetStream assets of a fleet exist with the declared
settings, whatever state they are in:

| asset                  | kind   | settings                                                 |
|------------------------|--------|----------------------------------------------------------|
| ``fg-<f>-cmd``         | stream | ``fg.<f>.cmd.>``, file, limits, dedupe window, max age   |
| ``fg-<f>-evt``         | stream | ``fg.<f>.evt.>``, file, limits, dedupe window, max age   |
| ``fg-<f>-secrets``     | KV     | history >= 5 (rollback and audit of envelopes), direct get |
| ``fg-<f>-fleet``       | KV     | history 16                                               |
| ``fg-<f>-ring``        | KV     | history 1: ring terms of the fast path (DESIGN §6)       |
| ``fg-<f>-wraps``       | KV     | history 1: fast wraps, one per envelope                  |
| ``fg-<f>-snapshots``   | KV     | history 1: snapshots of the wraps bucket                 |

The fast-path buckets keep no history: a term deleted (purged) or a wrap replaced under a
newer term is gone from the server, not kept as an older revision.

For each asset the current config is read first and only the fields flashgate manages
are compared (a KV bucket is compared through its backing stream ``KV_<bucket>``):

* missing: created;
* equal: nothing is sent (running it twice changes nothing, not even timestamps);
* different in updatable fields (history, max age, replicas, dedupe window, subjects):
  updated, and each change is returned in :attr:`DeclaredFleet.changes` and logged;
* different in a field the server cannot change (storage type, retention policy):
  :class:`~flashgate.errors.BrokerError` naming the asset and the field.

The declaration is authoritative: a smaller history or max age than the current one is
applied too (the server then drops the excess), so one component owns the layout
(``flashgate dev up`` or the admin tooling) and the others only bind to it.

Replicas (docs/operations.md, "A NATS cluster"): the operator's one setting is the
backend's ``--stream-replicas`` (``FLASHGATE_STREAM_REPLICAS``). Unset, it follows the
cluster: :func:`default_replicas`, ``min(3, cluster size)``, the size being what the
connected server reports (its ``connect_urls``: every server of its cluster that
advertises a client URL; a server outside a cluster reports none, so 1). Followed that
way, replicas are raised to the default but never lowered: a backend that starts while a
server of the cluster is down sees a smaller cluster, and must not shrink R3 streams to
R2. A stream whose replica count differs from the declared one and that the server
refuses to change (fewer servers than replicas) is logged as an error and listed in
:attr:`DeclaredFleet.replica_mismatches`; it keeps working at its current count.

nats-py errors are mapped here, at the boundary, to
:class:`~flashgate.errors.BrokerError` / :class:`~flashgate.errors.BrokerUnavailable`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import nats.js.errors
import structlog
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamInfo,
)
from nats.js.kv import KeyValue

from flashgate.broker.connection import broker_errors, describe_error
from flashgate.errors import BrokerError, ConfigurationError
from flashgate.events.subjects import FleetNames

_logger = structlog.get_logger("flashgate.broker")

DAY = 24 * 60 * 60.0
MIN_SECRETS_HISTORY = 5
MAX_KV_HISTORY = 64  # the JetStream limit for KV history
FLEET_HISTORY = 16
#: The fast path's buckets (ring terms, fast wraps, snapshots): the latest value only.
FAST_PATH_HISTORY = 1
MAX_REPLICAS = 5
#: Replicas when the operator sets none: the cluster's size, up to this.
DEFAULT_MAX_REPLICAS = 3
#: Fields the server refuses to change on an existing stream.
IMMUTABLE_FIELDS = frozenset({"storage", "retention"})
#: JetStream "stream name already in use with a different configuration".
_ERR_STREAM_NAME_IN_USE = 10058
_KV_STREAM_PREFIX = "KV_"


@dataclass(frozen=True, slots=True)
class Change:
    """One field of one stream that :func:`declare_fleet` changed."""

    stream: str
    field: str
    old: object
    new: object


@dataclass(frozen=True, slots=True)
class DeclaredFleet:
    """What :func:`declare_fleet` left in place: stream infos, KV handles, what it did."""

    names: FleetNames
    command_stream: StreamInfo
    event_stream: StreamInfo
    secrets: KeyValue
    fleet: KeyValue
    created: tuple[str, ...]
    changes: tuple[Change, ...]
    #: The replica count declared (configured, or followed from the cluster).
    replicas: int = 1
    #: Replica counts that differ from :attr:`replicas` and were left as they are.
    replica_mismatches: tuple[Change, ...] = ()


# --- desired configs --------------------------------------------------------------------------


def _log_stream_config(
    name: str, subjects: str, *, replicas: int, duplicate_window: float, max_age: float
) -> StreamConfig:
    """A command or event stream: durable, bounded by age, deduplicating by Nats-Msg-Id."""
    return StreamConfig(
        name=name,
        subjects=[subjects],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        num_replicas=replicas,
        duplicate_window=duplicate_window,
        max_age=max_age,
    )


def _kv_config(bucket: str, *, history: int, replicas: int) -> KeyValueConfig:
    return KeyValueConfig(
        bucket=bucket,
        history=history,
        replicas=replicas,
        storage=StorageType.FILE,
        direct=True,  # as the Go client and the nats CLI: any replica may answer a get
    )


def _stream_fields(config: StreamConfig) -> dict[str, object]:
    """The managed fields of a command/event stream, normalized for comparison."""
    return {
        "subjects": sorted(config.subjects or []),
        "retention": _enum_value(config.retention),
        "storage": _enum_value(config.storage),
        "discard": _enum_value(config.discard),
        "num_replicas": config.num_replicas or 1,
        "duplicate_window": _nanoseconds(config.duplicate_window),
        "max_age": _nanoseconds(config.max_age),
    }


def _kv_fields(config: StreamConfig | KeyValueConfig) -> dict[str, object]:
    """The managed fields of a KV bucket, read from its backing stream or its KV config."""
    if isinstance(config, KeyValueConfig):
        return {
            "max_msgs_per_subject": config.history,
            "num_replicas": config.replicas,
            "storage": _enum_value(config.storage),
            "allow_direct": bool(config.direct),
        }
    return {
        "max_msgs_per_subject": config.max_msgs_per_subject,
        "num_replicas": config.num_replicas or 1,
        "storage": _enum_value(config.storage),
        "allow_direct": bool(config.allow_direct),
    }


def _enum_value(value: object) -> object:
    return getattr(value, "value", value)


def _nanoseconds(seconds: float | None) -> int:
    return round((seconds or 0) * 1_000_000_000)


def _diff(stream: str, current: Mapping[str, object], wanted: Mapping[str, object]) -> list[Change]:
    return [
        Change(stream=stream, field=key, old=current.get(key), new=value)
        for key, value in wanted.items()
        if current.get(key) != value
    ]


def _refuse_immutable(changes: list[Change]) -> None:
    fixed = [change for change in changes if change.field in IMMUTABLE_FIELDS]
    if fixed:
        first = fixed[0]
        raise BrokerError(
            f"stream {first.stream} exists with {first.field}={first.old!r}, declared "
            f"{first.new!r}; JetStream cannot change {first.field} (migrate the stream)"
        )


def _update_params(changes: list[Change], wanted: StreamConfig | KeyValueConfig) -> dict[str, Any]:
    """The StreamConfig fields to set, taken from the wanted config, not the normalized diff."""
    if isinstance(wanted, KeyValueConfig):
        kv_values: dict[str, Any] = {
            "max_msgs_per_subject": wanted.history,
            "num_replicas": wanted.replicas,
            "allow_direct": bool(wanted.direct),
        }
        return {change.field: kv_values[change.field] for change in changes}
    return {change.field: getattr(wanted, change.field) for change in changes}


# --- one asset ----------------------------------------------------------------------------


async def _stream_info(js: JetStreamContext, stream: str) -> StreamInfo | None:
    try:
        return await js.stream_info(stream)
    except nats.js.errors.NotFoundError:
        return None


@dataclass(frozen=True, slots=True)
class _Reconciled:
    info: StreamInfo
    changes: list[Change]
    mismatches: list[Change]


def _replica_change(changes: list[Change]) -> Change | None:
    return next((change for change in changes if change.field == "num_replicas"), None)


async def _reconcile(
    js: JetStreamContext,
    stream: str,
    wanted: StreamConfig | KeyValueConfig,
    current: StreamInfo,
    *,
    never_lower_replicas: bool,
) -> _Reconciled:
    """Bring an existing stream to the wanted managed fields; say what changed."""
    if isinstance(wanted, KeyValueConfig):
        changes = _diff(stream, _kv_fields(current.config), _kv_fields(wanted))
    else:
        changes = _diff(stream, _stream_fields(current.config), _stream_fields(wanted))
    mismatches: list[Change] = []
    replicas = _replica_change(changes)
    if replicas is not None and never_lower_replicas and _int(replicas.old) > _int(replicas.new):
        changes.remove(replicas)
        _logger.warning(
            "broker.replicas_kept",
            stream=stream,
            replicas=replicas.old,
            cluster_default=replicas.new,
            why="replicas follow the cluster: raised, never lowered (a server may be down)",
        )
    if not changes:
        return _Reconciled(current, [], mismatches)
    _refuse_immutable(changes)
    try:
        info = await _update(js, stream, current, changes, wanted)
    except BrokerError as exc:
        if replicas is None or replicas not in changes:
            raise
        # The server cannot place that many replicas (fewer servers than replicas):
        # apply the rest, keep the stream working at its current count, and say so.
        _logger.error(
            "broker.replicas_not_changed",
            stream=stream,
            replicas=replicas.old,
            declared=replicas.new,
            error=exc.message,
        )
        changes.remove(replicas)
        mismatches.append(replicas)
        info = await _update(js, stream, current, changes, wanted) if changes else current
    for change in changes:
        _logger.warning(
            "broker.stream_updated",
            stream=stream,
            field=change.field,
            old=change.old,
            new=change.new,
        )
    return _Reconciled(info, changes, mismatches)


async def _update(
    js: JetStreamContext,
    stream: str,
    current: StreamInfo,
    changes: list[Change],
    wanted: StreamConfig | KeyValueConfig,
) -> StreamInfo:
    config = current.config.evolve(**_update_params(changes, wanted))
    fields = ", ".join(change.field for change in changes)
    try:
        return await js.update_stream(config)
    except nats.js.errors.APIError as exc:
        raise BrokerError(
            f"stream {stream}: cannot update {fields}: {describe_error(exc)}"
        ) from exc


def _int(value: object) -> int:
    return value if isinstance(value, int) else 1


async def _create(js: JetStreamContext, wanted: StreamConfig | KeyValueConfig) -> StreamInfo:
    if isinstance(wanted, KeyValueConfig):
        await js.create_key_value(wanted)
        return await js.stream_info(_KV_STREAM_PREFIX + wanted.bucket)
    return await js.add_stream(wanted)


async def _ensure(
    js: JetStreamContext,
    stream: str,
    wanted: StreamConfig | KeyValueConfig,
    *,
    never_lower_replicas: bool,
) -> tuple[_Reconciled, bool]:
    """``(what was done, created)`` for one asset; a lost creation race is reconciled."""
    with broker_errors(f"declaring {stream}"):
        current = await _stream_info(js, stream)
        if current is None:
            try:
                info = await _create(js, wanted)
            except nats.js.errors.BadRequestError as exc:
                if exc.err_code != _ERR_STREAM_NAME_IN_USE:
                    raise
                # Someone else created it meanwhile, differently: compare with theirs.
                current = await js.stream_info(stream)
            else:
                _logger.info("broker.stream_created", stream=stream)
                return _Reconciled(info, [], []), True
        done = await _reconcile(
            js, stream, wanted, current, never_lower_replicas=never_lower_replicas
        )
        return done, False


# --- the fleet --------------------------------------------------------------------------------


def _check_parameters(*, replicas: int, secrets_history: int) -> None:
    if not 1 <= replicas <= MAX_REPLICAS:
        raise ConfigurationError(f"replicas must be 1 to {MAX_REPLICAS}, not {replicas}")
    if not MIN_SECRETS_HISTORY <= secrets_history <= MAX_KV_HISTORY:
        raise ConfigurationError(
            f"secrets history must be {MIN_SECRETS_HISTORY} to {MAX_KV_HISTORY}, not "
            f"{secrets_history}: envelopes keep their previous revisions for rollback"
        )


def reported_cluster_size(nc: Client) -> int:
    """How many servers the connected server says its cluster has (1 outside a cluster).

    Read from the server's INFO: ``connect_urls`` lists the client URL of every server of
    the cluster that advertises one (itself included). A cluster configured with
    ``no_advertise`` reports none: there, set the replicas explicitly."""
    info: dict[str, Any] = getattr(nc, "_server_info", None) or {}
    if not info.get("cluster"):
        return 1
    return max(1, len(set(info.get("connect_urls") or [])))


def default_replicas(cluster_size: int) -> int:
    """The replica count when the operator sets none: ``min(3, cluster size)``."""
    return max(1, min(DEFAULT_MAX_REPLICAS, cluster_size))


async def declare_fleet(
    js: JetStreamContext,
    names: FleetNames,
    *,
    replicas: int | None = None,
    secrets_history: int = MIN_SECRETS_HISTORY,
    command_duplicate_window: float = 120.0,
    command_max_age: float = 30 * DAY,
    event_max_age: float = 30 * DAY,
) -> DeclaredFleet:
    """Create or update the streams and buckets of ``names``; see the module docstring.

    Durations are in seconds. The event stream uses the command stream's duplicate
    window (events carry their id in ``Nats-Msg-Id`` too). ``replicas=None`` follows the
    cluster (:func:`default_replicas` of :func:`reported_cluster_size`; never lowers).
    """
    follow_cluster = replicas is None
    if replicas is None:
        replicas = default_replicas(reported_cluster_size(js._nc))
    _check_parameters(replicas=replicas, secrets_history=secrets_history)
    wanted: list[tuple[str, StreamConfig | KeyValueConfig]] = [
        (
            names.command_stream,
            _log_stream_config(
                names.command_stream,
                names.command_subjects,
                replicas=replicas,
                duplicate_window=command_duplicate_window,
                max_age=command_max_age,
            ),
        ),
        (
            names.event_stream,
            _log_stream_config(
                names.event_stream,
                names.event_subjects,
                replicas=replicas,
                duplicate_window=command_duplicate_window,
                max_age=event_max_age,
            ),
        ),
        (
            _KV_STREAM_PREFIX + names.secrets_bucket,
            _kv_config(names.secrets_bucket, history=secrets_history, replicas=replicas),
        ),
        (
            _KV_STREAM_PREFIX + names.fleet_bucket,
            _kv_config(names.fleet_bucket, history=FLEET_HISTORY, replicas=replicas),
        ),
        *(
            (
                _KV_STREAM_PREFIX + bucket,
                _kv_config(bucket, history=FAST_PATH_HISTORY, replicas=replicas),
            )
            for bucket in (names.ring_bucket, names.wraps_bucket, names.snapshots_bucket)
        ),
    ]
    infos: list[StreamInfo] = []
    created: list[str] = []
    changes: list[Change] = []
    mismatches: list[Change] = []
    for stream, config in wanted:
        done, was_created = await _ensure(js, stream, config, never_lower_replicas=follow_cluster)
        infos.append(done.info)
        created += [stream] if was_created else []
        changes += done.changes
        mismatches += done.mismatches
    with broker_errors(f"binding the buckets of fleet {names.fleet}"):
        secrets = await js.key_value(names.secrets_bucket)
        fleet = await js.key_value(names.fleet_bucket)
    return DeclaredFleet(
        names=names,
        command_stream=infos[0],
        event_stream=infos[1],
        secrets=secrets,
        fleet=fleet,
        created=tuple(created),
        changes=tuple(changes),
        replicas=replicas,
        replica_mismatches=tuple(mismatches),
    )
