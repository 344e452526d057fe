"""Shoup threshold RSA: dealing, partials, combining, proofs (DESIGN §2.1)."""

from __future__ import annotations

import itertools
import math
import pickle
import secrets

import gmpy2
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from hypothesis import given
from hypothesis import strategies as st

from flashgate.bridge.partial_engine import PartialEngine
from flashgate.crypto.oaep import oaep_decode
from flashgate.crypto.rng import SYSTEM_RNG, DeterministicRng
from flashgate.crypto.threshold import (
    KeyShare,
    Proof,
    ThresholdPublicKey,
    combine,
    combine_robust,
    deal,
    identify_faulty,
    lagrange_coefficient,
    partial_decrypt,
    proof_random_bits,
    prove,
    share_matches,
    verify_proof,
)
from flashgate.crypto.threshold.primes import generate_safe_prime, is_safe_prime
from flashgate.errors import (
    CombineCheckFailed,
    ConfigurationError,
    DuplicateShares,
    FaultyShares,
    InvalidCiphertext,
    InvalidKey,
    InvalidProof,
    NotEnoughShares,
)
from tests.support.material import TEST_BITS, dealing, fixed_primes, reference_private_key

N_PARTIES = 5
OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def random_ciphertext(n: int) -> int:
    while True:
        c = secrets.randbelow(n - 2) + 2
        if math.gcd(c, n) == 1:
            return c


def all_partials(d, c):
    return {s.index: partial_decrypt(s, d.public, c) for s in d.shares}


# --- every t-subset combines, every (t-1)-subset fails ------------------------------------


@pytest.mark.parametrize("t", range(1, N_PARTIES + 1))
def test_every_t_subset_combines_and_every_smaller_subset_fails(t: int) -> None:
    d = dealing(N_PARTIES, t)
    n, e = d.public.modulus, d.public.exponent
    c = random_ciphertext(n)
    xs = all_partials(d, c)
    expected = pow(c, reference_private_key().private_numbers().d, n)
    for subset in itertools.combinations(range(1, N_PARTIES + 1), t):
        y = combine(d.public, c, {i: xs[i] for i in subset})
        assert y == expected
        assert pow(y, e, n) == c
    for subset in itertools.combinations(range(1, N_PARTIES + 1), t - 1):
        partials = {i: xs[i] for i in subset}
        with pytest.raises(NotEnoughShares):
            combine(d.public, c, partials)
        if t > 1:
            # Not only refused by count: interpolating t-1 shares as if the threshold were
            # t-1 yields a wrong value; the check catches it.
            weaker = _with_threshold(d.public, t - 1)
            with pytest.raises(CombineCheckFailed):
                combine(weaker, c, partials)


def _with_threshold(public: ThresholdPublicKey, t: int) -> ThresholdPublicKey:
    return ThresholdPublicKey(
        key=public.key,
        threshold=t,
        parties=public.parties,
        verification_base=public.verification_base,
        verification_keys=public.verification_keys,
    )


@given(st.integers(min_value=2), st.sampled_from([1, 2, 3, 4, 5]), st.randoms())
def test_combined_value_is_the_rsa_private_operation(seed: int, t: int, rnd) -> None:
    d = dealing(N_PARTIES, t)
    n = d.public.modulus
    c = seed % (n - 2) + 2
    if math.gcd(c, n) != 1:
        return
    subset = rnd.sample(range(1, N_PARTIES + 1), t)
    y = combine(d.public, c, {i: partial_decrypt(d.shares[i - 1], d.public, c) for i in subset})
    assert y == pow(c, reference_private_key().private_numbers().d, n)


@given(st.binary(min_size=0, max_size=62))
def test_threshold_oaep_decodes_what_cryptography_decrypts(message: bytes) -> None:
    d = dealing(N_PARTIES, 3)
    ref = reference_private_key()
    ciphertext = ref.public_key().encrypt(message, OAEP)
    assert ref.decrypt(ciphertext, OAEP) == message
    c = int.from_bytes(ciphertext, "big")
    y = combine(d.public, c, {s.index: partial_decrypt(s, d.public, c) for s in d.shares[2:]})
    assert oaep_decode(y, d.public.key.byte_length) == message


