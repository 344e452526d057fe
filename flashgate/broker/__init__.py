"""The NATS side of flashgate: running servers, connecting, declaring a fleet's layout.

* :mod:`flashgate.broker.server`: find a nats-server >= 2.10 and run it (one server or a
  loopback cluster) for tests and ``flashgate dev up``;
* :mod:`flashgate.broker.connection`: :func:`connect` with role inboxes, reconnect
  logging and the server version check; :func:`flush` that really waits for
  the server; :func:`broker_errors` maps nats-py errors;
* :mod:`flashgate.broker.declare`: :func:`declare_fleet`, the idempotent JetStream layout
  of DESIGN §3 (command and event streams, secrets and fleet buckets).

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
from flashgate.broker.server import (
    MIN_SERVER_VERSION,
    NatsBinary,
    NatsCluster,
    NatsServerProcess,
    find_nats_server,
    free_port,
    free_ports,
    parse_version,
)

__all__ = [
    "MIN_SERVER_VERSION",
    "Change",
    "DeclaredFleet",
    "NatsBinary",
    "NatsCluster",
    "NatsServerProcess",
    "broker_errors",
    "check_server_version",
    "connect",
    "declare_fleet",
    "find_nats_server",
    "flush",
    "free_port",
    "free_ports",
    "inbox_prefix",
    "parse_version",
    "redact_url",
]
