"""Unit tests of the share protocol's rules (flashgate/bridge/protocol.py), with a manual
clock: responder screening and its counted refusals, the order of the checks, sealed and
signed responses, the replay cache and the rate limiter."""

from __future__ import annotations

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from flashgate.bridge.protocol import (
    ProtocolLimits,
    RateLimiter,
    Responder,
    build_request,
    open_response,
)
from flashgate.bridge.screening import ReplayCache
from flashgate.crypto import box
from flashgate.errors import Refused
from flashgate.events.fleet import Roster
from flashgate.events.share import (
    MAX_SHARE_REQUEST_BYTES,
    SHARE_REQUEST_CODEC,
    SHARE_RESPONSE_CODEC,
    ShareItem,
    ShareItemRefusal,
    SharePartial,
    ShareProof,
    ShareRequest,
)
from flashgate.events.signing import sign
from tests.support.bridge_units import EPOCH, FLEET, MEMBERS, T0, ManualClock, bundle, roster

RESPONDER = "node-2"
REQUESTER = "node-1"
SKEW_MS = 30_000
ITEMS = [
    ShareItem("payments.s3", 3, b"\x11" * 32),
    ShareItem("payments.openai", 9, b"\x22" * 32),
]
PARTIALS = [
    SharePartial("payments.s3", 3, b"\x05" * 128, ShareProof(b"\x01" * 32, b"\x02" * 200)),
    SharePartial("payments.openai", 9, b"\x06" * 128, None),
]
REFUSALS = [ShareItemRefusal("search.gcs", 4, "unknown_secret")]


class Scene:
    """One responder (node-2) and a clock; requests from any node of the test fleet."""

    def __init__(self, *, limits: ProtocolLimits | None = None, fleet_roster: Roster | None = None):
        self.clock = ManualClock()
        self.roster = fleet_roster or roster()
        self.members = dict(MEMBERS)  # the nodes dealt a share of EPOCH
        self.responder = self.responder_for(RESPONDER, limits=limits)

    def responder_for(
        self,
        node_id: str,
        *,
        signing_key: Ed25519PrivateKey | None = None,
        limits: ProtocolLimits | None = None,
    ) -> Responder:
        return Responder(
            node_id=node_id,
            fleet=FLEET,
            signing_key=signing_key or bundle(node_id).signing_key,
            roster=lambda: self.roster,
            members=lambda epoch: self.members if epoch == EPOCH else None,
            clock=self.clock,
            limits=limits or ProtocolLimits(skew_ms=SKEW_MS),
        )

    def request(
        self,
        requester: str = REQUESTER,
        *,
        key: Ed25519PrivateKey | None = None,
        fleet: str = FLEET,
        epoch: int = EPOCH,
        issued_at: int | None = None,
        to: str = RESPONDER,
        items: list[ShareItem] | None = None,
        proofs: bool = False,
    ) -> tuple[bytes, ShareRequest, X25519PrivateKey]:
        """A signed request from ``requester`` (by default signed with its own key)."""
        clock = ManualClock(self.clock.now if issued_at is None else issued_at)
        return build_request(
            node_id=requester,
            responder=to,
            fleet=fleet,
            epoch=epoch,
            signing_key=key or bundle(requester).signing_key,
            items=ITEMS if items is None else items,
            proofs=proofs,
            clock=clock,
        )

    def refusal(self, raw: bytes) -> str:
        with pytest.raises(Refused) as caught:
            self.responder.screen(raw)
        return caught.value.reason


def resigned(request: ShareRequest, key: Ed25519PrivateKey, **changes: object) -> bytes:
    return SHARE_REQUEST_CODEC.encode(sign(msgspec.structs.replace(request, **changes), key))


def tampered(request: ShareRequest, **changes: object) -> bytes:
    """``request`` changed after signing (the old signature kept)."""
    return SHARE_REQUEST_CODEC.encode(msgspec.structs.replace(request, **changes))


# --- screening: each refusal reason, raised and counted -----------------------------------


