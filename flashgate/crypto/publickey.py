"""The fleet RSA public key (encrypt side): PEM and JWK (RFC 7517) forms.

Anyone holding this key can write a secret the fleet can read; nothing but t cooperating
nodes can read it. This module needs no secret and is safe for the backend to import.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from flashgate.crypto.encoding import b64url_decode, b64url_encode, byte_length, int_to_bytes
from flashgate.errors import InvalidKey, MalformedEnvelope

#: Smallest modulus accepted anywhere outside explicitly insecure test setups.
MIN_SECURE_BITS = 2048
#: Smallest modulus accepted at all: RSA-OAEP-256 needs k >= 2*32 + 2 + 32 bytes to wrap a
#: 256-bit content key, and 1024 is the nearest round size above that.
MIN_INSECURE_BITS = 1024
#: Largest modulus accepted (bounds the work an attacker-supplied key can cause).
MAX_BITS = 8192


def fleet_kid(fleet: str, epoch: int) -> str:
    """The JWK ``kid`` for a fleet key epoch."""
    return f"flashgate:{fleet}:{epoch}"


@dataclass(frozen=True, slots=True)
class FleetPublicKey:
    modulus: int
    exponent: int

    def __post_init__(self) -> None:
        bits = int(self.modulus).bit_length()
        if not MIN_INSECURE_BITS <= bits <= MAX_BITS or self.modulus % 2 == 0:
            raise InvalidKey(f"RSA modulus of {bits} bits is outside the accepted range")
        if self.exponent < 3 or self.exponent % 2 == 0 or self.exponent >= self.modulus:
            raise InvalidKey("RSA public exponent is invalid")

    @property
    def bits(self) -> int:
        return int(self.modulus).bit_length()

    @property
    def byte_length(self) -> int:
        """k in RFC 8017: the length of the modulus in bytes."""
        return byte_length(self.modulus)

    @property
    def is_secure_size(self) -> bool:
        return self.bits >= MIN_SECURE_BITS

    def to_cryptography(self) -> rsa.RSAPublicKey:
        return rsa.RSAPublicNumbers(int(self.exponent), int(self.modulus)).public_key()

    def to_pem(self) -> str:
        return (
            self.to_cryptography()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode("ascii")
        )

    def to_jwk(self, kid: str) -> dict[str, str]:
        return {
            "kty": "RSA",
            "kid": kid,
            "use": "enc",
            "alg": "RSA-OAEP-256",
            "n": b64url_encode(int_to_bytes(self.modulus, self.byte_length)),
            "e": b64url_encode(int_to_bytes(self.exponent, byte_length(self.exponent))),
        }

    @classmethod
    def from_pem(cls, pem: str | bytes) -> FleetPublicKey:
        data = pem.encode("ascii") if isinstance(pem, str) else pem
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, TypeError) as exc:
            raise InvalidKey("not a PEM RSA public key") from exc
        if not isinstance(key, rsa.RSAPublicKey):
            raise InvalidKey("not an RSA public key")
        numbers = key.public_numbers()
        return cls(numbers.n, numbers.e)

    @classmethod
    def from_jwk(cls, jwk: dict[str, Any]) -> FleetPublicKey:
        if not isinstance(jwk, dict) or jwk.get("kty") != "RSA":
            raise InvalidKey("JWK is not an RSA key")
        if any(k in jwk for k in ("d", "p", "q", "dp", "dq", "qi")):
            raise InvalidKey("JWK carries private key material; a public JWK was expected")
        try:
            n = int.from_bytes(b64url_decode(jwk["n"], "JWK n"), "big")
            e = int.from_bytes(b64url_decode(jwk["e"], "JWK e"), "big")
        except (KeyError, TypeError, MalformedEnvelope) as exc:
            raise InvalidKey("JWK n/e missing or not base64url") from exc
        return cls(n, e)

    def __repr__(self) -> str:
        return f"FleetPublicKey(bits={self.bits}, e={self.exponent})"
