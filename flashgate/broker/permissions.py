"""NATS users and subject permissions, one user per role (dev cluster and compose).

| role    | may publish                                   | may subscribe              |
|---------|-----------------------------------------------|----------------------------|
| admin   | commands, queries, status requests, JS API    | events, its inbox          |
| backend | KV writes, events, JS API                     | queries, its inbox         |
| bridge  | share requests, heartbeats, misbehaviour      | share, node subjects,      |
|         | events, JS API (KV watch)                     | its inbox                  |

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
            "subscribe": {"allow": [inbox, f"{f}.query.>"], "deny": [f"{f}.share.>"]},
            "allow_responses": True,
        }
    if role == "bridge":
        return {
            "publish": {
                "allow": [
                    f"{f}.share.>",
                    f"{f}.node.>",
                    f"{f}.evt.node.misbehaved",
                    *_js_read(names),
                ],
                "deny": [f"{f}.cmd.>"],
            },
            "subscribe": {"allow": [inbox, f"{f}.share.>", f"{f}.node.>"]},
            "allow_responses": True,
        }
    raise ValueError(f"unknown role {role!r}")


def authorization_config(names: FleetNames, credentials: dict[str, RoleCredentials]) -> str:
    """The ``authorization { users: [...] }`` block of a nats-server config."""
    users = []
    for role in ROLES:
        cred = credentials[role]
        users.append(
            {"user": cred.user, "password": cred.password, "permissions": permissions(role, names)}
        )
    return "authorization {\n  users: " + json.dumps(users, indent=2) + "\n}\n"
