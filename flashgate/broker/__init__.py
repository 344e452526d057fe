"""The NATS side of flashgate: connecting, declaring a fleet's layout.

* :mod:`flashgate.broker.version`: the nats-server version flashgate needs (>= 2.10);
* :mod:`flashgate.broker.connection`: :func:`connect` with role inboxes, reconnect
  logging and the server version check; :func:`flush` that really waits for
  the server; :func:`broker_errors` maps nats-py errors;
* :mod:`flashgate.broker.declare`: :func:`declare_fleet`, the idempotent JetStream layout
  of DESIGN §3 (command and event streams, secrets and fleet buckets).

Running nats-server processes (tests, ``flashgate dev up``) is not here but in
:mod:`flashgate.devcluster`, which no service process imports.

Names of streams, buckets and subjects come from :class:`flashgate.events.subjects.FleetNames`.
"""

from __future__ import annotations

from flashgate.broker.connection import (
    broker_errors,
    check_server_version,
    connect,
    flush,
    inbox_prefix,
    redact_url,
)
from flashgate.broker.declare import Change, DeclaredFleet, declare_fleet
from flashgate.broker.version import MIN_SERVER_VERSION, parse_version

__all__ = [
    "MIN_SERVER_VERSION",
    "Change",
    "DeclaredFleet",
    "broker_errors",
    "check_server_version",
    "connect",
    "declare_fleet",
    "flush",
    "inbox_prefix",
    "parse_version",
    "redact_url",
]
