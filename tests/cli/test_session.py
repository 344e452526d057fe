"""The admin session's status requests: an answer counts only when the node signed it, for
this request (``fleet rotate-key`` retires an epoch on these answers). Against a real
nats-server, with the test playing the node."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from flashgate.cli.session import AdminSession
from flashgate.events.node_status import STATUS_REQUEST_CODEC, STATUS_RESPONSE_CODEC, StatusResponse
from flashgate.events.signing import sign
from flashgate.events.subjects import FleetNames
from flashgate.fleet.ceremony import Ceremony, run_ceremony
from flashgate.fleet.directory import write_fleet_dir
from flashgate.fleet.identity_keys import new_ed25519
from tests.support.material import FAST_KDF, TEST_BITS, TEST_PASSPHRASE, fixed_primes

pytestmark = pytest.mark.nats


@pytest.fixture(scope="module")
def ceremony() -> Ceremony:
    return run_ceremony(
        fleet="sessiontest",
        node_ids=["node-1", "node-2"],
        threshold=2,
        bits=TEST_BITS,
        primes=fixed_primes(),
        allow_insecure=True,
    )


@pytest.fixture
def home(
    tmp_path: Path, ceremony: Ceremony, nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> Path:
    write_fleet_dir(tmp_path / "fleet", ceremony, TEST_PASSPHRASE, params=FAST_KDF)
    monkeypatch.setenv("FLASHGATE_NATS_URL", nats_url)
    monkeypatch.setenv("FLASHGATE_PASSPHRASE", TEST_PASSPHRASE)
    return tmp_path


Forge = Callable[[StatusResponse], StatusResponse]


async def answer_as_node_1(nc: Client, ceremony: Ceremony, forge: Forge) -> None:
    bundle = ceremony.bundles[0]

    async def respond(msg: Msg) -> None:
        request = STATUS_REQUEST_CODEC.decode(msg.data)
        now = int(time.time() * 1000)
        answer = StatusResponse(
            fleet=ceremony.descriptor.fleet,
            node_id=bundle.node_id,
            request_id=request.request_id,
            issued_at=now,
            started_at=now,
            epoch=1,
            roster_serial=1,
        )
        await msg.respond(STATUS_RESPONSE_CODEC.encode(forge(sign(answer, bundle.signing_key))))

    subject = FleetNames(ceremony.descriptor.fleet).status_subject(bundle.node_id)
    await nc.subscribe(subject, cb=respond)
    await nc.flush()


@pytest.mark.parametrize(
    ("forge", "counts"),
    [
        (lambda a: a, True),
        (lambda a: sign(msgspec.structs.replace(a, signature=b""), new_ed25519()), False),
        (lambda a: msgspec.structs.replace(a, secrets_held=999), False),  # altered in transit
        (lambda a: msgspec.structs.replace(a, signature=b""), False),
    ],
    ids=["signed-by-node", "signed-by-another-key", "altered", "unsigned"],
)
async def test_status_answers_count_only_when_the_node_signed_them(
    home: Path, ceremony: Ceremony, nc: Client, forge: Forge, counts: bool
) -> None:
    await answer_as_node_1(nc, ceremony, forge)
    async with AdminSession(home) as session:
        answer = await session.status("node-1", timeout=5)
        assert (answer is not None) is counts
        assert ("node-1" in session.unverified) is not counts
        assert await session.status("node-2", timeout=0.5) is None  # silent: offline
        assert "node-2" not in session.unverified


async def test_a_signed_answer_to_another_request_does_not_count(
    home: Path, ceremony: Ceremony, nc: Client
) -> None:
    """A replayed answer (node-1's own signature, an earlier request id) is refused."""
    stale = b"\x01" * 16
    bundle = ceremony.bundles[0]

    def replay(answer: StatusResponse) -> StatusResponse:
        unsigned = msgspec.structs.replace(answer, request_id=stale, signature=b"")
        return sign(unsigned, bundle.signing_key)

    await answer_as_node_1(nc, ceremony, replay)
    async with AdminSession(home) as session:
        assert await session.status("node-1", timeout=5) is None
        assert "node-1" in session.unverified


async def test_the_roster_is_synced_from_the_fleet_bucket(
    home: Path, ceremony: Ceremony, nc: Client
) -> None:
    """A revocation made elsewhere (or one whose outcome came too late) reaches the home
    before the next revoke or rotation deals from it; a roster not signed by the admin
    does not."""
    from flashgate.errors import SignatureInvalid
    from flashgate.events.fleet import ROSTER_CODEC
    from flashgate.fleet.files import ROSTER_FILE, load_roster

    names = FleetNames(ceremony.descriptor.fleet)
    kv = await nc.jetstream().create_key_value(bucket=names.fleet_bucket)
    newer = sign(
        msgspec.structs.replace(
            ceremony.roster,
            serial=ceremony.roster.serial + 1,
            nodes=[
                msgspec.structs.replace(n, status="revoked") if n.id == "node-2" else n
                for n in ceremony.roster.nodes
            ],
            signature="",
        ),
        ceremony.admin_key,
    )
    async with AdminSession(home) as session:
        assert (await session.synced_roster()).serial == ceremony.roster.serial  # no key yet
        await kv.put(FleetNames.ROSTER_KEY, ROSTER_CODEC.encode(newer))
        synced = await session.synced_roster()
        assert synced == newer
        assert load_roster(home / "fleet", ceremony.descriptor) == newer
        assert (home / "fleet" / ROSTER_FILE).exists()
        forged = sign(
            msgspec.structs.replace(newer, serial=newer.serial + 1, signature=""), new_ed25519()
        )
        await kv.put(FleetNames.ROSTER_KEY, ROSTER_CODEC.encode(forged))
        with pytest.raises(SignatureInvalid):
            await session.synced_roster()
        assert load_roster(home / "fleet", ceremony.descriptor) == newer
    await nc.jetstream().delete_key_value(names.fleet_bucket)
