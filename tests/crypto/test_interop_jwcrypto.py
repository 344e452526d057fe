"""Interoperability with a standard JOSE library (jwcrypto), DESIGN §2.2.

Any JOSE library can write a secret the fleet reads (given the fleet's public JWK), and an
envelope we write is a standard JWE that jwcrypto opens when handed the full private key
(which only tests have). jwcrypto JWEs outside our profile are refused with typed errors.

How jwcrypto (1.6) treats header parameters: when decrypting it checks ``crit`` against its
header registry (an unknown critical parameter is refused) and runs the registry's check
function for every *registered* parameter; unregistered, non-critical parameters are
ignored. Our private ``flashgate`` parameter is therefore registered explicitly (protected,
supported, with a check that the context is well-formed), instead of relying on jwcrypto
silently ignoring it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from jwcrypto import jwe as jw_jwe
from jwcrypto import jwk as jw_jwk
from jwcrypto.common import InvalidJWEData, JWSEHeaderParameter

from flashgate.crypto import jwe
from flashgate.crypto.context import HEADER_PARAM, SecretContext
from flashgate.crypto.decrypt import OpenedSecret, open_jwe
from flashgate.crypto.encrypt import encrypt_secret
from flashgate.crypto.publickey import fleet_kid
from flashgate.crypto.threshold import combine, partial_decrypt
from flashgate.crypto.threshold.dealing import Dealing
from flashgate.errors import (
    ContextMismatch,
    DecryptionError,
    FlashgateError,
    MalformedEnvelope,
    UnsupportedAlgorithm,
    UnsupportedHeader,
)
from tests.support.material import CANARY, dealing, reference_private_key

CTX = SecretContext(fleet="prod", repo="payments", name="stripe-key", kind="api-key", version=7)
KID = fleet_kid("prod", 1)


@contextlib.contextmanager
def raises_exactly(cls: type[BaseException]) -> Iterator[pytest.ExceptionInfo[Any]]:
    """pytest.raises, but a subclass of ``cls`` does not count."""
    with pytest.raises(cls) as info:
        yield info
    assert type(info.value) is cls, f"expected exactly {cls.__name__}, got {info.type.__name__}"


def fleet() -> Dealing:
    # Pair 0: the same modulus as reference_private_key().
    return dealing(5, 3)


def threshold_open(
    d: Dealing,
    token: str,
    expected: SecretContext | None,
    *,
    require_context: bool = True,
) -> OpenedSecret:
    parsed = jwe.parse(token)
    public = d.public
    c = parsed.wrapped_key(public.key)
    partials = {s.index: partial_decrypt(s, public, c) for s in d.shares[: public.threshold]}
    y = combine(public, c, partials)
    return open_jwe(parsed, y, public.key, expected, require_context=require_context)


def fleet_public_jwk() -> jw_jwk.JWK:
    return jw_jwk.JWK(**fleet().public.key.to_jwk(KID))


def fleet_private_jwk() -> jw_jwk.JWK:
    pem = reference_private_key().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return jw_jwk.JWK.from_pem(pem)


def jwcrypto_encrypt(plaintext: bytes, protected: dict[str, Any]) -> str:
    # algs: jwcrypto no longer allows RSA1_5 by default; name exactly the pair in use.
    algs = [protected["alg"], protected["enc"]]
    token = jw_jwe.JWE(plaintext, protected=json.dumps(protected), algs=algs)
    token.add_recipient(fleet_public_jwk())
    compact: str = token.serialize(compact=True)
    return compact


def _context_is_well_formed(token: jw_jwe.JWE) -> bool:
    # jwcrypto calls a registry check function with the JWE object being decrypted.
    try:
        SecretContext.from_header(token.jose_header[HEADER_PARAM])
    except (FlashgateError, KeyError):
        return False
    return True


FLASHGATE_REGISTRY = {
    HEADER_PARAM: JWSEHeaderParameter(
        "flashgate secret context", True, True, _context_is_well_formed
    )
}


def jwcrypto_decrypt(token: str) -> tuple[bytes, dict[str, Any]]:
    opened = jw_jwe.JWE(header_registry=FLASHGATE_REGISTRY)
    opened.deserialize(token, key=fleet_private_jwk())
    return opened.payload, opened.jose_header


def test_reference_key_matches_the_fleet_key() -> None:
    assert fleet_private_jwk().export_public(as_dict=True)["n"] == fleet_public_jwk()["n"]


# --- jwcrypto writes, the fleet reads -----------------------------------------------------


def test_jwcrypto_jwe_without_context_opens_through_threshold_path() -> None:
    token = jwcrypto_encrypt(CANARY, {"alg": "RSA-OAEP-256", "enc": "A256GCM"})
    parsed = jwe.parse(token)
    assert parsed.context is None
    opened = threshold_open(fleet(), token, None, require_context=False)
    assert opened.plaintext == CANARY
    assert opened.context is None


def test_jwcrypto_jwe_with_kid_typ_cty_opens() -> None:
    header = {"alg": "RSA-OAEP-256", "enc": "A256GCM", "kid": KID, "typ": "JWE", "cty": "text"}
    token = jwcrypto_encrypt(b"value", header)
    assert jwe.parse(token).header == header
    assert threshold_open(fleet(), token, None, require_context=False).plaintext == b"value"


def test_jwcrypto_jwe_with_flashgate_context_opens_with_expected_context() -> None:
    header = {"alg": "RSA-OAEP-256", "enc": "A256GCM", HEADER_PARAM: CTX.to_header()}
    token = jwcrypto_encrypt(CANARY, header)
    opened = threshold_open(fleet(), token, CTX)
    assert opened.plaintext == CANARY
    assert opened.context == CTX


def test_jwcrypto_jwe_with_flashgate_context_checked_against_location() -> None:
    header = {"alg": "RSA-OAEP-256", "enc": "A256GCM", HEADER_PARAM: CTX.to_header()}
    token = jwcrypto_encrypt(CANARY, header)
    moved = SecretContext(
        fleet=CTX.fleet, repo=CTX.repo, name=CTX.name, kind=CTX.kind, version=CTX.version + 1
    )
    with raises_exactly(ContextMismatch):
        threshold_open(fleet(), token, moved)


def test_jwcrypto_jwe_with_empty_plaintext_opens() -> None:
    token = jwcrypto_encrypt(b"", {"alg": "RSA-OAEP-256", "enc": "A256GCM"})
    assert threshold_open(fleet(), token, None, require_context=False).plaintext == b""


# --- the fleet writes, jwcrypto reads (test-only full key) --------------------------------


def test_our_jwe_decrypts_in_jwcrypto_with_the_full_key() -> None:
    token = encrypt_secret(fleet().public.key, CTX, CANARY)
    payload, header = jwcrypto_decrypt(token)
    assert payload == CANARY
    assert header == {"alg": "RSA-OAEP-256", "enc": "A256GCM", HEADER_PARAM: CTX.to_header()}
    assert SecretContext.from_header(header[HEADER_PARAM]) == CTX


def test_our_jwe_without_context_decrypts_in_jwcrypto() -> None:
    token = encrypt_secret(fleet().public.key, None, CANARY)
    payload, header = jwcrypto_decrypt(token)
    assert payload == CANARY
    assert header == {"alg": "RSA-OAEP-256", "enc": "A256GCM"}


def test_jwcrypto_also_binds_our_context_as_aad() -> None:
    """An edited context fails in jwcrypto too: it authenticates the header as we do."""
    token = encrypt_secret(fleet().public.key, CTX, CANARY)
    edited = CTX.to_header() | {"version": CTX.version + 1}
    header = jwe.encode_header({"alg": "RSA-OAEP-256", "enc": "A256GCM", HEADER_PARAM: edited})
    tampered = ".".join([header, *token.split(".")[1:]])
    with pytest.raises(InvalidJWEData):
        jwcrypto_decrypt(tampered)
    with raises_exactly(DecryptionError):
        threshold_open(fleet(), tampered, SecretContext.from_header(edited))


def test_registered_context_check_runs_in_jwcrypto() -> None:
    """A malformed flashgate context is refused by jwcrypto (via our registry entry) and
    by our parser alike."""
    bad = CTX.to_header() | {"version": 0}
    token = jwcrypto_encrypt(CANARY, {"alg": "RSA-OAEP-256", "enc": "A256GCM", HEADER_PARAM: bad})
    with pytest.raises(InvalidJWEData, match="Failed header check"):
        jwcrypto_decrypt(token)
    with raises_exactly(MalformedEnvelope):
        jwe.parse(token)


def test_jwcrypto_header_parameter_handling() -> None:
    """Pins the jwcrypto behaviour the module docstring describes: an unregistered private
    parameter is ignored, but refused once marked critical unless it is registered."""
    plain = jw_jwe.JWE()
    token = encrypt_secret(fleet().public.key, CTX, CANARY)
    plain.deserialize(token, key=fleet_private_jwk())
    assert plain.payload == CANARY

    header: dict[str, Any] = {"alg": "RSA-OAEP-256", "enc": "A256GCM", "crit": [HEADER_PARAM]}
    header[HEADER_PARAM] = CTX.to_header()
    writer = jw_jwe.JWE(CANARY, protected=json.dumps(header), header_registry=FLASHGATE_REGISTRY)
    writer.add_recipient(fleet_public_jwk())
    critical = writer.serialize(compact=True)
    with pytest.raises(InvalidJWEData, match="Unknown critical header"):
        jw_jwe.JWE().deserialize(critical, key=fleet_private_jwk())
    assert jwcrypto_decrypt(critical)[0] == CANARY
    # The fleet itself never accepts crit.
    with raises_exactly(UnsupportedHeader):
        jwe.parse(critical)


# --- jwcrypto JWEs outside the profile are refused ----------------------------------------


@pytest.mark.parametrize(
    ("alg", "enc"),
    [
        ("RSA-OAEP", "A256GCM"),
        ("RSA1_5", "A256GCM"),
        ("RSA-OAEP-256", "A128GCM"),
        ("RSA-OAEP-256", "A192GCM"),
        ("RSA-OAEP-256", "A128CBC-HS256"),  # (A256CBC-HS512's 64-byte key is too long
        # for RSA-OAEP-256 under a 1024-bit test modulus; the parser refuses it in test_jwe)
    ],
)
def test_other_algorithms_refused(alg: str, enc: str) -> None:
    token = jwcrypto_encrypt(CANARY, {"alg": alg, "enc": enc})
    with raises_exactly(UnsupportedAlgorithm):
        jwe.parse(token)


def test_compressed_jwe_refused() -> None:
    token = jwcrypto_encrypt(CANARY * 4, {"alg": "RSA-OAEP-256", "enc": "A256GCM", "zip": "DEF"})
    with raises_exactly(UnsupportedHeader):
        jwe.parse(token)


def test_json_serialization_refused() -> None:
    token = jw_jwe.JWE(CANARY, protected=json.dumps({"alg": "RSA-OAEP-256", "enc": "A256GCM"}))
    token.add_recipient(fleet_public_jwk())
    with raises_exactly(MalformedEnvelope):
        jwe.parse(token.serialize())