def test_a_valid_request_passes() -> None:
    scene = Scene()
    raw, request, _ = scene.request()
    screened = scene.responder.screen(raw)
    assert screened == request
    assert screened.items == ITEMS
    assert sum(scene.responder.refused.values()) == 0


def refusal_cases() -> list[tuple[str, str]]:
    return [
        ("oversized", "oversized"),
        ("garbage", "malformed"),
        ("json instead of msgpack", "malformed"),
        ("wrong fleet", "wrong_fleet"),
        ("wrong epoch", "wrong_epoch"),
        ("from itself", "self_request"),
        ("unknown node", "unknown_requester"),
        ("revoked node", "revoked_requester"),
        ("active, but dealt no share of the epoch", "not_a_member"),
        ("issued too long ago", "stale"),
        ("issued in the future", "stale"),
        ("signed by another node", "bad_signature"),
        ("changed after signing", "bad_signature"),
        ("unsigned", "bad_signature"),
    ]


def bad_request(scene: Scene, case: str) -> bytes:
    raw, request, _ = scene.request()
    match case:
        case "oversized":
            return b"\x80" * (MAX_SHARE_REQUEST_BYTES + 1)
        case "garbage":
            return b"\xc1 this is not msgpack"
        case "json instead of msgpack":
            return msgspec.json.encode(request)
        case "wrong fleet":
            return resigned(request, bundle(REQUESTER).signing_key, fleet="otherfleet")
        case "wrong epoch":
            return resigned(request, bundle(REQUESTER).signing_key, epoch=EPOCH + 1)
        case "from itself":
            return scene.request(RESPONDER)[0]
        case "unknown node":
            return scene.request("node-9", key=Ed25519PrivateKey.generate())[0]
        case "revoked node":
            scene.roster = roster(revoked=[REQUESTER])
            return raw
        case "active, but dealt no share of the epoch":
            # a roster written back from before its revocation says "active"; the epoch's
            # descriptor does not name it
            del scene.members[REQUESTER]
            return raw
        case "issued too long ago":
            return scene.request(issued_at=scene.clock.now - SKEW_MS - 1)[0]
        case "issued in the future":
            return scene.request(issued_at=scene.clock.now + SKEW_MS + 1)[0]
        case "signed by another node":
            return resigned(request, bundle("node-3").signing_key)
        case "changed after signing":
            return tampered(request, items=[ITEMS[0]])
        case "unsigned":
            return tampered(request, signature=b"")
    raise AssertionError(case)


@pytest.mark.parametrize(("case", "reason"), refusal_cases(), ids=[c for c, _ in refusal_cases()])
def test_each_refusal_is_raised_and_counted(case: str, reason: str) -> None:
    scene = Scene()
    raw = bad_request(scene, case)
    assert scene.refusal(raw) == reason
    assert scene.responder.refused == {reason: 1}


def test_issued_at_exactly_at_the_skew_limit_is_accepted() -> None:
    scene = Scene()
    for issued_at in (scene.clock.now - SKEW_MS, scene.clock.now + SKEW_MS):
        raw, _, _ = scene.request(issued_at=issued_at)
        scene.responder.screen(raw)


def test_a_replayed_request_is_refused() -> None:
    scene = Scene()
    raw, _, _ = scene.request()
    scene.responder.screen(raw)
    scene.clock.advance(1_000)
    assert scene.refusal(raw) == "replay"
    assert scene.responder.refused == {"replay": 1}


def test_a_replay_is_refused_for_as_long_as_the_request_is_fresh() -> None:
    scene = Scene()
    raw, _, _ = scene.request(issued_at=T0 - SKEW_MS)  # accepted at the edge of the window
    scene.responder.screen(raw)
    for later in (T0, T0 + 1):  # still fresh at T0, stale after
        scene.clock.now = later
        reason = scene.refusal(raw)
        assert reason == ("replay" if later == T0 else "stale")


