"""Unit tests of a node's admin RPCs (flashgate/bridge/admin.py): status and API key check
go through the same signed-request screening as share requests (flashgate/bridge/screening.py):
signature, freshness against the node's injected clock, and a replay cache. No NATS."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import msgspec
import pytest

from flashgate.bridge.node import BridgeNode, BridgeSettings
from flashgate.bridge.screening import ADMIN_SKEW_MS
from flashgate.crypto import box
from flashgate.crypto.encoding import b64url_decode
from flashgate.events.node_status import (
    APIKEY_CHECK_CODEC,
    STATUS_REQUEST_CODEC,
    ApiKeyCheck,
    StatusRequest,
    apikey_check_aad,
)
from flashgate.events.signing import sign, verify
from flashgate.fleet.identity_keys import load_ed25519_public
from tests.support.bridge_units import FLEET, T0, ManualClock, bundle, fleet

NODE = "node-1"
KEY_ID = "fgk_unit0001"
PRESENTED = b"fg-unit-presented-secret-0001"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def node(clock: ManualClock) -> Iterator[BridgeNode]:
    made = BridgeNode(
        bundle(NODE),
        BridgeSettings(nats_urls=["nats://127.0.0.1:1"], lock_memory=False, workers=1),
        clock=clock,
    )
    yield made
    made.ring.close()


def status_request(*, issued_at: int = T0, request_id: bytes | None = None) -> bytes:
    request = StatusRequest(
        fleet=FLEET, request_id=request_id or secrets.token_bytes(16), issued_at=issued_at
    )
    return STATUS_REQUEST_CODEC.encode(sign(request, fleet().admin_key))


def apikey_check(*, issued_at: int = T0) -> bytes:
    request_id = secrets.token_bytes(16)
    exchange = next(n.exchange_key for n in fleet().descriptor.nodes if n.id == NODE)
    sealed = box.seal(
        b64url_decode(exchange, "exchange key"),
        PRESENTED,
        apikey_check_aad(FLEET, NODE, request_id, KEY_ID),
    )
    request = ApiKeyCheck(
        fleet=FLEET,
        node_id=NODE,
        request_id=request_id,
        issued_at=issued_at,
        key_id=KEY_ID,
        sender_key=sealed.sender_key,
        nonce=sealed.nonce,
        sealed=sealed.ciphertext,
    )
    return APIKEY_CHECK_CODEC.encode(sign(request, fleet().admin_key))


# --- status ------------------------------------------------------------------------------


def test_a_signed_fresh_status_request_is_answered_signed_by_the_node(node: BridgeNode) -> None:
    response = node.admin.answer_status(status_request())
    assert response is not None
    assert (response.fleet, response.node_id, response.issued_at) == (FLEET, NODE, T0)
    verify(response, bundle(NODE).signing_key.public_key())


def test_a_replayed_status_request_is_not_answered(node: BridgeNode) -> None:
    raw = status_request()
    assert node.admin.answer_status(raw) is not None
    assert node.admin.answer_status(raw) is None
    assert node.admin.screen.refused == {"replay": 1}


def test_a_stale_status_request_is_not_answered_by_the_injected_clock(
    node: BridgeNode, clock: ManualClock
) -> None:
    raw = status_request()
    clock.advance(ADMIN_SKEW_MS + 1)
    assert node.admin.answer_status(raw) is None
    assert node.admin.answer_status(status_request(issued_at=clock.now)) is not None
    assert node.admin.screen.refused == {"stale": 1}


def test_a_forged_status_request_is_not_answered(node: BridgeNode) -> None:
    request = STATUS_REQUEST_CODEC.decode(status_request())
    forged = msgspec.structs.replace(request, include_secrets=False)
    assert node.admin.answer_status(STATUS_REQUEST_CODEC.encode(forged)) is None
    other = sign(request, bundle("node-2").signing_key)  # a node is not the admin
    assert node.admin.answer_status(STATUS_REQUEST_CODEC.encode(other)) is None
    assert node.admin.screen.refused == {"bad_signature": 2}


# --- API key check -------------------------------------------------------------------------


def test_a_replayed_api_key_check_is_refused_as_a_replay(node: BridgeNode) -> None:
    raw = apikey_check()
    first = node.admin.check_api_key(raw)
    assert first is not None and first.refused is None and first.valid is False
    again = node.admin.check_api_key(raw)
    assert again is not None and (again.valid, again.refused) == (False, "replay")
    verify(again, load_ed25519_public(fleet().descriptor.nodes[0].signing_key))


def test_a_stale_api_key_check_is_refused_by_the_injected_clock(
    node: BridgeNode, clock: ManualClock
) -> None:
    raw = apikey_check()
    clock.advance(-(ADMIN_SKEW_MS + 1))
    answer = node.admin.check_api_key(raw)
    assert answer is not None and (answer.valid, answer.refused) == (False, "stale")


def test_an_api_key_check_of_a_held_key_is_valid(node: BridgeNode) -> None:
    node.vault.put("ops.key", 1, 1, "apikey", bytearray(PRESENTED), api_key_id=KEY_ID)
    answer = node.admin.check_api_key(apikey_check())
    assert answer is not None and (answer.valid, answer.refused) == (True, None)


def test_a_forged_api_key_check_gets_no_answer_even_when_stale(
    node: BridgeNode, clock: ManualClock
) -> None:
    request = APIKEY_CHECK_CODEC.decode(apikey_check())
    forged = APIKEY_CHECK_CODEC.encode(msgspec.structs.replace(request, key_id="fgk_other"))
    assert node.admin.check_api_key(forged) is None
    clock.advance(ADMIN_SKEW_MS + 1)
    assert node.admin.check_api_key(forged) is None


def test_a_metrics_scrape_signs_nothing(node: BridgeNode, monkeypatch: pytest.MonkeyPatch) -> None:
    """A scrape is frequent and unauthenticated: it must not cost an Ed25519 signature."""
    import flashgate.bridge.admin as admin_module

    signed: list[object] = []
    real_sign = admin_module.sign

    def counting_sign(message, key):  # type: ignore[no-untyped-def]
        signed.append(message)
        return real_sign(message, key)

    monkeypatch.setattr(admin_module, "sign", counting_sign)
    text = node.admin.metrics_text()
    assert b"flashgate_" in text
    assert signed == []
    node.admin.status()  # what an admin is answered is still signed
    assert len(signed) == 1
