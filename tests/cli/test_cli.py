"""The ``flashgate`` command end to end, as real subprocesses.

Covers ``fleet init``, ``encrypt`` and ``recover``: the happy path (every t-subset of the
bundles), the files ``fleet init`` writes, third-party JWEs, and every refusal of the
contract: one line ``flashgate: error: <cause>`` (click usage errors: click's own format,
exit 2), a non-zero exit, no traceback, nothing on stdout, never a secret.
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwcrypto import jwe as jwcrypto_jwe
from jwcrypto import jwk as jwcrypto_jwk

from flashgate.crypto.jwe import MAX_PLAINTEXT_BYTES, MAX_TOKEN_BYTES
from flashgate.fleet.bundle import open_admin_key
from flashgate.fleet.ceremony import run_ceremony
from flashgate.fleet.descriptor import verify_descriptor
from flashgate.fleet.directory import read_bundle
from flashgate.fleet.files import load_descriptor
from flashgate.fleet.nats_identity import public_nkey
from tests.support.cli import (
    BINARY_SECRET,
    FAST_INIT,
    UNSET,
    Fleet,
    Result,
    Runner,
    assert_error,
    run_cli,
)
from tests.support.material import CANARY, FAST_KDF, TEST_BITS, TEST_PASSPHRASE, load_vectors

# --- helpers ------------------------------------------------------------------------------


def assert_usage_error(result: Result, *words: str) -> str:
    """A click usage error: exit 2, ``Usage: ...`` then a last line ``Error: ...``."""
    err = result.err
    assert result.returncode == 2, str(result)
    assert "Traceback" not in err, str(result)
    assert err.startswith("Usage: flashgate"), str(result)
    last = [line for line in err.splitlines() if line.strip()][-1]
    assert last.startswith("Error: "), str(result)
    for word in words:
        assert word.lower() in last.lower(), f"{word!r} not in {last!r}"
    assert result.stdout == b""
    return last


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def jwe_parts(token: bytes) -> list[str]:
    parts = token.decode("ascii").strip().split(".")
    assert len(parts) == 5
    return parts


def jwe_join(parts: list[str]) -> bytes:
    return ".".join(parts).encode("ascii")


def flip_part(token: bytes, index: int, byte: int | None = None) -> bytes:
    """Flip one bit of one byte (default: the middle one) of JWE part ``index``."""
    parts = jwe_parts(token)
    raw = bytearray(unb64url(parts[index]))
    pos = len(raw) // 2 if byte is None else byte
    raw[pos] ^= 0x01
    parts[index] = b64url(bytes(raw))
    return jwe_join(parts)


def truncate_part(token: bytes, index: int, length: int) -> bytes:
    """Keep only the first ``length`` bytes of JWE part ``index`` (re-encoded)."""
    parts = jwe_parts(token)
    parts[index] = b64url(unb64url(parts[index])[:length])
    return jwe_join(parts)


def with_header(token: bytes, header: dict[str, object]) -> bytes:
    parts = jwe_parts(token)
    parts[0] = b64url(json.dumps(header, separators=(",", ":")).encode("ascii"))
    return jwe_join(parts)


def header_of(token: bytes) -> dict[str, object]:
    return json.loads(unb64url(jwe_parts(token)[0]))


def jwcrypto_token(fleet: Fleet, plaintext: bytes, header: dict[str, str]) -> bytes:
    """A JWE written by jwcrypto for the fleet's public JWK (no flashgate context)."""
    descriptor = json.loads((fleet.dir / "fleet.json").read_bytes())
    key = jwcrypto_jwk.JWK(**descriptor["public_key_jwk"])
    token = jwcrypto_jwe.JWE(plaintext, protected=json.dumps(header))
    token.add_recipient(key)
    return token.serialize(compact=True).encode("ascii")


def recover_args(fleet_dir: Path, bundles: list[Path]) -> list[str | Path]:
    args: list[str | Path] = ["recover", "--fleet-dir", fleet_dir]
    for path in bundles:
        args += ["--bundle", path]
    return args


def copy_bundle(src: Path, dst_dir: Path, name: str = "copy.bundle") -> Path:
    dst = dst_dir / name
    shutil.copyfile(src, dst)
    return dst


# --- fleet init: the happy path and the files it writes ------------------------------------


def test_init_quiet_prints_nothing(demo: Fleet) -> None:
    assert demo.init.returncode == 0
    assert demo.init.stdout == b""
    assert demo.init.stderr == b""


def test_init_writes_the_fleet_directory(demo: Fleet) -> None:
    names = sorted(p.relative_to(demo.dir).as_posix() for p in demo.dir.rglob("*"))
    assert names == [
        "admin.key",
        "backend.json",
        "backend.key",
        "fleet.json",
        "nats-nodes.json",
        "nodes",
        *(f"nodes/node-{i}.bundle" for i in range(1, 6)),
        "roster.json",
    ]
    for path in [demo.dir / "admin.key", *demo.bundles]:
        assert path.read_bytes().startswith(b"FGSEAL"), path