def test_combine_uses_lowest_indices_when_given_more() -> None:
    d = dealing(N_PARTIES, 2)
    c = random_ciphertext(d.public.modulus)
    xs = all_partials(d, c)
    xs[5] = xs[5] * 3 % d.public.modulus  # a wrong extra partial is never touched
    assert pow(combine(d.public, c, xs), 65537, d.public.modulus) == c


def test_lagrange_coefficients_are_integers_that_interpolate_zero() -> None:
    delta = math.factorial(N_PARTIES)
    for t in range(1, N_PARTIES + 1):
        for subset in itertools.combinations(range(1, N_PARTIES + 1), t):
            lambdas = [lagrange_coefficient(delta, subset, j) for j in subset]
            # sum_j lambda_j * f(j) = Delta * f(0) for every polynomial of degree < t
            for coeffs in ([7], [3, 5], [1, 2, 3, 4, 5][:t]):
                f = lambda x, cs=coeffs: sum(a * x**k for k, a in enumerate(cs))  # noqa: E731
                if len(coeffs) <= t:
                    pairs = zip(lambdas, subset, strict=True)
                    assert sum(lam * f(j) for lam, j in pairs) == delta * f(0)


# --- input checks --------------------------------------------------------------------------


def test_combine_refuses_bad_inputs() -> None:
    d = dealing(N_PARTIES, 3)
    n = d.public.modulus
    c = random_ciphertext(n)
    xs = all_partials(d, c)
    with pytest.raises(DuplicateShares):
        combine(d.public, c, [(1, xs[1]), (1, xs[1]), (2, xs[2])])
    with pytest.raises(InvalidKey):
        combine(d.public, c, {1: xs[1], 2: xs[2], 6: xs[3]})
    with pytest.raises(InvalidKey):
        combine(d.public, c, {1: xs[1], 2: xs[2], 3: n})
    for bad in (0, 1, n, n + 5, -3):
        with pytest.raises(InvalidCiphertext):
            combine(d.public, bad, xs)
        with pytest.raises(InvalidCiphertext):
            partial_decrypt(d.shares[0], d.public, bad)
    p, _ = fixed_primes()
    with pytest.raises(InvalidCiphertext):  # not a unit mod N
        partial_decrypt(d.shares[0], d.public, p)


def test_one_wrong_partial_fails_the_check() -> None:
    d = dealing(N_PARTIES, 3)
    c = random_ciphertext(d.public.modulus)
    xs = all_partials(d, c)
    xs[2] = xs[2] * 2 % d.public.modulus
    with pytest.raises(CombineCheckFailed):
        combine(d.public, c, {i: xs[i] for i in (1, 2, 3)})


@pytest.mark.parametrize(
    ("bits", "parties", "threshold", "insecure", "match"),
    [
        (2048, 5, 6, False, "cannot exceed"),
        (2048, 5, 0, False, "at least 1"),
        (1024, 5, 3, False, "insecure"),
        (512, 5, 3, True, "at least 1024"),
        (2047, 5, 3, True, "even"),
        (2048, 0, 1, False, "number of nodes"),
        (2048, 65, 3, False, "number of nodes"),
    ],
)
def test_deal_refuses_bad_parameters(bits, parties, threshold, insecure, match) -> None:
    with pytest.raises(ConfigurationError, match=match):
        deal(bits=bits, parties=parties, threshold=threshold, allow_insecure=insecure)


def test_deal_refuses_non_safe_or_equal_primes() -> None:
    p, q = fixed_primes()
    with pytest.raises(ConfigurationError):
        deal(bits=TEST_BITS, parties=3, threshold=2, primes=(p, p), allow_insecure=True)
    with pytest.raises(ConfigurationError):
        deal(bits=TEST_BITS, parties=3, threshold=2, primes=(p, q + 2), allow_insecure=True)


# --- dealing and safe primes ----------------------------------------------------------------


def test_dealt_key_has_exact_size_and_consistent_verification_keys() -> None:
    d = dealing(N_PARTIES, 3)
    pub = d.public
    assert pub.modulus.bit_length() == TEST_BITS
    assert pub.exponent == 65537
    assert gmpy2.is_square(pub.verification_base) is False  # a square mod N, not over Z
    assert gmpy2.jacobi(pub.verification_base, pub.modulus) == 1
    for share in d.shares:
        assert share_matches(share, pub)
    assert not share_matches(KeyShare(1, d.shares[0].secret_value + 1, pub), pub)


