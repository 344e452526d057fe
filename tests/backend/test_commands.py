"""Command -> database -> bucket -> event, on SQLite and PostgreSQL (real nats-server)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import msgspec
import pytest
from nats.js.errors import KeyNotFoundError
from sqlalchemy import func, insert, select

from flashgate.backend.models import (
    ApiKey,
    AuditEvent,
    ProcessedCommand,
    Repository,
    Secret,
    SecretVersion,
)
from flashgate.backend.service import Backend
from flashgate.crypto import jwe
from flashgate.events import commands as cmd
from flashgate.events.envelope import ENVELOPE_CODEC
from flashgate.events.signing import sign, verify
from flashgate.fleet.identity_keys import new_ed25519
from tests.support.admin_client import AdminClient, new_command_id
from tests.support.fleets import FleetFixture
from tests.support.material import CANARY, stated

pytestmark = pytest.mark.nats


async def kv_envelope(admin: AdminClient, key: str):
    kv = await admin.js.key_value(admin.fleet.names.secrets_bucket)
    entry = await kv.get(key)
    return ENVELOPE_CODEC.decode(entry.value)


async def wait_kv(admin: AdminClient, key: str, version: int, timeout: float = 10.0):
    import asyncio
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            env = await kv_envelope(admin, key)
            if env.version == version:
                return env
        except KeyNotFoundError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{key} v{version} never reached the bucket")
        await asyncio.sleep(0.05)


async def test_put_reaches_database_bucket_and_event(backend: Backend, admin: AdminClient) -> None:
    command = admin.put("payments", "s3", CANARY, kind="storage")
    event = await admin.send(command)
    assert event.type == "io.flashgate.secret.created"
    assert (event.data.repo, event.data.name, event.data.version) == ("payments", "s3", 1)
    env = await wait_kv(admin, "payments.s3", 1)
    assert env.jwe == command.jwe and env.epoch == 1 and env.kind == "storage"
    assert env.command_id == command.command_id
    assert jwe.parse(env.jwe).context == env.context
    assert backend.sessions is not None
    async with backend.sessions() as session:
        secret = await session.scalar(select(Secret).where(Secret.name == "s3"))
        assert secret is not None and secret.current_version == 1
        versions = await session.scalar(select(func.count()).select_from(SecretVersion))
        assert versions == 1
        audit = (await session.scalars(select(AuditEvent))).all()
        assert [(a.result, a.target) for a in audit] == [("applied", "payments.s3")]


async def test_rotate_delete_and_recreate(backend: Backend, admin: AdminClient) -> None:
    await admin.send(admin.put("app", "db", b"v1"))
    rotated = await admin.send(admin.rotate("app", "db", b"v2", version=2))
    assert rotated.type == "io.flashgate.secret.rotated"
    assert (rotated.data.version, rotated.data.previous_version) == (2, 1)
    await wait_kv(admin, "app.db", 2)
    deleted_command = admin.delete("app", "db")
    deleted = await admin.send(deleted_command)
    assert deleted.type == "io.flashgate.secret.deleted" and deleted.data.last_version == 2
    kv = await admin.js.key_value(admin.fleet.names.secrets_bucket)
    for _ in range(100):
        try:
            await kv.get("app.db")
        except KeyNotFoundError:
            break
        import asyncio

        await asyncio.sleep(0.05)
    else:
        pytest.fail("delete marker never reached the bucket")
    # the admin-signed command, as signed, is the tombstone the nodes keep
    fleet_kv = await admin.js.key_value(admin.fleet.names.fleet_bucket)
    tombstone = await fleet_kv.get(admin.fleet.names.secret_tombstone_key("app", "db"))
    assert tombstone.value is not None
    signed = cmd.COMMAND_CODEC.decode(tombstone.value)
    assert signed == deleted_command
    # Versions never go backwards: a re-created secret continues at last + 1 (version 1
    # names its first value for good).
    stale = await admin.send(admin.put("app", "db", b"again", version=1))
    assert stale.type == "io.flashgate.command.rejected"
    assert stale.data.reason == "version_conflict"
    again = await admin.send(admin.put("app", "db", b"again", version=3))
    assert again.type == "io.flashgate.secret.created" and again.data.version == 3


async def test_rejections_name_secrets_as_repo_slash_name(
    backend: Backend, admin: AdminClient
) -> None:
    """The CLI takes REPO/NAME; the backend's reasons use the same form (not repo.name)."""
    await admin.send(admin.put("ml", "openai", b"v1", kind="ai"))
    changed = await admin.send(admin.rotate("ml", "openai", b"v2", version=2, kind="generic"))
    assert changed.type == "io.flashgate.command.rejected"
    assert "ml/openai is of kind ai, not generic" in changed.data.detail
    assert changed.data.reason == "kind_change"  # a conflict, not a configuration error
    stale = await admin.send(admin.rotate("ml", "openai", b"v", version=5, kind="ai"))
    missing = await admin.send(admin.rotate("ml", "missing", b"v", version=2))
    exists = await admin.send(admin.put("ml", "openai", b"v", version=2, kind="ai"))
    gone = await admin.send(admin.delete("ml", "missing"))
    details = [e.data.detail for e in (changed, stale, missing, exists, gone)]
    assert ["ml/" in d for d in details] == [True] * 5, details
    assert not any("ml.openai" in d or "ml.missing" in d for d in details), details


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        ("unsigned", "bad_signature"),
        ("wrong_signer", "bad_signature"),
        ("foreign_fleet", "fleet_mismatch"),
        ("stale_version", "stale_version"),
        ("rotate_missing", "not_found"),
        ("context_moved", "context_mismatch"),
        ("wrong_epoch", "stale_epoch"),
        ("bad_alg", "unsupported_algorithm"),
        ("reserved_name", "bad_configuration"),
        ("statement_of_another_value", "unproven"),
        ("statement_not_by_the_admin", "unproven"),
        ("no_statement", "unproven"),
    ],
)
async def test_bad_commands_are_rejected_with_their_reason(
    backend: Backend, admin: AdminClient, make: str, reason: str
) -> None:
    await admin.send(admin.put("repo", "existing", b"x"))
    good = admin.put("repo", "fresh", b"value")
    base = {k: getattr(good, k) for k in ("command_id", "fleet", "actor", "issued_at")}
    fields = {k: getattr(good, k) for k in ("repo", "name", "kind", "version", "epoch", "jwe")}
    if make == "unsigned":
        command = msgspec.structs.replace(good, signature="")
    elif make == "wrong_signer":
        command = sign(msgspec.structs.replace(good, signature=""), new_ed25519())
    elif make == "foreign_fleet":
        command = sign(
            stated(cmd.PutSecret, admin.fleet.admin, **{**base, "fleet": "elsewhere"}, **fields),
            admin.fleet.admin,
        )
    elif make == "stale_version":
        command = admin.put("repo", "fresh", b"v", version=2)
    elif make == "rotate_missing":
        command = admin.rotate("repo", "missing", b"v", version=1)
    elif make == "context_moved":  # the JWE was written for another secret
        command = sign(
            stated(
                cmd.PutSecret,
                admin.fleet.admin,
                **base,
                **{**fields, "jwe": admin.jwe("repo", "other", b"v")},
            ),
            admin.fleet.admin,
        )
    elif make == "wrong_epoch":
        command = sign(
            stated(cmd.PutSecret, admin.fleet.admin, **base, **{**fields, "epoch": 2}),
            admin.fleet.admin,
        )
    elif make == "bad_alg":
        header = jwe.encode_header({"alg": "RSA-OAEP", "enc": "A256GCM"})
        token = ".".join([header, *good.jwe.split(".")[1:]])
        command = sign(
            stated(cmd.PutSecret, admin.fleet.admin, **base, **{**fields, "jwe": token}),
            admin.fleet.admin,
        )
    elif make == "statement_of_another_value":
        other = admin.put("repo", "fresh", b"another value")
        command = sign(
            msgspec.structs.replace(good, statement=other.statement, signature=""),
            admin.fleet.admin,
        )
    elif make == "no_statement":  # an older CLI
        command = sign(
            msgspec.structs.replace(good, statement=None, signature=""), admin.fleet.admin
        )
    elif make == "statement_not_by_the_admin":
        statement = sign(msgspec.structs.replace(good.statement, signature=""), new_ed25519())
        command = sign(
            msgspec.structs.replace(good, statement=statement, signature=""), admin.fleet.admin
        )
    else:  # names starting fgk_ belong to API keys
        command = admin.put("repo", "fgk_abc", b"v")
    event = await admin.send(command)
    assert event.type == "io.flashgate.command.rejected"
    assert event.data.reason == reason
    assert CANARY.decode() not in event.data.detail
    # ... and the service is alive and loses nothing: the next good command applies.
    assert (await admin.send(admin.put("repo", "after", b"ok"))).type.endswith("secret.created")