def test_init_gives_each_node_its_own_nats_identity(demo: Fleet) -> None:
    """Public NKeys in nats-nodes.json, one per node; each seed only in its sealed bundle."""
    identities = json.loads((demo.dir / "nats-nodes.json").read_text())
    assert sorted(identities) == [f"node-{i}" for i in range(1, 6)]
    assert len(set(identities.values())) == 5
    assert all(key.startswith("U") and len(key) == 56 for key in identities.values())
    bundle = read_bundle(demo.bundles[0], TEST_PASSPHRASE)
    assert bundle.nats_seed is not None
    assert public_nkey(bundle.nats_seed) == identities[bundle.node_id]
    assert bundle.nats_seed not in repr(bundle)
    for path in demo.dir.rglob("*.json"):
        assert bundle.nats_seed.encode() not in path.read_bytes()


def test_init_file_permissions(demo: Fleet) -> None:
    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    assert mode(demo.dir / "admin.key") == 0o600
    assert mode(demo.dir / "backend.key") == 0o600
    for path in demo.bundles:
        assert mode(path) == 0o600, path
    assert mode(demo.dir / "nodes") == 0o700
    assert mode(demo.dir / "fleet.json") == 0o644
    assert mode(demo.dir / "roster.json") == 0o644
    assert mode(demo.dir / "nats-nodes.json") == 0o644


def test_fleet_json_contents(demo: Fleet) -> None:
    raw = (demo.dir / "fleet.json").read_bytes()
    doc = json.loads(raw)
    assert {
        "fleet",
        "epoch",
        "threshold",
        "nodes",
        "verification_base",
        "verification_keys",
        "public_key_pem",
        "public_key_jwk",
        "admin_key",
        "signature",
        "created_at",
    } <= set(doc)
    assert doc["fleet"] == "demo"
    assert doc["epoch"] == 1
    assert doc["threshold"] == 3

    # nodes: node-1..node-5, indices 1..5, distinct 32-byte Ed25519 and X25519 keys
    assert [n["id"] for n in doc["nodes"]] == [f"node-{i}" for i in range(1, 6)]
    assert [n["index"] for n in doc["nodes"]] == [1, 2, 3, 4, 5]
    keys = [n[k] for n in doc["nodes"] for k in ("signing_key", "exchange_key")]
    assert len(set(keys)) == 10
    assert all(len(unb64url(k)) == 32 for k in keys)
    assert sorted(vk["index"] for vk in doc["verification_keys"]) == [1, 2, 3, 4, 5]

    # the fleet key, as PEM and JWK, is one 1024-bit RSA key; the kid names fleet and epoch
    jwk = doc["public_key_jwk"]
    assert jwk["kid"] == "flashgate:demo:1"
    assert (jwk["kty"], jwk["alg"], jwk["use"]) == ("RSA", "RSA-OAEP-256", "enc")
    pem_key = serialization.load_pem_public_key(doc["public_key_pem"].encode("ascii"))
    assert isinstance(pem_key, rsa.RSAPublicKey)
    numbers = pem_key.public_numbers()
    assert numbers.n.bit_length() == TEST_BITS
    assert numbers.n == int.from_bytes(unb64url(jwk["n"]), "big")
    assert numbers.e == int.from_bytes(unb64url(jwk["e"]), "big") == 65537

    # admin public key and a signature that verifies under it
    assert len(unb64url(doc["admin_key"])) == 32
    assert len(unb64url(doc["signature"])) == 64
    descriptor = load_descriptor(demo.dir)
    verify_descriptor(descriptor, doc["admin_key"])

    # public only: no private key material in the descriptor
    assert b"PRIVATE" not in raw
    assert "share" not in raw.decode("ascii")


def test_init_shows_progress_and_names_nodes(run: Runner, tmp_path: Path) -> None:
    """Without --quiet: progress of the prime search on stderr; --node-ids names bundles."""
    out = tmp_path / "named"
    result = run(
        "fleet",
        "init",
        "--fleet",
        "named",
        "--nodes",
        "3",
        "--threshold",
        "2",
        "--node-ids",
        "alpha, beta,gamma",
        "--insecure-test-key",
        "--key-bits",
        "1024",
        "--out",
        out,
    )
    assert result.returncode == 0, str(result)
    assert result.stdout == b""
    err = result.err
    assert "INSECURE" in err
    assert "searching for two 512-bit safe primes" in err
    assert "done in" in err
    assert "sealing bundles" in err
    assert "2-of-3" in err and "kid flashgate:named:1" in err
    assert "Traceback" not in err

    assert sorted(p.name for p in (out / "nodes").iterdir()) == [
        "alpha.bundle",
        "beta.bundle",
        "gamma.bundle",
    ]
    doc = json.loads((out / "fleet.json").read_bytes())
    assert [(n["id"], n["index"]) for n in doc["nodes"]] == [
        ("alpha", 1),
        ("beta", 2),
        ("gamma", 3),
    ]
    assert doc["public_key_jwk"]["kid"] == "flashgate:named:1"

    named = Fleet(
        name="named",
        dir=out,
        nodes=3,
        threshold=2,
        init=result,
        node_ids=["alpha", "beta", "gamma"],
    )
    token = named.encrypt(b"named fleet secret", repo="svc", name="key", kind="generic")
    recovered = named.recover(token, [named.bundle("gamma"), named.bundle("beta")])
    assert recovered.returncode == 0, str(recovered)
    assert recovered.stdout == b"named fleet secret"
    assert "recovered named/svc/key (generic) v1" in recovered.err


