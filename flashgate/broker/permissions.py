"""NATS users and subject permissions: a password user per role (admin, backend) and an
NKey user per Bridge Node (dev cluster and compose).

| who      | may publish                                  | may subscribe                 |
|----------|----------------------------------------------|-------------------------------|
| admin    | commands, queries, status requests, API key  | events, ``_INBOX.admin.>``    |
|          | checks, JS API on the event stream + buckets |                               |
| backend  | KV writes, events, JS API on the event       | queries, re-wrap requests,    |
|          | stream + buckets + its own command durable   | node reports,                 |
|          |                                              | ``_INBOX.backend.>``          |
| node <n> | share requests, its own heartbeat and        | ``share.<n>``, ``node.<n>.>``,|
|          | ``node.<n>.report``, re-wrap requests,       | every node's heartbeat,       |
|          | JS API on the two bucket streams (KV watch), | ``_INBOX.bridge.<n>.>``       |
|          | KV writes + JS API on the fast-path buckets, |                               |
|          | a stream purge on the snapshots bucket       |                               |

The fast path's buckets (ring terms, fast wraps, snapshots of the wraps; DESIGN §6) are
the nodes' alone: the backend and the admin only declare them (stream info; creation is
their general grant) and can neither read nor write them.

Only the backend publishes into the event stream: a node's signed reports go to its own
``node.<n>.report`` (core NATS), which the backend reads (``node.*.report``), checks,
rate-limits and relays (flashgate.backend.node_reports), so a flooding node cannot fill
the JetStream storage the buckets and the command stream share.

JetStream API grants name their stream (``$JS.API.CONSUMER.DELETE.<stream>.<consumer>``):
nobody but the backend can touch the command stream's durable ``backend``, a node cannot
read the command stream, and nobody but the backend and the admin tooling can create or
update streams. Each node logs in with its own NKey (``fleet init`` makes it and seals the
seed in the node's bundle; the public keys are in the fleet directory's
``nats-nodes.json``): revoking a node takes its user out of the config, and a reload of
the server (SIGHUP) closes its connections and refuses it from then on. Tested with a real
server in tests/broker/test_identities.py.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from flashgate.errors import ConfigurationError
from flashgate.events.subjects import FleetNames
from flashgate.names import validate_name

#: The roles with a password login. Bridge Nodes have no shared login: each logs in with its
#: own NKey (:func:`node_permissions`), made at ``fleet init`` and sealed in its bundle.
ROLES = ("admin", "backend")
#: The role name of a Bridge Node's connection (its inbox is ``_INBOX.bridge.<node>``).
BRIDGE_ROLE = "bridge"


@dataclass(frozen=True)
class RoleCredentials:
    user: str
    password: str

    def __repr__(self) -> str:
        return f"RoleCredentials(user={self.user!r}, password=<redacted>)"


def _kv_streams(names: FleetNames) -> list[str]:
    return [f"KV_{names.secrets_bucket}", f"KV_{names.fleet_bucket}"]


def _js_on_streams(streams: list[str]) -> list[str]:
    """JetStream API calls to read ``streams`` and run consumers on them, by subject: the
    stream is a token of every such subject, so a grant names the streams it covers and
    nothing else (another role's stream, its durable consumer) is reachable."""
    grants = ["$JS.API.INFO", "$JS.API.STREAM.NAMES"]
    for stream in streams:
        # acknowledgements and flow-control replies: on these streams only
        grants += [f"$JS.ACK.{stream}.>", f"$JS.FC.{stream}.>"]
        grants += [
            f"$JS.API.STREAM.INFO.{stream}",
            f"$JS.API.STREAM.MSG.GET.{stream}",
            f"$JS.API.DIRECT.GET.{stream}",
            f"$JS.API.DIRECT.GET.{stream}.>",
            f"$JS.API.CONSUMER.CREATE.{stream}",
            f"$JS.API.CONSUMER.CREATE.{stream}.>",
            f"$JS.API.CONSUMER.INFO.{stream}.*",
            f"$JS.API.CONSUMER.DELETE.{stream}.*",
            f"$JS.API.CONSUMER.MSG.NEXT.{stream}.*",
        ]
    return grants


def _js_durable(stream: str, durable: str) -> list[str]:
    """One named durable consumer on ``stream`` (create, read, delete, fetch)."""
    return [
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.STREAM.MSG.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}.>",
        f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{durable}",
        f"$JS.API.CONSUMER.CREATE.{stream}.{durable}",
        f"$JS.API.CONSUMER.CREATE.{stream}.{durable}.>",
        f"$JS.API.CONSUMER.INFO.{stream}.{durable}",
        f"$JS.API.CONSUMER.DELETE.{stream}.{durable}",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}",
        f"$JS.ACK.{stream}.{durable}.>",
        f"$JS.FC.{stream}.{durable}.>",
    ]