async def test_malformed_and_oversized_commands(backend: Backend, admin: AdminClient) -> None:
    await admin.publish(b"{not json", "secret.put", msg_id="junk-1")
    await admin.publish(
        b'{"type":"secret.put","command_id":"cmd-0123456789abcdef"}', "secret.put", msg_id="junk-2"
    )
    await admin.publish(b"x" * (cmd.MAX_COMMAND_BYTES + 1), "secret.put", msg_id="junk-3")
    named = await admin.outcome("cmd-0123456789abcdef")
    assert named.data.reason == "malformed_message"
    good = await admin.send(admin.put("r", "n", b"v"))
    assert good.type.endswith("secret.created")
    reasons = sorted(e.data.reason for e in admin.events if e.type.endswith("rejected"))
    assert reasons == ["malformed_message", "malformed_message", "oversized"]


async def test_duplicate_command_id_is_a_no_op(backend: Backend, admin: AdminClient) -> None:
    command = admin.put("r", "dup", b"v1")
    first = await admin.send(command)
    await admin.publish(command, msg_id="a-different-nats-msg-id")
    import asyncio

    for _ in range(100):  # wait until the backend has seen the repeat
        assert backend.sessions is not None
        async with backend.sessions() as session:
            results = (
                await session.scalars(
                    select(AuditEvent.result).where(AuditEvent.command_id == command.command_id)
                )
            ).all()
        if "duplicate" in results:
            break
        await asyncio.sleep(0.05)
    assert sorted(results) == ["applied", "duplicate"]
    async with backend.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(SecretVersion)) == 1
        processed = await session.get(ProcessedCommand, command.command_id)
        assert processed is not None and processed.result == "applied"
    assert first.data.version == 1


