"""NATS users and subject permissions, one user per role (dev cluster and compose).

| role    | may publish                                   | may subscribe              |
|---------|-----------------------------------------------|----------------------------|
| admin   | commands, queries, status requests, API key   | events, its inbox          |
|         | checks, JS API                                |                            |
| backend | KV writes, events, JS API                     | queries, re-wrap requests, |
|         |                                               | its inbox                  |
| bridge  | share requests, heartbeats, misbehaviour      | share, node subjects,      |
|         | events, re-wrap requests, JS API (KV watch)   | its inbox                  |

Enforced refusals (tested): the backend cannot subscribe to share subjects; a bridge cannot
publish admin commands. JetStream API access is limited to what each role uses (no one
but the backend and the admin tooling can create or delete streams).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from flashgate.events.subjects import FleetNames

ROLES = ("admin", "backend", "bridge")


@dataclass(frozen=True)
class RoleCredentials:
    user: str
    password: str


def _js_read(names: FleetNames) -> list[str]:
    """JetStream API calls to read buckets and follow streams."""
    return [
        "$JS.API.INFO",
        "$JS.API.STREAM.INFO.*",
        "$JS.API.STREAM.NAMES",
        "$JS.API.STREAM.MSG.GET.*",
        "$JS.API.DIRECT.GET.>",
        "$JS.API.CONSUMER.CREATE.>",
        "$JS.API.CONSUMER.DURABLE.CREATE.>",
        "$JS.API.CONSUMER.INFO.>",
        "$JS.API.CONSUMER.DELETE.>",
        "$JS.API.CONSUMER.MSG.NEXT.>",
        "$JS.ACK.>",
        "$JS.FC.>",
    ]


def _js_admin() -> list[str]:
    return ["$JS.API.STREAM.CREATE.*", "$JS.API.STREAM.UPDATE.*"]


def permissions(role: str, names: FleetNames) -> dict[str, object]:
    """The permissions of one role. ``allow_responses`` lets a role answer the requests it
    receives (replies go to the requester's ``_INBOX.<role>.…``) without a general grant."""
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
                    *_js_read(names),
                    *_js_admin(),
                ]
            },
            "subscribe": {"allow": [inbox, f"{f}.evt.>"]},
        }
    if role == "backend":
        return {
            "publish": {
                "allow": [kv_secrets, kv_fleet, f"{f}.evt.>", *_js_read(names), *_js_admin()]
            },
            "subscribe": {
                "allow": [inbox, f"{f}.query.>", f"{f}.rewrap"],
                "deny": [f"{f}.share.>"],
            },
            "allow_responses": True,
        }
    if role == "bridge":
        return {
            "publish": {
                "allow": [
                    f"{f}.share.>",
                    f"{f}.node.>",
                    f"{f}.evt.node.misbehaved",
                    f"{f}.rewrap",
                    *_js_read(names),
                ],
                "deny": [f"{f}.cmd.>"],
            },
            "subscribe": {"allow": [inbox, f"{f}.share.>", f"{f}.node.>"]},
            "allow_responses": True,
        }
    raise ValueError(f"unknown role {role!r}")


def password_env(role: str) -> str:
    return f"FG_{role.upper()}_PASSWORD"


def authorization_config(
    names: FleetNames, credentials: dict[str, RoleCredentials] | None = None
) -> str:
    """The ``authorization { users: [...] }`` block of a nats-server config.

    Without ``credentials`` the passwords are environment references
    (``$FG_ADMIN_PASSWORD``, ``$FG_BACKEND_PASSWORD``, ``$FG_BRIDGE_PASSWORD``), which
    nats-server resolves at start: the form used by ``deploy/nats.conf`` for compose.
    nats-server reads a referenced value as config text (``123456`` is a number), so the
    values must be quoted config strings: ``deploy/nats-entrypoint.sh`` quotes them.
    """
    users = []
    for role in ROLES:
        if credentials is None:
            user, password = role, f"__ENV__{password_env(role)}__"
        else:
            user, password = credentials[role].user, credentials[role].password
        users.append({"user": user, "password": password, "permissions": permissions(role, names)})
    text = json.dumps(users, indent=2)
    for role in ROLES:
        text = text.replace(f'"__ENV__{password_env(role)}__"', f"${password_env(role)}")
    return "authorization {\n  users: " + text + "\n}\n"


#: Where a deployment's nats-server serves monitoring (/varz, /connz... name every client
#: and subject): loopback unless chosen otherwise.
DEFAULT_MONITOR_ADDRESS = "127.0.0.1:8222"


def server_config(names: FleetNames, *, monitor_address: str = DEFAULT_MONITOR_ADDRESS) -> str:
    """A complete nats-server config for a deployment (compose): JetStream, monitoring on
    ``monitor_address`` (HOST:PORT), and the role users with their passwords taken from
    the environment."""
    option = (
        ""
        if monitor_address == DEFAULT_MONITOR_ADDRESS
        else f" --monitor-address {monitor_address}"
    )
    return (
        f"# Generated by `flashgate dev nats-config --fleet {names.fleet}{option}`; do not edit.\n"
        "# Passwords: $FG_<ROLE>_PASSWORD, which nats-server reads as config text; run it\n"
        "# through deploy/nats-entrypoint.sh, which passes them on as quoted strings.\n"
        'listen: "0.0.0.0:4222"\n'
        f"http: {json.dumps(monitor_address)}\n"
        'server_name: "flashgate"\n'
        # nats-server keeps JetStream in STORE_DIR/jetstream: /data is the volume.
        'jetstream {\n  store_dir: "/data"\n  max_file_store: 10G\n'
        "  max_memory_store: 256M\n}\n"
        "max_payload: 4MB\n" + authorization_config(names)
    )