def test_a_request_is_answered_only_by_the_responder_it_names() -> None:
    """The responder is signed into the request: a broker forwarding it to every node
    within the window gets it refused by all but one."""
    scene = Scene()
    other = scene.responder_for("node-3")
    raw, request, _ = scene.request()
    with pytest.raises(Refused) as caught:
        other.screen(raw)
    assert caught.value.reason == "wrong_responder"
    scene.responder.screen(raw)
    readdressed = tampered(request, responder="node-3")  # the signature no longer holds
    with pytest.raises(Refused) as caught:
        other.screen(readdressed)
    assert caught.value.reason == "bad_signature"


def test_the_rate_is_charged_per_item_and_proofs_cost_more() -> None:
    limits = ProtocolLimits(skew_ms=SKEW_MS, rate_per_second=1.0, burst=8, proof_cost=4)
    scene = Scene(limits=limits)
    scene.responder.screen(scene.request(items=ITEMS * 1)[0])  # 4: the least a request costs
    one_proof = [ITEMS[0]]
    scene.responder.screen(scene.request(items=one_proof, proofs=True)[0])  # 4 more
    assert scene.refusal(scene.request(items=one_proof)[0]) == "rate_limited"


def test_a_key_asked_twice_in_one_request_is_refused() -> None:
    scene = Scene()
    assert scene.refusal(scene.request(items=[ITEMS[0], ITEMS[0]])[0]) == "duplicate_items"
    again = ShareItem(ITEMS[0].key, ITEMS[0].revision + 1, ITEMS[0].digest)
    assert scene.refusal(scene.request(items=[ITEMS[0], again])[0]) == "duplicate_items"


def test_proofs_are_capped_per_request() -> None:
    scene = Scene(limits=ProtocolLimits(skew_ms=SKEW_MS, max_proof_items=1))
    assert scene.refusal(scene.request(proofs=True)[0]) == "too_many_proofs"
    scene.responder.screen(scene.request(items=[ITEMS[0]], proofs=True)[0])


def test_a_rate_limited_request_leaves_no_id_behind() -> None:
    scene = Scene(limits=ProtocolLimits(skew_ms=SKEW_MS, rate_per_second=4.0, burst=4))
    scene.responder.screen(scene.request()[0])
    raw, _, _ = scene.request()
    assert scene.refusal(raw) == "rate_limited"
    scene.clock.advance(1_000)
    assert scene.responder.screen(raw)  # not a replay: the refused id was not remembered


def test_a_full_replay_cache_refuses_rather_than_forget_an_id_inside_the_window() -> None:
    scene = Scene(limits=ProtocolLimits(skew_ms=SKEW_MS, replay_ids=2))
    first, _, _ = scene.request()
    scene.responder.screen(first)
    scene.responder.screen(scene.request()[0])
    assert scene.refusal(scene.request()[0]) == "replay_cache_full"
    assert scene.refusal(first) == "replay"  # still remembered
    scene.clock.advance(2 * SKEW_MS + 1)  # the ids age out of the window
    scene.responder.screen(scene.request()[0])


def test_a_requester_filling_the_replay_cache_locks_out_only_itself() -> None:
    """The ids are remembered per signer: one peer at its rate limit (or a compromised
    one) fills its own share of the cache and is refused; the others are not."""
    scene = Scene(limits=ProtocolLimits(skew_ms=SKEW_MS, replay_ids=2))
    scene.responder.screen(scene.request("node-1")[0])
    scene.responder.screen(scene.request("node-1")[0])
    assert scene.refusal(scene.request("node-1")[0]) == "replay_cache_full"
    scene.responder.screen(scene.request("node-3")[0])  # another requester: still served
    scene.responder.screen(scene.request("node-3")[0])


def test_rate_limited_with_a_frozen_clock_then_allowed_after_it_advances() -> None:
    scene = Scene(limits=ProtocolLimits(skew_ms=SKEW_MS, rate_per_second=16.0, burst=12))
    for _ in range(3):
        scene.responder.screen(scene.request()[0])
    assert scene.refusal(scene.request()[0]) == "rate_limited"
    assert scene.refusal(scene.request()[0]) == "rate_limited"
    assert scene.responder.refused == {"rate_limited": 2}
    scene.clock.advance(250)  # 4 per second: one token back
    scene.responder.screen(scene.request()[0])
    assert scene.refusal(scene.request()[0]) == "rate_limited"