async def test_the_same_version_with_another_jwe_is_a_version_conflict(
    backend: Backend, admin: AdminClient
) -> None:
    """A version a secret already has, with another JWE, is refused naming the secret and
    the version (not taken as new, not silently a no-op); the identical command re-sent is
    a duplicate (issue 14 §4). (A put of a live secret stays already_exists: use rotate.)"""
    await admin.send(admin.put("app", "token", b"v1"))
    first = admin.rotate("app", "token", b"v2", version=2)
    await admin.send(first)
    other_rotate = await admin.send(admin.rotate("app", "token", b"evil", version=2))
    other_old = await admin.send(admin.rotate("app", "token", b"evil", version=1))
    for refused in (other_rotate, other_old):
        assert refused.type == "io.flashgate.command.rejected"
        assert refused.data.reason == "version_conflict", refused.data
    assert "app/token already has version 2 with another value" in other_rotate.data.detail
    assert "app/token already has version 1 with another value" in other_old.data.detail
    await admin.publish(first, msg_id="the-same-command-again")
    async with asyncio.timeout(10):
        while True:  # the repeat is recorded as a duplicate, nothing else changes
            assert backend.sessions is not None
            async with backend.sessions() as session:
                results = (
                    await session.scalars(
                        select(AuditEvent.result).where(AuditEvent.command_id == first.command_id)
                    )
                ).all()
            if "duplicate" in results:
                break
            await asyncio.sleep(0.05)
    env = await wait_kv(admin, "app.token", 2)
    assert env.jwe == first.jwe
    async with backend.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(SecretVersion)) == 2


async def test_a_version_above_the_cap_is_malformed(backend: Backend, admin: AdminClient) -> None:
    """Versions stop at 2^31 - 1 on the wire: one above is malformed, whoever signed it."""
    good = admin.put("app", "pin", b"x")
    fields = {f: getattr(good, f) for f in good.__struct_fields__ if f != "signature"}
    pinned = sign(cmd.PutSecret(**{**fields, "version": 2**31}), admin.fleet.admin)
    await admin.publish(pinned)
    refused = await admin.outcome(pinned.command_id)
    assert refused.type == "io.flashgate.command.rejected"
    assert refused.data.reason == "malformed_message", refused.data