def test_init_force_writes_into_non_empty_dir(run: Runner, tmp_path: Path) -> None:
    out = tmp_path / "forced"
    out.mkdir()
    (out / "README").write_text("not empty")
    result = run(
        "fleet",
        "init",
        "--fleet",
        "forced",
        "--nodes",
        "2",
        "--threshold",
        "1",
        *FAST_INIT,
        "--out",
        out,
        "--force",
    )
    assert result.returncode == 0, str(result)
    assert json.loads((out / "fleet.json").read_bytes())["fleet"] == "forced"
    assert (out / "nodes" / "node-2.bundle").is_file()


# --- encrypt / recover: the happy path ---------------------------------------------------


def test_encrypt_output_is_one_jwe_line(demo: Fleet, run: Runner) -> None:
    result = run(
        "encrypt",
        "--fleet-dir",
        demo.dir,
        "--repo",
        "app",
        "--name",
        "db-password",
        "--kind",
        "generic",
        "--version",
        "3",
        input=b"x",
        passphrase=UNSET,
    )  # encrypting needs no passphrase
    assert result.returncode == 0, str(result)
    assert result.stderr == b""
    assert result.stdout.endswith(b"\n") and result.stdout.count(b"\n") == 1
    header = header_of(result.stdout)
    assert header["alg"] == "RSA-OAEP-256"
    assert header["enc"] == "A256GCM"
    assert header["flashgate"] == {
        "v": 1,
        "fleet": "demo",
        "repo": "app",
        "name": "db-password",
        "kind": "generic",
        "version": 3,
    }
    assert len(unb64url(jwe_parts(result.stdout)[1])) == TEST_BITS // 8


@pytest.mark.parametrize(
    "subset", list(itertools.combinations(range(1, 6), 3)), ids=lambda s: "-".join(map(str, s))
)
def test_recover_with_every_threshold_subset(
    demo: Fleet, demo_token: bytes, subset: tuple[int, ...]
) -> None:
    result = demo.recover(demo_token, [demo.bundle(i) for i in subset])
    assert result.returncode == 0, str(result)
    assert result.stdout == BINARY_SECRET
    assert result.err.splitlines() == ["recovered demo/app/db-password (generic) v3"]


def test_recover_with_four_bundles_in_any_order(demo: Fleet, demo_token: bytes) -> None:
    result = demo.recover(demo_token, [demo.bundle(i) for i in (5, 1, 3, 2)])
    assert result.returncode == 0, str(result)
    assert result.stdout == BINARY_SECRET
    assert "recovered demo/app/db-password (generic) v3" in result.err


def test_recover_empty_secret_with_all_bundles(demo: Fleet) -> None:
    token = demo.encrypt(b"", name="empty", kind="generic")
    result = demo.recover(token, demo.bundles)
    assert result.returncode == 0, str(result)
    assert result.stdout == b""
    assert result.err.splitlines() == ["recovered demo/app/empty (generic) v1"]


def test_largest_secret_round_trips(demo: Fleet, run: Runner) -> None:
    secret = bytes(i % 251 for i in range(MAX_PLAINTEXT_BYTES))
    token = demo.encrypt(secret, name="big", kind="generic")
    assert len(token) <= MAX_TOKEN_BYTES
    result = demo.recover(token, [demo.bundle(i) for i in (2, 4, 5)])
    assert result.returncode == 0, str(result)
    assert result.stdout == secret


def test_recover_jwcrypto_jwe_without_context(demo: Fleet) -> None:
    header = {"alg": "RSA-OAEP-256", "enc": "A256GCM", "kid": "flashgate:demo:1"}
    secret = b"written by jwcrypto \x00\xff\xfe"
    token = jwcrypto_token(demo, secret, header)
    result = demo.recover(token, [demo.bundle(i) for i in (1, 3, 5)])
    assert result.returncode == 0, str(result)
    assert result.stdout == secret
    assert "no flashgate context" in result.err
    assert "Traceback" not in result.err


