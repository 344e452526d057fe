"""Test key material: vector loading, fast KDF parameters, cached dealings, the test
passphrase and the canary.

Keys here are 1024-bit and INSECURE on purpose: size does not change the algebra, and the
suite stays fast. Nothing here is usable for real secrets.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from flashgate.crypto.seal import KdfParams
from flashgate.crypto.threshold.dealing import Dealing, deal
from flashgate.events.fleet import FleetDescriptor, Roster
from flashgate.fleet.epoch_dealing import NextEpoch, deal_next_epoch

VECTORS = Path(__file__).parents[1] / "vectors"
TEST_BITS = 1024
#: Argon2id at its floor: tests seal and open many files.
FAST_KDF = KdfParams(memory_kib=8 * 1024, iterations=1, lanes=1)
TEST_PASSPHRASE = "insecure-test-passphrase"
CANARY = b"CANARY-7f3a9c1e-plaintext-must-never-leak"


def load_vectors(name: str) -> Any:
    """Load a JSON vector file from tests/vectors/ (one helper, like pyca's)."""
    return json.loads((VECTORS / name).read_text())


@cache
def fixed_primes(pair: int = 0) -> tuple[int, int]:
    entry = load_vectors("safe-primes-1024.json")["pairs"][pair]
    return int(entry["p"], 16), int(entry["q"], 16)


@cache
def dealing(parties: int, threshold: int, pair: int = 0) -> Dealing:
    """A cached 1024-bit dealing (new polynomial, fixed primes)."""
    return deal(
        bits=TEST_BITS,
        parties=parties,
        threshold=threshold,
        primes=fixed_primes(pair),
        allow_insecure=True,
    )


@cache
def reference_private_key(pair: int = 0) -> rsa.RSAPrivateKey:
    """The full private key behind fixed_primes(pair), built with ``cryptography``.

    Only tests hold this: it checks that the threshold path computes exactly the RSA
    private operation. The dealer itself never returns p, q or d.
    """
    p, q = fixed_primes(pair)
    n, e = p * q, 65537
    d = pow(e, -1, (p - 1) * (q - 1))
    numbers = rsa.RSAPrivateNumbers(
        p=p,
        q=q,
        d=d,
        dmp1=rsa.rsa_crt_dmp1(d, p),
        dmq1=rsa.rsa_crt_dmq1(d, q),
        iqmp=rsa.rsa_crt_iqmp(p, q),
        public_numbers=rsa.RSAPublicNumbers(e, n),
    )
    return numbers.private_key()


def deal_test_epoch(
    current: FleetDescriptor, roster: Roster, admin: Ed25519PrivateKey, pair: int = 1
) -> NextEpoch:
    """The next fleet key epoch dealt to ``roster``'s active nodes, from fixed 1024-bit
    primes."""
    return deal_next_epoch(
        current=current, roster=roster, admin=admin, primes=fixed_primes(pair), allow_insecure=True
    )


def stated(command_type: Any, admin_key: Ed25519PrivateKey, **fields: Any) -> Any:
    """``command_type(**fields)`` (a secret put/rotate or an API key create, unsigned) with
    the admin's signed statement over the envelope it writes, as the CLI makes it."""
    from flashgate.crypto.context import SecretContext
    from flashgate.events.envelope import ProvenApiKey, make_statement
    from flashgate.events.signing import sign

    api_key = None
    if "key_id" in fields:
        name, kind, version = fields["key_id"], "apikey", 1
        api_key = ProvenApiKey(
            key_id=fields["key_id"], scope=fields["scope"], access=fields["access"]
        )
    else:
        name, kind, version = fields["name"], fields["kind"], fields["version"]
    context = SecretContext(
        fleet=fields["fleet"], repo=fields["repo"], name=name, kind=kind, version=version
    )
    statement = make_statement(
        context,
        epoch=fields["epoch"],
        token=fields["jwe"],
        api_key=api_key,
        command_id=fields["command_id"],
        issued_at=fields["issued_at"],
    )
    return command_type(**fields, statement=sign(statement, admin_key))


def proven(envelope: Any, admin_key: Ed25519PrivateKey) -> Any:
    """``envelope`` with the admin's statement over it, as it stands."""
    import msgspec

    from flashgate.events.envelope import Provenance, statement_for
    from flashgate.events.signing import sign

    statement = statement_for(envelope, command_id="test-statement-0001", issued_at=0)
    provenance = Provenance(statement=sign(statement, admin_key))
    return msgspec.structs.replace(envelope, provenance=provenance)