async def test_api_keys(backend: Backend, admin: AdminClient) -> None:
    from flashgate.crypto.api_key_tokens import new_key_id, new_key_secret

    key_id, secret = new_key_id(), new_key_secret()
    create = sign(
        stated(
            cmd.CreateApiKey,
            admin.fleet.admin,
            **admin.base(),
            key_id=key_id,
            repo="payments",
            scope="storage",
            access="read",
            label="CI reader",
            epoch=1,
            jwe=admin.jwe("payments", key_id, secret, kind="apikey"),
        ),
        admin.fleet.admin,
    )
    created = await admin.send(create)
    assert created.type == "io.flashgate.apikey.created"
    env = await wait_kv(admin, f"payments.{key_id}", 1)
    assert env.kind == "apikey" and env.api_key is not None and env.api_key.access == "read"
    renamed = await admin.send(
        sign(
            cmd.RenameApiKey(**admin.base(), key_id=key_id, label="CI reader v2"), admin.fleet.admin
        )
    )
    assert renamed.type == "io.flashgate.apikey.renamed"
    bad_access = sign(
        stated(
            cmd.CreateApiKey,
            admin.fleet.admin,
            **{**admin.base(), "command_id": new_command_id()},
            key_id=new_key_id(),
            repo="payments",
            scope="storage",
            access="root",
            label="x",
            epoch=1,
            jwe=create.jwe,
        ),
        admin.fleet.admin,
    )
    assert (await admin.send(bad_access)).data.reason == "bad_configuration"
    revoked = await admin.send(
        sign(cmd.RevokeApiKey(**admin.base(), key_id=key_id), admin.fleet.admin)
    )
    assert revoked.type == "io.flashgate.apikey.revoked"
    fleet_kv = await admin.js.key_value(admin.fleet.names.fleet_bucket)
    tombstone = await fleet_kv.get(admin.fleet.names.api_key_tombstone_key(key_id))
    assert tombstone.value is not None
    revocation = cmd.COMMAND_CODEC.decode(tombstone.value)
    assert isinstance(revocation, cmd.RevokeApiKey) and revocation.key_id == key_id
    verify(revocation, admin.fleet.admin.public_key())
    again = await admin.send(
        sign(cmd.RevokeApiKey(**admin.base(), key_id=key_id), admin.fleet.admin)
    )
    assert again.data.reason == "not_found"
    listing = await admin.query("apikeys", include_deleted=True)
    [row] = listing["api_keys"]
    assert row["key_id"] == key_id and row["label"] == "CI reader v2" and row["revoked_at"]
    assert "jwe" not in row


async def test_metadata_queries(backend: Backend, admin: AdminClient) -> None:
    await admin.send(admin.put("alpha", "one", b"1"))
    await admin.send(admin.rotate("alpha", "one", b"2", version=2))
    await admin.send(admin.put("beta", "two", b"2", kind="ai"))
    repos = await admin.query("repositories")
    assert [(r["name"], r["secrets"]) for r in repos["repositories"]] == [("alpha", 1), ("beta", 1)]
    secrets = await admin.query("secrets", repo="alpha")
    [one] = secrets["secrets"]
    assert one["current_version"] == 2 and [v[0] for v in one["versions"]] == [1, 2]
    assert "jwe" not in msgspec.json.encode(secrets).decode()
    pages = [await admin.query("secrets", limit=1, offset=i) for i in range(3)]
    assert [[(s["repo"], s["name"]) for s in p["secrets"]] for p in pages] == [
        [("alpha", "one")],
        [("beta", "two")],
        [],
    ]
    assert [v[0] for v in pages[0]["secrets"][0]["versions"]] == [1, 2]
    audit = await admin.query("audit", limit=2)
    assert len(audit["audit"]) == 2 and audit["audit"][0]["result"] == "applied"
    bad = await admin.query("secrets", repo="Not.Valid")
    assert bad["ok"] is False and bad["error"] == "malformed_message"


async def test_unmigrated_database_is_refused(nats_url: str, fleet: FleetFixture, tmp_path) -> None:
    from flashgate.backend.service import BackendSettings
    from flashgate.errors import ConfigurationError

    service = Backend(
        BackendSettings(
            nats_urls=[nats_url], db_url=f"sqlite:///{tmp_path / 'empty.db'}", fleet_dir=fleet.dir
        )
    )
    with pytest.raises(ConfigurationError, match="flashgate backend migrate"):
        await service.start()
    await service.stop()