def test_the_rate_limit_is_per_requester() -> None:
    scene = Scene(limits=ProtocolLimits(skew_ms=SKEW_MS, rate_per_second=4.0, burst=4))
    scene.responder.screen(scene.request("node-1")[0])
    assert scene.refusal(scene.request("node-1")[0]) == "rate_limited"
    scene.responder.screen(scene.request("node-3")[0])


def test_refusals_are_counted_by_reason() -> None:
    scene = Scene()
    raw, _, _ = scene.request()
    scene.responder.screen(raw)
    for _ in range(2):
        scene.refusal(raw)
    scene.refusal(b"garbage")
    assert scene.responder.refused == {"replay": 2, "malformed": 1}


# --- the order of the checks --------------------------------------------------------------


def test_a_replayed_id_with_a_bad_signature_is_bad_signature_not_replay() -> None:
    scene = Scene()
    raw, request, _ = scene.request()
    scene.responder.screen(raw)
    forged = resigned(request, bundle("node-3").signing_key)  # same request id
    assert scene.refusal(forged) == "bad_signature"
    assert scene.responder.refused == {"bad_signature": 1}


def test_a_forged_request_cannot_burn_a_request_id() -> None:
    scene = Scene()
    raw, request, _ = scene.request()
    forged = tampered(request, items=[ITEMS[1]])  # same id, arrives first
    assert scene.refusal(forged) == "bad_signature"
    assert scene.responder.screen(raw) == request


def test_a_replay_is_refused_before_the_rate_limit_is_charged() -> None:
    scene = Scene(limits=ProtocolLimits(skew_ms=SKEW_MS, rate_per_second=4.0, burst=8))
    raw, _, _ = scene.request()
    scene.responder.screen(raw)
    for _ in range(3):
        assert scene.refusal(raw) == "replay"
    scene.responder.screen(scene.request()[0])  # the second token is still there


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("wrong fleet, bad signature", "wrong_fleet"),
        ("wrong epoch, bad signature", "wrong_epoch"),
        ("unknown requester, stale", "unknown_requester"),
        ("revoked requester, bad signature", "revoked_requester"),
        ("stale, bad signature", "stale"),
        ("self, stale", "self_request"),
    ],
)
def test_cheaper_checks_come_first(case: str, reason: str) -> None:
    scene = Scene()
    _, request, _ = scene.request()
    other = bundle("node-3").signing_key
    match case:
        case "wrong fleet, bad signature":
            raw = resigned(request, other, fleet="otherfleet")
        case "wrong epoch, bad signature":
            raw = resigned(request, other, epoch=EPOCH + 1)
        case "unknown requester, stale":
            raw = resigned(request, other, requester="node-9", issued_at=T0 - 10 * SKEW_MS)
        case "revoked requester, bad signature":
            scene.roster = roster(revoked=[REQUESTER])
            raw = resigned(request, other)
        case "stale, bad signature":
            raw = resigned(request, other, issued_at=T0 - 10 * SKEW_MS)
        case "self, stale":
            raw = resigned(request, other, requester=RESPONDER, issued_at=T0 - 10 * SKEW_MS)
        case _:
            raise AssertionError(case)
    assert scene.refusal(raw) == reason
    assert scene.responder.refused == {reason: 1}


# --- responses ----------------------------------------------------------------------------


def test_respond_then_open_response_round_trip() -> None:
    scene = Scene()
    raw, request, reply_key = scene.request()
    screened = scene.responder.screen(raw)
    response = scene.responder.respond(screened, PARTIALS, REFUSALS)
    results = open_response(response, request, reply_key, RESPONDER, scene.roster)
    assert results.request_id == request.request_id
    assert results.partials == PARTIALS
    assert results.refusals == REFUSALS
    assert scene.responder.served == 1


def test_a_response_reveals_no_partial_to_an_observer() -> None:
    scene = Scene()
    raw, _, _ = scene.request()
    response = scene.responder.respond(scene.responder.screen(raw), PARTIALS, [])
    for partial in PARTIALS:
        assert partial.partial not in response