def test_canary_never_written_or_logged(
    demo: Fleet, run: Runner, fleets_base: Path, tmp_path: Path
) -> None:
    enc = run(
        "encrypt",
        "--fleet-dir",
        demo.dir,
        "--repo",
        "app",
        "--name",
        "canary",
        "--kind",
        "generic",
        input=CANARY,
    )
    assert enc.returncode == 0, str(enc)
    token = enc.stdout
    assert CANARY not in token
    ok = demo.recover(token, [demo.bundle(i) for i in (1, 2, 4)])
    assert ok.returncode == 0, str(ok)
    assert ok.stdout == CANARY
    # failing runs with the canary's envelope must not leak it either
    tampered = demo.recover(flip_part(token, 3), [demo.bundle(i) for i in (1, 2, 4)])
    assert_error(tampered, "decryption")
    too_few = demo.recover(token, [demo.bundle(1), demo.bundle(2)])
    assert_error(too_few, "needs 3")
    for result in (enc, ok, tampered, too_few):
        assert CANARY not in result.stderr, str(result)

    files = [p for base in (fleets_base, tmp_path) for p in base.rglob("*") if p.is_file()]
    assert demo.dir / "fleet.json" in files
    for path in files:
        assert CANARY not in path.read_bytes(), path


# --- fleet init: refusals ----------------------------------------------------------------

# Default key size (3072) and no --quiet: every refusal must come before the prime search,
# so none of these deals a key, and stderr must show no progress.
INIT_REFUSALS = [
    pytest.param(
        ["--nodes", "3", "--threshold", "4"],
        None,
        ("threshold", "cannot exceed"),
        id="threshold-over-nodes",
    ),
    pytest.param(
        ["--nodes", "3", "--threshold", "0"], None, ("threshold", "at least 1"), id="threshold-zero"
    ),
    pytest.param(
        ["--nodes", "3", "--threshold", "-2"], None, ("threshold",), id="threshold-negative"
    ),
    pytest.param(["--nodes", "0", "--threshold", "1"], None, ("number of nodes",), id="zero-nodes"),
    pytest.param(
        ["--nodes", "65", "--threshold", "2"], None, ("number of nodes",), id="too-many-nodes"
    ),
    pytest.param(
        ["--nodes", "3", "--threshold", "2", "--key-bits", "1024"],
        None,
        ("key size", "2048"),
        id="small-key-without-insecure-option",
    ),
    pytest.param(
        ["--nodes", "3", "--threshold", "2", "--key-bits", "2046"],
        None,
        ("key size", "2048"),
        id="just-under-2048",
    ),
    pytest.param(
        ["--nodes", "3", "--threshold", "2", "--key-bits", "512", "--insecure-test-key"],
        None,
        ("key size", "1024"),
        id="under-1024-insecure",
    ),
    pytest.param(
        ["--nodes", "3", "--threshold", "2", "--key-bits", "3073"],
        None,
        ("key size", "even"),
        id="odd-key-size",
    ),
    pytest.param(
        ["--nodes", "3", "--threshold", "2", "--key-bits", "8194"],
        None,
        ("key size", "8192"),
        id="key-too-large",
    ),
    pytest.param(
        ["--nodes", "3", "--threshold", "2"],
        "non-empty",
        ("not empty", "--force"),
        id="out-not-empty",
    ),
    pytest.param(
        ["--nodes", "3", "--threshold", "2"], "file", ("not a directory",), id="out-is-a-file"
    ),
    pytest.param(
        ["--nodes", "3", "--threshold", "2", "--node-ids", "a,b"],
        None,
        ("--node-ids", "2", "3"),
        id="node-ids-count",
    ),
    pytest.param(
        ["--nodes", "3", "--threshold", "2", "--node-ids", "a,b,a"],
        None,
        ("distinct",),
        id="node-ids-duplicate",
    ),
    pytest.param(
        ["--nodes", "2", "--threshold", "2", "--node-ids", "a,B.1"],
        None,
        ("node id", "B.1"),
        id="node-id-invalid",
    ),
    pytest.param(
        ["--nodes", "2", "--threshold", "2", "--node-ids", "a,"],
        None,
        ("node id",),
        id="node-id-empty",
    ),
]