def _fast_path_streams(names: FleetNames) -> list[str]:
    return [f"KV_{names.ring_bucket}", f"KV_{names.wraps_bucket}", f"KV_{names.snapshots_bucket}"]


def _fast_path_declare(names: FleetNames) -> list[str]:
    """What declaring the fast-path buckets needs beyond creating streams: their info."""
    return [f"$JS.API.STREAM.INFO.{stream}" for stream in _fast_path_streams(names)]


def _js_admin() -> list[str]:
    return ["$JS.API.STREAM.CREATE.*", "$JS.API.STREAM.UPDATE.*"]


#: The backend's durable command consumer (flashgate.backend.service.DURABLE).
BACKEND_DURABLE = "backend"


def permissions(role: str, names: FleetNames) -> dict[str, object]:
    """The permissions of one password role. ``allow_responses`` lets a role answer the
    requests it receives (replies go to the requester's ``_INBOX.<role>.…``) without a
    general grant. Consumers: the backend's one durable on the command stream is reachable
    by the backend only; the admin runs its consumers on the event stream and the buckets."""
    f = f"fg.{names.fleet}"
    inbox = f"_INBOX.{role}.>"
    kv_secrets = f"$KV.{names.secrets_bucket}.>"
    kv_fleet = f"$KV.{names.fleet_bucket}.>"
    if role == "admin":
        return {
            "publish": {
                "allow": [
                    f"{f}.cmd.>",
                    f"{f}.query.>",
                    f"{f}.node.*.status",
                    f"{f}.node.*.apikey",
                    *_js_on_streams([names.event_stream, *_kv_streams(names)]),
                    f"$JS.API.STREAM.INFO.{names.command_stream}",
                    # Read-only: is the backend consuming (fleet status --wait)?
                    f"$JS.API.CONSUMER.INFO.{names.command_stream}.{BACKEND_DURABLE}",
                    *_fast_path_declare(names),
                    *_js_admin(),
                ]
            },
            "subscribe": {"allow": [inbox, f"{f}.evt.>"]},
        }
    if role == "backend":
        return {
            "publish": {
                "allow": [
                    kv_secrets,
                    kv_fleet,
                    f"{f}.evt.>",
                    *_js_on_streams([names.event_stream, *_kv_streams(names)]),
                    *_js_durable(names.command_stream, BACKEND_DURABLE),
                    *_fast_path_declare(names),
                    *_js_admin(),
                ]
            },
            "subscribe": {
                "allow": [inbox, f"{f}.query.>", f"{f}.rewrap", names.node_report_wildcard],
                "deny": [f"{f}.share.>"],
            },
            "allow_responses": True,
        }
    raise ValueError(f"unknown role {role!r}")


def node_inbox_prefix(node_id: str) -> str:
    """``_INBOX.bridge.<node>``: where a node's replies come back (and nobody else's)."""
    return f"_INBOX.{BRIDGE_ROLE}.{validate_name(node_id, 'node id')}"


def node_permissions(names: FleetNames, node_id: str) -> dict[str, object]:
    """The permissions of one Bridge Node's own NATS identity.

    It subscribes to its own share, status and API-key subjects, its own inbox, and the
    (signed) heartbeats of its peers, and to nothing else: it can neither answer another
    node's requests nor read another node's replies. It publishes share requests to its
    peers, its own heartbeat, its own reports (``node.<n>.report``: misbehaviour reports
    and its gateway's usage summaries, never into the event stream: the backend relays
    them) and re-wrap requests, and reads the two buckets (KV watch consumers on the
    bucket streams only: never the command stream, never another role's durable).

    A node never receives a message it published: it may not publish to its own request
    subjects, and its own heartbeat is not delivered to it. Otherwise it could send itself
    a request whose reply subject is, say, ``$KV.<secrets>.<key>`` or a JetStream API call,
    and ``allow_responses`` would carry its "answer" there. Replies to the requests it
    receives go out through ``allow_responses`` (one reply each, within a minute).
    """
    f = f"fg.{names.fleet}"
    node = validate_name(node_id, "node id")
    kv_streams = _kv_streams(names)
    return {
        "publish": {
            "allow": [
                f"{f}.share.*",
                names.heartbeat_subject(node),
                names.node_report_subject(node),
                f"{f}.rewrap",
                *_js_on_streams(kv_streams),
                # the fast path (DESIGN §6): ring terms and fast wraps, the nodes' own
                f"$KV.{names.ring_bucket}.>",
                f"$KV.{names.wraps_bucket}.>",
                f"$KV.{names.snapshots_bucket}.>",
                *_js_on_streams(_fast_path_streams(names)),
                # old snapshots' parts go by a stream purge by subject (no marker left)
                f"$JS.API.STREAM.PURGE.KV_{names.snapshots_bucket}",
            ],
            "deny": [names.share_subject(node)],
        },
        "subscribe": {
            "allow": [
                f"{node_inbox_prefix(node)}.>",
                names.share_subject(node),
                names.status_subject(node),
                names.apikey_check_subject(node),
                names.heartbeat_wildcard,  # peers' signed heartbeats: liveness
            ],
            "deny": [names.heartbeat_subject(node)],
        },
        "allow_responses": {"max": 1, "expires": "1m"},
    }