def test_dealing_is_reproducible_with_injected_randomness() -> None:
    a = deal(
        bits=TEST_BITS,
        parties=3,
        threshold=2,
        primes=fixed_primes(),
        rng=DeterministicRng(b"x"),
        allow_insecure=True,
    )
    b = deal(
        bits=TEST_BITS,
        parties=3,
        threshold=2,
        primes=fixed_primes(),
        rng=DeterministicRng(b"x"),
        allow_insecure=True,
    )
    c = deal(
        bits=TEST_BITS,
        parties=3,
        threshold=2,
        primes=fixed_primes(),
        rng=DeterministicRng(b"y"),
        allow_insecure=True,
    )
    assert [s.secret_value for s in a.shares] == [s.secret_value for s in b.shares]
    assert [s.secret_value for s in a.shares] != [s.secret_value for s in c.shares]


def test_full_dealing_searches_its_own_primes() -> None:
    d = deal(bits=TEST_BITS, parties=3, threshold=2, allow_insecure=True)
    assert d.public.modulus.bit_length() == TEST_BITS
    c = random_ciphertext(d.public.modulus)
    y = combine(d.public, c, {s.index: partial_decrypt(s, d.public, c) for s in d.shares[:2]})
    assert pow(y, 65537, d.public.modulus) == c