@pytest.mark.parametrize(("args", "setup", "words"), INIT_REFUSALS)
def test_init_refusals_at_default_key_size(
    run: Runner, tmp_path: Path, args: list[str], setup: str | None, words: tuple[str, ...]
) -> None:
    out = tmp_path / "out"
    if setup == "non-empty":
        out.mkdir()
        (out / "keep.txt").write_text("keep")
    elif setup == "file":
        out.write_text("a file")
    result = run("fleet", "init", "--fleet", "demo", *args, "--out", out, cwd=tmp_path)
    assert_error(result, *words)
    assert "searching" not in result.err
    if setup is None:
        assert not out.exists()
    elif setup == "non-empty":
        assert [p.name for p in out.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("fleet_name", ["Bad.Name", "UPPER", "a*", "x" * 65, ""])
def test_init_refuses_invalid_fleet_name(run: Runner, tmp_path: Path, fleet_name: str) -> None:
    out = tmp_path / "out"
    result = run(
        "fleet", "init", "--fleet", fleet_name, "--nodes", "3", "--threshold", "2", "--out", out
    )
    assert_error(result, "fleet name")
    assert not out.exists()


@pytest.mark.parametrize(
    ("passphrase", "named"),
    [(UNSET, "FLASHGATE_ADMIN_PASSPHRASE"), ("", "FLASHGATE_PASSPHRASE")],
    ids=["unset", "empty"],
)
def test_init_without_passphrase_refused(
    run: Runner, tmp_path: Path, passphrase: object, named: str
) -> None:
    """No passphrase and stdin is not a terminal: refused, nothing dealt."""
    out = tmp_path / "out"
    result = run(
        "fleet",
        "init",
        "--fleet",
        "demo",
        "--nodes",
        "3",
        "--threshold",
        "2",
        "--out",
        out,
        passphrase=passphrase,
    )
    assert_error(result, "passphrase", named)
    assert "searching" not in result.err
    assert not out.exists()


def test_init_short_passphrase_refused_before_prime_search(run: Runner, tmp_path: Path) -> None:
    """A passphrase under the 8-character minimum is a cheap check: it must be refused
    before the (at real sizes, minutes-long) safe-prime search."""
    out = tmp_path / "out"
    result = run(
        "fleet",
        "init",
        "--fleet",
        "demo",
        "--nodes",
        "3",
        "--threshold",
        "2",
        "--insecure-test-key",
        "--key-bits",
        "1024",
        "--out",
        out,
        passphrase="short",
    )
    assert "passphrase" in result.err
    assert "searching" not in result.err, str(result)
    assert_error(result, "passphrase", "8")


def test_failed_init_leaves_out_dir_reusable(run: Runner, tmp_path: Path) -> None:
    """After a refused init, rerunning with the cause fixed must not need --force."""
    out = tmp_path / "out"
    first = run(
        "fleet",
        "init",
        "--fleet",
        "demo",
        "--nodes",
        "2",
        "--threshold",
        "1",
        *FAST_INIT,
        "--out",
        out,
        passphrase="short",
    )
    assert first.returncode == 1
    assert "passphrase" in first.err
    second = run(
        "fleet",
        "init",
        "--fleet",
        "demo",
        "--nodes",
        "2",
        "--threshold",
        "1",
        *FAST_INIT,
        "--out",
        out,
    )
    assert second.returncode == 0, (
        f"the failed run left {sorted(p.name for p in out.rglob('*'))} behind:\n{second}"
    )


# --- click usage errors ------------------------------------------------------------------

USAGE_ERRORS = [
    pytest.param(
        ["fleet", "init", "--fleet", "x", "--nodes", "abc", "--threshold", "1", "--out", "o"],
        ("--nodes", "not a valid integer"),
        id="nodes-not-int",
    ),
    pytest.param(
        ["fleet", "init", "--fleet", "x", "--nodes", "3", "--threshold", "2"],
        ("--out",),
        id="init-missing-out",
    ),
    pytest.param(
        ["encrypt", "--fleet-dir", "f", "--name", "n", "--kind", "generic"],
        ("--repo",),
        id="encrypt-missing-repo",
    ),
    pytest.param(
        [
            "encrypt",
            "--fleet-dir",
            "f",
            "--repo",
            "r",
            "--name",
            "n",
            "--kind",
            "generic",
            "--version",
            "0",
        ],
        ("--version",),
        id="encrypt-version-zero",
    ),
    pytest.param(["recover", "--fleet-dir", "f"], ("--bundle",), id="recover-no-bundle"),
    pytest.param(["decrypt"], ("no such command",), id="unknown-command"),
]


@pytest.mark.parametrize(("args", "words"), USAGE_ERRORS)
def test_usage_errors(run: Runner, tmp_path: Path, args: list[str], words: tuple[str, ...]) -> None:
    assert_usage_error(run(*args, cwd=tmp_path), *words)


# --- encrypt: refusals -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value", "what"),
    [
        ("--repo", "Bad.Name", "repository name"),
        ("--repo", "a>b", "repository name"),
        ("--name", "", "secret name"),
        ("--name", "x" * 65, "secret name"),
        ("--kind", "Pass word", "secret kind"),
        ("--kind", "bogus", "secret kind"),
        ("--kind", "password", "secret kind"),
    ],
)
def test_encrypt_refuses_invalid_names(
    demo: Fleet, run: Runner, option: str, value: str, what: str
) -> None:
    names = {"--repo": "app", "--name": "n", "--kind": "generic"} | {option: value}
    args = [a for pair in names.items() for a in pair]
    result = run("encrypt", "--fleet-dir", demo.dir, *args, input=b"secret")
    assert_error(result, what)


def test_encrypt_refuses_oversized_stdin(demo: Fleet, run: Runner) -> None:
    result = run(
        "encrypt",
        "--fleet-dir",
        demo.dir,
        "--repo",
        "app",
        "--name",
        "n",
        "--kind",
        "generic",
        input=b"a" * (MAX_PLAINTEXT_BYTES + 1),
    )
    assert_error(result, "over", str(MAX_PLAINTEXT_BYTES))