def password_env(role: str) -> str:
    return f"FG_{role.upper()}_PASSWORD"


def authorization_config(
    names: FleetNames,
    credentials: dict[str, RoleCredentials] | None = None,
    nodes: Mapping[str, str] | None = None,
) -> str:
    """The ``authorization { users: [...] }`` block of a nats-server config.

    ``nodes`` maps each node that may log in (the active nodes of the roster) to its public
    NKey: one user per node, with :func:`node_permissions`. A revoked node is simply left
    out, and a reload of the server (SIGHUP) closes its connections and refuses it after.

    Without ``credentials`` the passwords are environment references
    (``$FG_ADMIN_PASSWORD``, ``$FG_BACKEND_PASSWORD``), which nats-server resolves at
    start: the form used by compose. nats-server reads a referenced value as config text
    (``123456`` is a number), so the values must be quoted config strings:
    ``deploy/nats-entrypoint.sh`` quotes them.
    """
    users: list[dict[str, object]] = []
    for role in ROLES:
        if credentials is None:
            user, password = role, f"__ENV__{password_env(role)}__"
        else:
            user, password = credentials[role].user, credentials[role].password
        users.append({"user": user, "password": password, "permissions": permissions(role, names)})
    for node_id, public in sorted((nodes or {}).items()):
        users.append(
            {
                "nkey": check_public_nkey(public, node_id),
                "permissions": node_permissions(names, node_id),
            }
        )
    text = json.dumps(users, indent=2)
    for role in ROLES:
        text = text.replace(f'"__ENV__{password_env(role)}__"', f"${password_env(role)}")
    return "authorization {\n  users: " + text + "\n}\n"


def check_public_nkey(public: str, node_id: str) -> str:
    """A user's public NKey as the server expects it (``U`` + 55 base32 characters)."""
    if not (
        isinstance(public, str)
        and len(public) == 56
        and public.startswith("U")
        and set(public) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")
    ):
        raise ConfigurationError(f"the NATS public key of node {node_id!r} is not a user NKey")
    return public


#: Where a deployment's nats-server serves monitoring (/varz, /connz... name every client
#: and subject): loopback unless chosen otherwise.
DEFAULT_MONITOR_ADDRESS = "127.0.0.1:8222"


#: Where the deployment config includes the users from (relative to the config file): the
#: compose ``init`` service writes it (``deploy/fleet-init.py``) from the fleet directory,
#: with one NKey user per active node.
AUTHORIZATION_INCLUDE = "auth/authorization.conf"


def server_config(names: FleetNames, *, monitor_address: str = DEFAULT_MONITOR_ADDRESS) -> str:
    """A complete nats-server config for a deployment (compose): JetStream, monitoring on
    ``monitor_address`` (HOST:PORT), and the users included from
    :data:`AUTHORIZATION_INCLUDE` (made from the fleet directory by
    ``flashgate dev nats-config --authorization FLEET_DIR``: role passwords taken from the
    environment, an NKey user per active node)."""
    option = (
        ""
        if monitor_address == DEFAULT_MONITOR_ADDRESS
        else f" --monitor-address {monitor_address}"
    )
    return (
        f"# Generated by `flashgate dev nats-config --fleet {names.fleet}{option}`; do not edit.\n"
        "# Users: the included file, written from the fleet directory by the compose init\n"
        "# service (`flashgate dev nats-config --authorization FLEET_DIR`): the role\n"
        "# passwords are $FG_<ROLE>_PASSWORD, which nats-server reads as config text (run it\n"
        "# through deploy/nats-entrypoint.sh, which passes them on as quoted strings), and\n"
        "# one NKey user per active Bridge Node. After `flashgate node revoke`, write it\n"
        "# again and reload the server (docs/operations.md, Revoking a node).\n"
        'listen: "0.0.0.0:4222"\n'
        f"http: {json.dumps(monitor_address)}\n"
        'server_name: "flashgate"\n'
        # nats-server keeps JetStream in STORE_DIR/jetstream: /data is the volume.
        'jetstream {\n  store_dir: "/data"\n  max_file_store: 10G\n'
        "  max_memory_store: 256M\n}\n"
        f"max_payload: 4MB\ninclude {json.dumps(AUTHORIZATION_INCLUDE)}\n"
    )
