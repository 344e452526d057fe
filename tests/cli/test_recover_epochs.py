"""``recover`` and fleet key epochs: a JWE of another epoch than the fleet directory's (a
retired one, typically) is refused naming the epoch it needs, when its kid or its envelope
says which; otherwise "decryption failed" says which epoch the bundles are for."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from jwcrypto import jwe as jwcrypto_jwe
from jwcrypto import jwk as jwcrypto_jwk

from flashgate.events.envelope import ENVELOPE_CODEC, SecretEnvelope
from flashgate.fleet.bundle import open_admin_key
from flashgate.fleet.ceremony import run_ceremony
from flashgate.fleet.directory import write_fleet_dir
from flashgate.fleet.files import load_descriptor
from tests.support.cli import BINARY_SECRET, Fleet, Result, run_cli
from tests.support.material import FAST_KDF, TEST_BITS, TEST_PASSPHRASE, load_vectors


@pytest.fixture(scope="module")
def epoch2(demo: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fleet directory of epoch 2 of the demo fleet (same admin key, 3-of-5)."""
    descriptor = load_descriptor(demo.dir)
    admin = open_admin_key((demo.dir / "admin.key").read_bytes(), TEST_PASSPHRASE, descriptor)
    pair = load_vectors("safe-primes-1024.json")["pairs"][0]
    ceremony = run_ceremony(
        fleet="demo",
        node_ids=demo.node_ids,
        threshold=3,
        bits=TEST_BITS,
        epoch=2,
        primes=(int(pair["p"], 16), int(pair["q"], 16)),
        allow_insecure=True,
        admin_key=admin,
    )
    out = tmp_path_factory.mktemp("epoch2") / "demo"
    write_fleet_dir(out, ceremony, TEST_PASSPHRASE, params=FAST_KDF)
    return out


def recover(fleet_dir: Path, stdin: bytes) -> Result:
    args: list[str | Path] = ["recover", "--fleet-dir", fleet_dir]
    for i in (1, 2, 3):
        args += ["--bundle", fleet_dir / "nodes" / f"node-{i}.bundle"]
    return run_cli(*args, input=stdin)


def one_line(result: Result, *words: str) -> str:
    assert result.returncode == 1, str(result)
    assert "Traceback" not in result.err and result.stdout == b"", str(result)
    lines = result.err.splitlines()
    assert len(lines) == 1, str(result)
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    return lines[0]


@pytest.fixture(scope="module")
def generic_token(demo: Fleet) -> bytes:
    """BINARY_SECRET for demo epoch 1 as app/db-password (generic) v3."""
    return demo.encrypt(BINARY_SECRET, kind="generic", version=3)


def envelope(token: bytes, epoch: int) -> bytes:
    return ENVELOPE_CODEC.encode(
        SecretEnvelope(
            fleet="demo",
            repo="app",
            name="db-password",
            kind="generic",
            version=3,
            epoch=epoch,
            jwe=token.decode().strip(),
            written_at=int(time.time() * 1000),
        )
    )


def test_envelope_of_a_retired_epoch_names_the_epoch_it_needs(
    generic_token: bytes, epoch2: Path
) -> None:
    line = one_line(recover(epoch2, envelope(generic_token, 1)), "epoch 1", "epoch 2", "retired")
    assert "envelope" in line


def test_envelope_of_the_right_epoch_recovers(demo: Fleet, generic_token: bytes) -> None:
    result = recover(demo.dir, envelope(generic_token, 1))
    assert result.returncode == 0, str(result)
    assert result.stdout == BINARY_SECRET


def test_bare_jwe_of_another_epoch_says_which_epoch_the_bundles_are_for(
    demo_token: bytes, epoch2: Path
) -> None:
    one_line(recover(epoch2, demo_token), "epoch 2", "another epoch")


def test_jwe_whose_kid_names_a_newer_epoch(demo: Fleet, epoch2: Path) -> None:
    """A JWE written by another tool for epoch 2's JWK (kid flashgate:demo:2)."""
    jwk = json.loads((epoch2 / "fleet.json").read_bytes())["public_key_jwk"]
    token = jwcrypto_jwe.JWE(
        b"from elsewhere",
        protected=json.dumps({"alg": "RSA-OAEP-256", "enc": "A256GCM", "kid": jwk["kid"]}),
    )
    token.add_recipient(jwcrypto_jwk.JWK(**jwk))
    compact = token.serialize(compact=True).encode()
    one_line(recover(demo.dir, compact), "epoch 2", "flashgate:demo:2", "epoch 1")
    ok = recover(epoch2, compact)
    assert ok.returncode == 0, str(ok)
    assert ok.stdout == b"from elsewhere"