def test_encrypt_refuses_missing_fleet_dir(run: Runner, tmp_path: Path) -> None:
    result = run(
        "encrypt",
        "--fleet-dir",
        tmp_path / "nope",
        "--repo",
        "app",
        "--name",
        "n",
        "--kind",
        "generic",
        input=b"secret",
    )
    assert_error(result, "does not exist", "fleet.json")


def test_encrypt_refuses_dir_without_fleet_json(run: Runner, tmp_path: Path) -> None:
    result = run(
        "encrypt",
        "--fleet-dir",
        tmp_path,
        "--repo",
        "app",
        "--name",
        "n",
        "--kind",
        "generic",
        input=b"secret",
    )
    assert_error(result, "does not exist", "fleet.json")


@pytest.mark.parametrize("command", ["encrypt", "recover"])
def test_fleet_dir_that_is_a_file_is_refused(
    demo: Fleet, run: Runner, tmp_path: Path, command: str
) -> None:
    """--fleet-dir naming a regular file: a one-line error, not a NotADirectoryError
    traceback."""
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    if command == "encrypt":
        args = ["encrypt", "--fleet-dir", not_a_dir, "--repo", "a", "--name", "n"]
        args += ["--kind", "generic"]
    else:
        args = recover_args(not_a_dir, demo.bundles[:3])
    assert_error(run(*args, input=b"x"), str(not_a_dir))


def test_encrypt_refuses_tampered_descriptor(demo: Fleet, run: Runner, tmp_path: Path) -> None:
    """fleet.json with its threshold lowered no longer matches the admin signature."""
    copy = tmp_path / "fleet"
    copy.mkdir()
    doc = json.loads((demo.dir / "fleet.json").read_bytes())
    doc["threshold"] = 1
    (copy / "fleet.json").write_text(json.dumps(doc))
    result = run(
        "encrypt",
        "--fleet-dir",
        copy,
        "--repo",
        "app",
        "--name",
        "n",
        "--kind",
        "generic",
        input=b"secret",
    )
    assert_error(result, "signature")


def test_encrypt_refuses_garbage_descriptor(run: Runner, tmp_path: Path) -> None:
    (tmp_path / "fleet.json").write_bytes(b"\x00not json{")
    result = run(
        "encrypt",
        "--fleet-dir",
        tmp_path,
        "--repo",
        "app",
        "--name",
        "n",
        "--kind",
        "generic",
        input=b"secret",
    )
    assert_error(result, "fleet descriptor", "JSON")


# --- recover: refusals about the bundles -------------------------------------------------


@pytest.mark.parametrize("count", [1, 2])
def test_recover_refuses_fewer_than_threshold(demo: Fleet, demo_token: bytes, count: int) -> None:
    result = demo.recover(demo_token, demo.bundles[:count])
    assert_error(result, "bundle", f"{count} bundle(s) given", "needs 3")


def test_recover_refuses_same_bundle_file_twice(demo: Fleet, demo_token: bytes) -> None:
    result = demo.recover(demo_token, [demo.bundle(1), demo.bundle(2), demo.bundle(1)])
    assert_error(result, "bundle", "more than once")


def test_recover_refuses_same_bundle_file_under_another_spelling(
    demo: Fleet, demo_token: bytes
) -> None:
    detour = demo.dir / "nodes" / ".." / "nodes" / "node-1.bundle"
    result = demo.recover(demo_token, [demo.bundle(1), demo.bundle(2), detour])
    assert_error(result, "bundle", "more than once")


def test_recover_refuses_bundle_copied_to_another_path(
    demo: Fleet, demo_token: bytes, tmp_path: Path
) -> None:
    copy = copy_bundle(demo.bundle(2), tmp_path)
    result = demo.recover(demo_token, [demo.bundle(1), demo.bundle(2), copy])
    assert_error(result, "bundle", "same share", "node-2")


def test_recover_refuses_bundle_of_another_fleet(
    demo: Fleet, other: Fleet, demo_token: bytes
) -> None:
    result = demo.recover(demo_token, [demo.bundle(1), demo.bundle(2), other.bundle(3)])
    assert_error(result, "bundle", "node-3", "another admin", "fleet 'other'")


def test_recover_refuses_all_bundles_of_another_fleet(
    demo: Fleet, other: Fleet, demo_token: bytes
) -> None:
    result = demo.recover(demo_token, other.bundles)
    assert_error(result, "bundle", "another admin", "fleet 'other'")