def test_open_response_refuses_a_response_signed_by_another_node() -> None:
    scene = Scene()
    raw, request, reply_key = scene.request()
    impostor = scene.responder_for(RESPONDER, signing_key=bundle("node-3").signing_key)
    response = impostor.respond(SHARE_REQUEST_CODEC.decode(raw), PARTIALS, [])
    with pytest.raises(Refused) as caught:
        open_response(response, request, reply_key, RESPONDER, scene.roster)
    assert caught.value.reason == "bad_response_signature"


def test_open_response_refuses_a_response_naming_another_responder() -> None:
    scene = Scene()
    raw, request, reply_key = scene.request(to="node-3")
    node3 = scene.responder_for("node-3")
    response = node3.respond(node3.screen(raw), PARTIALS, [])
    with pytest.raises(Refused) as caught:
        open_response(response, request, reply_key, RESPONDER, scene.roster)
    assert caught.value.reason == "wrong_responder"


def test_open_response_refuses_a_responder_outside_the_roster() -> None:
    scene = Scene()
    raw, request, reply_key = scene.request()
    response = scene.responder.respond(scene.responder.screen(raw), PARTIALS, [])
    with pytest.raises(Refused) as caught:
        open_response(response, request, reply_key, "node-9", scene.roster)
    assert caught.value.reason == "wrong_responder"


def test_open_response_refuses_a_tampered_sealed_blob() -> None:
    """A correctly signed response whose sealed bytes do not open."""
    scene = Scene()
    raw, request, reply_key = scene.request()
    response = SHARE_RESPONSE_CODEC.decode(
        scene.responder.respond(scene.responder.screen(raw), PARTIALS, [])
    )
    assert response.sealed is not None
    broken = bytearray(response.sealed)
    broken[0] ^= 0x01
    resealed = sign(
        msgspec.structs.replace(response, sealed=bytes(broken), signature=b""),
        bundle(RESPONDER).signing_key,
    )
    with pytest.raises(Refused) as caught:
        open_response(
            SHARE_RESPONSE_CODEC.encode(resealed), request, reply_key, RESPONDER, scene.roster
        )
    assert caught.value.reason == "unreadable_response"


def test_open_response_refuses_a_sealed_blob_changed_after_signing() -> None:
    scene = Scene()
    raw, request, reply_key = scene.request()
    response = SHARE_RESPONSE_CODEC.decode(
        scene.responder.respond(scene.responder.screen(raw), PARTIALS, [])
    )
    assert response.sealed is not None
    changed = msgspec.structs.replace(response, sealed=response.sealed[:-1] + b"\x00")
    with pytest.raises(Refused) as caught:
        open_response(
            SHARE_RESPONSE_CODEC.encode(changed), request, reply_key, RESPONDER, scene.roster
        )
    assert caught.value.reason == "bad_response_signature"


def test_open_response_refuses_results_sealed_to_another_key() -> None:
    scene = Scene()
    raw, request, reply_key = scene.request()
    _, elsewhere = box.new_keypair()
    screened = msgspec.structs.replace(scene.responder.screen(raw), reply_key=elsewhere)
    response = scene.responder.respond(screened, PARTIALS, [])
    with pytest.raises(Refused) as caught:
        open_response(response, request, reply_key, RESPONDER, scene.roster)
    assert caught.value.reason == "unreadable_response"


def test_open_response_refuses_a_response_to_another_request() -> None:
    scene = Scene()
    raw_a, request_a, reply_a = scene.request()
    raw_b, _, _ = scene.request()
    scene.responder.screen(raw_a)
    response_b = scene.responder.respond(scene.responder.screen(raw_b), PARTIALS, [])
    with pytest.raises(Refused) as caught:
        open_response(response_b, request_a, reply_a, RESPONDER, scene.roster)
    assert caught.value.reason == "mismatched_response"