async def test_second_replica_on_sqlite_is_refused(
    nats_url: str, fleet: FleetFixture, tmp_path
) -> None:
    from flashgate.backend import db
    from flashgate.backend.service import BackendSettings
    from flashgate.errors import ConfigurationError

    url = f"sqlite:///{tmp_path / 'one.db'}"
    await asyncio.to_thread(db.migrate, url)
    first = Backend(BackendSettings(nats_urls=[nats_url], db_url=url, fleet_dir=fleet.dir))
    await first.start()
    try:
        second = Backend(BackendSettings(nats_urls=[nats_url], db_url=url, fleet_dir=fleet.dir))
        with pytest.raises(ConfigurationError, match="one backend replica"):
            await second.start()
        await second.stop()
    finally:
        await first.stop()


async def test_outcome_msg_id_is_stored_with_the_claim(
    backend: Backend, admin: AdminClient
) -> None:
    put = admin.put("r", "claimed", b"v1")
    created = await admin.send(put)
    rotated = await admin.send(admin.rotate("r", "claimed", b"v2", version=2))
    assert backend.sessions is not None
    async with backend.sessions() as session:
        for event in (created, rotated):
            processed = await session.get(ProcessedCommand, event.data.command_id)
            assert processed is not None and processed.outcome_msg_id == f"evt:{event.id}"


async def test_a_rejected_write_to_a_new_repository_leaves_no_trace(
    backend: Backend, admin: AdminClient
) -> None:
    # The rejected write creates the repository in a transaction that rolls back: its id
    # must not be remembered (the next write would point at a row that does not exist).
    bad = await admin.send(admin.put("fresh", "s", b"v", version=2))
    assert bad.type == "io.flashgate.command.rejected" and bad.data.reason == "stale_version"
    for name in ("s", "t"):
        event = await admin.send(admin.put("fresh", name, b"v"))
        assert event.type == "io.flashgate.secret.created"
    await wait_kv(admin, "fresh.t", 1)


async def test_secrets_by_name_and_keyset_pages_past_1000(
    backend: Backend, admin: AdminClient
) -> None:
    """A secret is found by name however many its repository holds, and listings page with
    a cursor to the end (rows inserted directly: 1100 secrets, 1001 API keys)."""
    await admin.send(admin.put("big", "seed", b"v"))
    assert backend.sessions is not None
    async with backend.sessions() as session:
        repo_id = await session.scalar(select(Repository.id).where(Repository.name == "big"))
        now = datetime.now(UTC)
        await session.execute(
            insert(Secret),
            [
                {
                    "repository_id": repo_id,
                    "name": f"s{i:04d}",
                    "kind": "generic",
                    "current_version": 3 if i == 1099 else 1,
                    "deleted": i == 1099,
                    "created_at": now,
                    "updated_at": now,
                }
                for i in range(1100)
            ],
        )
        await session.execute(
            insert(ApiKey),
            [
                {
                    "key_id": f"fgk_{i:024d}",
                    "repository_id": repo_id,
                    "scope": "storage",
                    "access": "read",
                    "label": f"key {i}",
                    "epoch": 1,
                    "jwe": "x",
                    "created_at": now,
                }
                for i in range(1001)
            ],
        )
        await session.commit()
    last = await admin.query("secrets", repo="big", name="s1099", include_deleted=True)
    assert [(s["name"], s["current_version"], s["deleted"]) for s in last["secrets"]] == [
        ("s1099", 3, True)
    ]
    assert (await admin.query("secrets", repo="big", name="s1099"))["secrets"] == []
    names, after, pages = [], None, 0
    while True:
        page = await admin.query(
            "secrets",
            repo="big",
            include_deleted=True,
            limit=1000,
            **({"after": after} if after else {}),
        )
        pages += 1
        names += [s["name"] for s in page["secrets"]]
        after = page.get("next")
        if after is None:
            break
    assert names == sorted([f"s{i:04d}" for i in range(1100)] + ["seed"])
    assert pages == 2
    keys, after = [], None
    while True:
        page = await admin.query("apikeys", limit=1000, **({"after": after} if after else {}))
        keys += [k["key_id"] for k in page["api_keys"]]
        after = page.get("next")
        if after is None:
            break
    assert keys == [f"fgk_{i:024d}" for i in range(1001)]
    one = await admin.query("apikeys", name="fgk_" + "0" * 21 + "999")
    assert [k["label"] for k in one["api_keys"]] == ["key 999"]