@pytest.fixture(scope="module")
def epoch2_bundle(demo: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """node-1's bundle of a (library-dealt) epoch 2 of the demo fleet, same admin key."""
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
    path = tmp_path_factory.mktemp("epoch2") / "node-1.bundle"
    path.write_bytes(ceremony.bundles[0].seal(TEST_PASSPHRASE, params=FAST_KDF))
    return path


def test_recover_refuses_bundle_of_another_epoch(
    demo: Fleet, demo_token: bytes, epoch2_bundle: Path
) -> None:
    result = demo.recover(demo_token, [epoch2_bundle, demo.bundle(2), demo.bundle(3)])
    assert_error(result, "bundle", "epoch 2", "epoch 1")


def test_recover_refuses_wrong_passphrase(demo: Fleet, demo_token: bytes) -> None:
    result = demo.recover(
        demo_token,
        [demo.bundle(1), demo.bundle(2), demo.bundle(3)],
        passphrase="not-the-passphrase",
    )
    line = assert_error(result, "passphrase", str(demo.bundle(1)))
    assert "not-the-passphrase" not in line


def test_recover_without_passphrase_refused(demo: Fleet, demo_token: bytes) -> None:
    result = demo.recover(demo_token, demo.bundles[:3], passphrase=UNSET)
    assert_error(result, "passphrase", "FLASHGATE_PASSPHRASE")


def _flip_last_byte(blob: bytes) -> bytes:
    return blob[:-1] + bytes([blob[-1] ^ 0x01])


def _flip_middle_byte(blob: bytes) -> bytes:
    mid = len(blob) // 2
    return blob[:mid] + bytes([blob[mid] ^ 0x80]) + blob[mid + 1 :]


def _flip_magic(blob: bytes) -> bytes:
    return bytes([blob[0] ^ 0x01]) + blob[1:]


def _flip_kdf_memory(blob: bytes) -> bytes:
    # the Argon2 memory cost sits after magic, version, purpose length and b"node-bundle"
    pos = 8 + len(b"node-bundle") + 1 + 3
    return blob[:pos] + bytes([blob[pos] ^ 0x01]) + blob[pos + 1 :]


BUNDLE_DAMAGE = [
    pytest.param(_flip_last_byte, ("altered",), id="flip-tag-byte"),
    pytest.param(_flip_middle_byte, ("altered",), id="flip-ciphertext-byte"),
    pytest.param(_flip_kdf_memory, ("altered",), id="flip-kdf-parameter"),
    pytest.param(_flip_magic, ("not a flashgate sealed file",), id="flip-magic"),
    pytest.param(lambda b: b[:30], ("truncated",), id="truncated-to-30-bytes"),
    pytest.param(lambda b: b[: len(b) // 2], ("altered",), id="truncated-to-half"),
    pytest.param(lambda b: b[:-1], ("altered",), id="truncated-by-one"),
    pytest.param(lambda b: b"", ("not a flashgate sealed file",), id="empty-file"),
]


@pytest.mark.parametrize(("damage", "words"), BUNDLE_DAMAGE)
def test_recover_refuses_damaged_bundle(
    demo: Fleet, demo_token: bytes, tmp_path: Path, damage, words: tuple[str, ...]
) -> None:
    bad = tmp_path / "node-1.bundle"
    bad.write_bytes(damage(demo.bundle(1).read_bytes()))
    result = demo.recover(demo_token, [demo.bundle(2), bad, demo.bundle(3)])
    assert_error(result, str(bad), *words)


def test_recover_refuses_admin_key_as_bundle(demo: Fleet, demo_token: bytes) -> None:
    admin = demo.dir / "admin.key"
    result = demo.recover(demo_token, [admin, demo.bundle(2), demo.bundle(3)])
    assert_error(result, str(admin), "admin-key", "node-bundle")


def test_recover_refuses_missing_bundle(demo: Fleet, demo_token: bytes, tmp_path: Path) -> None:
    missing = tmp_path / "node-9.bundle"
    result = demo.recover(demo_token, [demo.bundle(1), missing, demo.bundle(3)])
    assert_error(result, "bundle", str(missing), "does not exist")


def test_recover_refuses_directory_as_bundle(
    demo: Fleet, demo_token: bytes, tmp_path: Path
) -> None:
    result = demo.recover(demo_token, [demo.bundle(1), tmp_path, demo.bundle(3)])
    assert_error(result, "bundle", "is a directory")


def test_recover_refuses_missing_fleet_dir(demo: Fleet, run: Runner, tmp_path: Path) -> None:
    result = run(*recover_args(tmp_path / "nope", demo.bundles[:3]), input=b"x.y")
    assert_error(result, "does not exist", "fleet.json")


# --- recover: refusals about the JWE -----------------------------------------------------


def _moved(token: bytes) -> bytes:
    header = header_of(token)
    header["flashgate"] = {**header["flashgate"], "repo": "elsewhere"}  # type: ignore[dict-item]
    return with_header(token, header)


def _alg(alg: str) -> Callable[[bytes], bytes]:
    return lambda token: with_header(token, {"alg": alg, "enc": "A256GCM"})


JWE_DAMAGE = [
    pytest.param(lambda t: flip_part(t, 3), ("decryption failed",), id="flip-ciphertext"),
    pytest.param(lambda t: flip_part(t, 4), ("decryption failed",), id="flip-tag"),
    pytest.param(lambda t: flip_part(t, 2), ("decryption failed",), id="flip-iv"),
    pytest.param(
        lambda t: flip_part(t, 1, byte=-1), ("decryption failed",), id="flip-encrypted-key"
    ),
    pytest.param(_moved, ("decryption failed",), id="context-edited"),
    pytest.param(
        lambda t: t.strip()[: len(t) // 2], ("5 dot-separated parts",), id="truncated-to-half"
    ),
    pytest.param(
        lambda t: jwe_join(jwe_parts(t)[:4]), ("5 dot-separated parts",), id="tag-dropped"
    ),
    pytest.param(lambda t: truncate_part(t, 4, 8), ("authentication tag",), id="tag-truncated"),
    pytest.param(
        lambda t: truncate_part(t, 1, 64),
        ("encrypted key", "64 bytes", "128"),
        id="encrypted-key-truncated",
    ),
    pytest.param(lambda t: b"", ("5 dot-separated parts",), id="empty"),
    pytest.param(lambda t: "é".encode() + t, ("ASCII",), id="not-ascii"),
    pytest.param(lambda t: b"!" + t, ("protected header", "base64url"), id="header-not-b64"),
    pytest.param(_alg("RSA-OAEP"), ("alg", "RSA-OAEP-256", "'RSA-OAEP'"), id="alg-rsa-oaep"),
    pytest.param(_alg("dir"), ("alg", "RSA-OAEP-256"), id="alg-dir"),
    pytest.param(lambda t: with_header(t, {"enc": "A256GCM"}), ("alg",), id="alg-missing"),
    pytest.param(
        lambda t: with_header(t, {"alg": "RSA-OAEP-256", "enc": "A128GCM"}),
        ("enc", "A256GCM", "A128GCM"),
        id="enc-a128gcm",
    ),
    pytest.param(
        lambda t: with_header(t, {"alg": "RSA-OAEP-256", "enc": "A256GCM", "zip": "DEF"}),
        ("zip",),
        id="zip",
    ),
    pytest.param(
        lambda t: with_header(
            t, {"alg": "RSA-OAEP-256", "enc": "A256GCM", "crit": ["exp"], "exp": 1}
        ),
        ("crit",),
        id="crit",
    ),
    pytest.param(
        lambda t: with_header(
            t, {"alg": "RSA-OAEP-256", "enc": "A256GCM", "jku": "https://example.invalid/"}
        ),
        ("unsupported header parameter", "jku"),
        id="unknown-header",
    ),
]


@pytest.mark.parametrize(("damage", "words"), JWE_DAMAGE)
def test_recover_refuses_bad_jwe(demo: Fleet, demo_token: bytes, damage, words) -> None:
    result = demo.recover(damage(demo_token), [demo.bundle(i) for i in (1, 2, 3)])
    assert_error(result, *words)
    assert BINARY_SECRET not in result.stderr


def test_recover_refuses_jwe_of_another_fleet(demo: Fleet, other_token: bytes) -> None:
    result = demo.recover(other_token, [demo.bundle(i) for i in (1, 2, 3)])
    assert_error(result, "fleet", "'other'", "'demo'")


def test_recover_refuses_contextless_jwe_of_another_fleet(demo: Fleet, other: Fleet) -> None:
    """A jwcrypto JWE for another fleet's key carries no fleet name to check: it fails
    in decryption (or, by chance, as a wrapped key out of this fleet key's range)."""
    token = jwcrypto_token(other, b"other's secret", {"alg": "RSA-OAEP-256", "enc": "A256GCM"})
    result = demo.recover(token, [demo.bundle(i) for i in (1, 2, 3)])
    line = assert_error(result)
    assert "decryption failed" in line or "out of range" in line, line


def test_recover_refuses_jwcrypto_rsa_oaep_sha1(demo: Fleet) -> None:
    """A genuine third-party JWE with alg RSA-OAEP (SHA-1): outside the fleet profile."""
    token = jwcrypto_token(demo, b"sha-1 oaep", {"alg": "RSA-OAEP", "enc": "A256GCM"})
    result = demo.recover(token, [demo.bundle(i) for i in (1, 2, 3)])
    assert_error(result, "alg must be RSA-OAEP-256")


def test_recover_refuses_oversized_stdin(demo: Fleet, run: Runner) -> None:
    token = b"a" * (MAX_TOKEN_BYTES + 1)
    result = run(*recover_args(demo.dir, demo.bundles[:3]), input=token)
    assert_error(result, "JWE", "over", str(MAX_TOKEN_BYTES))


def test_run_cli_helper_is_the_module_entry_point() -> None:
    """Sanity: the runner reaches the real CLI (version flag, exit 0)."""
    result = run_cli("--version", passphrase=UNSET)
    assert result.returncode == 0, str(result)
    assert result.stdout.startswith(b"flashgate, version")