def test_open_response_raises_the_responders_refusal_reason() -> None:
    scene = Scene()
    raw, request, reply_key = scene.request()
    refusal = scene.responder.refuse(raw, "rate_limited")
    with pytest.raises(Refused) as caught:
        open_response(refusal, request, reply_key, RESPONDER, scene.roster)
    assert caught.value.reason == "rate_limited"


def test_a_refusal_of_unreadable_bytes_is_still_signed_and_readable() -> None:
    scene = Scene()
    _, request, reply_key = scene.request()
    refusal = scene.responder.refuse(b"garbage", "malformed")
    # It cannot name the request, so no requester takes it as the answer to its own
    # request (an old refusal replayed would otherwise pass as a fresh one).
    with pytest.raises(Refused) as caught:
        open_response(refusal, request, reply_key, RESPONDER, scene.roster)
    assert caught.value.reason == "mismatched_response"


@pytest.mark.parametrize("garbage", [b"", b"\xc1", b"not msgpack at all", b"\x80"])
def test_open_response_refuses_garbage(garbage: bytes) -> None:
    scene = Scene()
    _, request, reply_key = scene.request()
    with pytest.raises(Refused) as caught:
        open_response(garbage, request, reply_key, RESPONDER, scene.roster)
    assert caught.value.reason == "malformed_response"


# --- the replay cache and the rate limiter ------------------------------------------------


def check_and_add(cache: ReplayCache, request_id: bytes, now: int) -> bool:
    if cache.seen(request_id, now):
        return False
    assert cache.add(request_id, now)
    return True


def test_replay_cache_remembers_ids_for_its_ttl() -> None:
    cache = ReplayCache(ttl_ms=1_000)
    assert check_and_add(cache, b"a" * 16, 0) is True
    assert check_and_add(cache, b"a" * 16, 1) is False
    assert check_and_add(cache, b"a" * 16, 1_000) is False  # still within the ttl
    assert check_and_add(cache, b"b" * 16, 1_000) is True


def test_replay_cache_forgets_ids_after_their_ttl() -> None:
    cache = ReplayCache(ttl_ms=1_000)
    assert check_and_add(cache, b"a" * 16, 0) is True
    assert check_and_add(cache, b"b" * 16, 600) is True
    assert check_and_add(cache, b"a" * 16, 1_001) is True  # a expired, seen again as new
    assert check_and_add(cache, b"b" * 16, 1_001) is False  # b has not expired


def test_replay_cache_is_bounded_and_never_forgets_inside_its_ttl() -> None:
    cache = ReplayCache(ttl_ms=60_000, max_entries=3)
    for i in range(3):
        assert cache.add(bytes([i]) * 16, i)
    assert not cache.add(bytes([3]) * 16, 10)  # full: refused, nothing forgotten
    assert cache.seen(bytes([0]) * 16, 10)
    assert cache.add(bytes([3]) * 16, 60_001)  # the first id has aged out


def test_rate_limiter_allows_a_burst_then_refuses() -> None:
    limiter = RateLimiter(rate=2.0, burst=3)
    assert [limiter.allow("node-1", 0) for _ in range(4)] == [True, True, True, False]


def test_rate_limiter_refills_with_time() -> None:
    limiter = RateLimiter(rate=2.0, burst=3)
    for _ in range(3):
        limiter.allow("node-1", 0)
    assert limiter.allow("node-1", 499) is False
    assert limiter.allow("node-1", 500) is True  # 2 per second: one token after 500 ms
    assert limiter.allow("node-1", 500) is False


def test_rate_limiter_refills_no_higher_than_the_burst() -> None:
    limiter = RateLimiter(rate=2.0, burst=3)
    limiter.allow("node-1", 0)
    allowed = [limiter.allow("node-1", 3_600_000) for _ in range(4)]
    assert allowed == [True, True, True, False]


def test_rate_limiter_keeps_a_bucket_per_requester() -> None:
    limiter = RateLimiter(rate=1.0, burst=1)
    assert limiter.allow("node-1", 0) is True
    assert limiter.allow("node-1", 0) is False
    assert limiter.allow("node-2", 0) is True