@pytest.mark.parametrize("bits", [64, 256, 512])
def test_safe_primes_have_top_two_bits_set(bits: int) -> None:
    p = generate_safe_prime(bits, SYSTEM_RNG)
    assert p.bit_length() == bits
    assert p >> (bits - 2) == 0b11
    assert is_safe_prime(p)
    assert gmpy2.is_prime((p - 1) // 2)


def test_is_safe_prime() -> None:
    assert is_safe_prime(23) and is_safe_prime(47) and is_safe_prime(5)
    assert not is_safe_prime(29)  # prime, but 14 is not
    assert not is_safe_prime(15) and not is_safe_prime(2)


# --- secrecy of shares ----------------------------------------------------------------------


def test_share_value_is_never_shown() -> None:
    d = dealing(N_PARTIES, 3)
    share = d.shares[0]
    text = repr(share) + str(share) + repr(d) + repr(d.public)
    assert str(share.secret_value) not in text
    assert hex(share.secret_value)[2:20] not in text
    with pytest.raises(TypeError):
        pickle.dumps(share)


def test_share_index_checked() -> None:
    d = dealing(N_PARTIES, 3)
    with pytest.raises(InvalidKey):
        KeyShare(0, 5, d.public)
    with pytest.raises(InvalidKey):
        KeyShare(6, 5, d.public)
    with pytest.raises(InvalidKey):
        KeyShare(1, d.public.modulus, d.public)


# --- proofs -------------------------------------------------------------------------------


def test_honest_proofs_verify() -> None:
    d = dealing(N_PARTIES, 3)
    c = random_ciphertext(d.public.modulus)
    for share in d.shares:
        x = partial_decrypt(share, d.public, c)
        verify_proof(d.public, share.index, c, x, prove(share, d.public, c, x))


def test_forged_partial_or_proof_is_rejected() -> None:
    d = dealing(N_PARTIES, 3)
    n = d.public.modulus
    c = random_ciphertext(n)
    share = d.shares[1]
    x = partial_decrypt(share, d.public, c)
    proof = prove(share, d.public, c, x)
    forged_x = x * 4 % n
    with pytest.raises(InvalidProof):  # honest proof, wrong partial
        verify_proof(d.public, share.index, c, forged_x, proof)
    with pytest.raises(InvalidProof):  # proof made for the forged partial by the share
        verify_proof(d.public, share.index, c, forged_x, prove(share, d.public, c, forged_x))
    with pytest.raises(InvalidProof):  # proof under another index's key
        verify_proof(d.public, 1, c, x, proof)
    with pytest.raises(InvalidProof):  # proof for another ciphertext
        verify_proof(d.public, share.index, random_ciphertext(n), x, proof)
    with pytest.raises(InvalidProof):
        verify_proof(d.public, share.index, c, x, Proof(proof.challenge, proof.response + 1))
    with pytest.raises(InvalidProof):
        verify_proof(d.public, share.index, c, x, Proof(proof.challenge ^ 1, proof.response))
    with pytest.raises(InvalidProof):
        verify_proof(d.public, 9, c, x, proof)
    # A partial computed with a wrong share (an attacker guessing s_i) cannot be proven.
    wrong = KeyShare(share.index, (share.secret_value + 12345) % n, d.public)
    wx = partial_decrypt(wrong, d.public, c)
    with pytest.raises(InvalidProof):
        verify_proof(d.public, share.index, c, wx, prove(wrong, d.public, c, wx))


class RecordingRng:
    def __init__(self) -> None:
        self.requests: list[int] = []

    def randbits(self, k: int) -> int:
        self.requests.append(k)
        return SYSTEM_RNG.randbits(k)

    def randbelow(self, n: int) -> int:
        return SYSTEM_RNG.randbelow(n)

    def token_bytes(self, n: int) -> bytes:
        return SYSTEM_RNG.token_bytes(n)


def test_proof_random_is_full_length() -> None:
    d = dealing(N_PARTIES, 3)
    n = d.public.modulus
    c = random_ciphertext(n)
    share = d.shares[0]
    x = partial_decrypt(share, d.public, c)
    rng = RecordingRng()
    prove(share, d.public, c, x, rng=rng)
    assert rng.requests == [n.bit_length() + 2 * 256] == [proof_random_bits(d.public)]
    # and the response hides s_i·ch: z = s_i·ch + r has the length of r, not of s_i·ch
    lengths = [prove(share, d.public, c, x).response.bit_length() for _ in range(16)]
    assert max(lengths) == n.bit_length() + 512 or max(lengths) == n.bit_length() + 513
    assert min(lengths) > n.bit_length() + 500


def test_short_random_would_leak_the_share() -> None:
    """Why the length matters: with a short r (here r = 1), z // ch is s_i exactly."""

    class ZeroRng(RecordingRng):
        def randbits(self, k: int) -> int:
            return 1

    d = dealing(N_PARTIES, 3)
    c = random_ciphertext(d.public.modulus)
    share = d.shares[0]
    x = partial_decrypt(share, d.public, c)
    proof = prove(share, d.public, c, x, rng=ZeroRng())
    assert proof.response // proof.challenge == share.secret_value


# --- optimistic combine with proof fallback -------------------------------------------------


@pytest.mark.parametrize("bad", [1, 3, 5])
def test_fallback_names_the_faulty_share(bad: int) -> None:
    d = dealing(N_PARTIES, 3)
    n = d.public.modulus
    c = random_ciphertext(n)
    xs = all_partials(d, c)
    proofs = {s.index: prove(s, d.public, c, xs[s.index]) for s in d.shares}
    xs[bad] = xs[bad] * 5 % n  # byzantine: a wrong partial with the old (honest) proof
    assert identify_faulty(d.public, c, xs, proofs) == [bad]
    y, faulty = combine_robust(d.public, c, xs, proofs)
    assert faulty == [bad]
    assert pow(y, 65537, n) == c


def test_fallback_with_too_many_faulty_names_them() -> None:
    d = dealing(N_PARTIES, 4)
    n = d.public.modulus
    c = random_ciphertext(n)
    xs = all_partials(d, c)
    proofs = {s.index: prove(s, d.public, c, xs[s.index]) for s in d.shares}
    xs[2] = xs[2] * 5 % n
    del proofs[4]  # a missing proof counts as faulty
    with pytest.raises(FaultyShares) as info:
        combine_robust(d.public, c, xs, proofs)
    assert info.value.indices == [2, 4]


# --- the multi-core engine ------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_engine_matches_single_partials(workers: int) -> None:
    d = dealing(N_PARTIES, 3)
    share = d.shares[2]
    cs = [random_ciphertext(d.public.modulus) for _ in range(7)]
    with PartialEngine(share, d.public, workers=workers) as engine:
        assert engine.partials(cs) == [partial_decrypt(share, d.public, c) for c in cs]
        assert engine.partials([]) == []
        assert "value" not in repr(engine) or "redacted" in repr(engine)


def test_engine_refuses_bad_ciphertext_before_work() -> None:
    d = dealing(N_PARTIES, 3)
    with (
        PartialEngine(d.shares[0], d.public, workers=2) as engine,
        pytest.raises(InvalidCiphertext),
    ):
        engine.submit([random_ciphertext(d.public.modulus), 1])
