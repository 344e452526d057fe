"""``flashgate secret`` and ``flashgate apikey`` against a running system: a real
nats-server, an in-process backend on SQLite, the CLI in process (tests.support.cli.run_cli,
in a worker thread while the backend runs in the test's event loop).

What the CLI writes is read back from the backend's database and opened with the test
fleet's reference private key (the ceremony uses the fixed test primes)."""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import subprocess
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from flashgate.backend import db
from flashgate.backend.service import Backend, BackendSettings
from flashgate.crypto import jwe
from flashgate.crypto.threshold.dealing import generate_primes
from flashgate.fleet.ceremony import run_ceremony
from flashgate.fleet.directory import write_fleet_dir
from tests.support.cli import Result, assert_error, run_cli, without_flashgate_env
from tests.support.material import (
    CANARY,
    FAST_KDF,
    TEST_BITS,
    TEST_PASSPHRASE,
    fixed_primes,
)

pytestmark = pytest.mark.nats
EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "flashgate-jwe.mjs"

S3_FLAGS = (
    "--provider",
    "s3",
    "--bucket",
    "media",
    "--region",
    "eu-west-1",
    "--access-key-id",
    "AKIA",
    "--secret-access-key",
)


@dataclass
class Home:
    path: Path
    fleet: str
    db_path: Path
    nats_url: str
    primes: tuple[int, int]

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.db_path}"

    @property
    def env(self) -> dict[str, str | None]:
        return without_flashgate_env(
            FLASHGATE_HOME=str(self.path),
            FLASHGATE_NATS_URL=self.nats_url,
            FLASHGATE_PASSPHRASE=TEST_PASSPHRASE,
        )

    async def run(self, *args: str, input: bytes = b"") -> Result:
        """``flashgate ARGS`` in a worker thread (the backend keeps running in this loop)."""
        return await asyncio.to_thread(run_cli, *args, input=input, env=self.env)

    async def json(self, *args: str, input: bytes = b"") -> object:
        result = await self.run(*args, "--json", input=input)
        assert result.returncode == 0, str(result)
        return json.loads(result.stdout)

    def sql(self, statement: str, *params: object) -> list[tuple[object, ...]]:
        with sqlite3.connect(self.db_path) as conn:
            return conn.execute(statement, params).fetchall()

    def versions(self, repo: str, name: str) -> list[int]:
        return [
            int(v)  # type: ignore[call-overload]
            for (v,) in self.sql(
                "SELECT sv.version FROM secret_versions sv "
                "JOIN secrets s ON s.id = sv.secret_id "
                "JOIN repositories r ON r.id = s.repository_id "
                "WHERE r.name = ? AND s.name = ? ORDER BY sv.version",
                repo,
                name,
            )
        ]

    def stored_jwe(self, repo: str, name: str) -> str:
        [(token,)] = self.sql(
            "SELECT sv.jwe FROM secret_versions sv JOIN secrets s ON s.id = sv.secret_id "
            "JOIN repositories r ON r.id = s.repository_id "
            "WHERE r.name = ? AND s.name = ? AND sv.version = s.current_version",
            repo,
            name,
        )
        return str(token)

    def stored_value(self, repo: str, name: str) -> bytes:
        """The current version's plaintext, opened with the reference private key."""
        parsed = jwe.parse(self.stored_jwe(repo, name))
        oaep = padding.OAEP(
            mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None
        )
        cek = private_key(*self.primes).decrypt(parsed.encrypted_key, oaep)
        return AESGCM(cek).decrypt(parsed.iv, parsed.ciphertext + parsed.tag, parsed.aad)


def make_home(
    base: Path, nats_url: str, bits: int = TEST_BITS, primes: tuple[int, int] | None = None
) -> Home:
    fleet = f"c{uuid.uuid4().hex[:10]}"  # streams live on in the shared nats-server
    ceremony = run_ceremony(
        fleet=fleet,
        node_ids=["node-1", "node-2", "node-3"],
        threshold=2,
        bits=bits,
        primes=primes or fixed_primes(),
        allow_insecure=True,
    )
    write_fleet_dir(base / "home" / "fleet", ceremony, TEST_PASSPHRASE, params=FAST_KDF)
    found = Home(base / "home", fleet, base / "backend.db", nats_url, primes or fixed_primes())
    db.migrate(found.db_url)
    return found


@pytest.fixture
def home(tmp_path: Path, nats_url: str) -> Home:
    return make_home(tmp_path, nats_url)


def private_key(p: int, q: int) -> rsa.RSAPrivateKey:
    """The fleet's RSA private key from its primes (tests only: the ceremony's p and q)."""
    n, e = p * q, 65537
    d = pow(e, -1, (p - 1) * (q - 1))
    return rsa.RSAPrivateNumbers(
        p,
        q,
        d,
        rsa.rsa_crt_dmp1(d, p),
        rsa.rsa_crt_dmq1(d, q),
        rsa.rsa_crt_iqmp(p, q),
        rsa.RSAPublicNumbers(e, n),
    ).private_key()


@pytest.fixture
def offline(home: Home) -> Home:
    """The same home pointed at a NATS URL where nothing listens: a command refused before
    it connects says so; one that tried to connect fails differently."""
    return Home(home.path, home.fleet, home.db_path, "nats://127.0.0.1:1", home.primes)


@pytest.fixture
async def system(home: Home) -> AsyncIterator[Home]:
    backend = Backend(
        BackendSettings(
            nats_urls=[home.nats_url], db_url=home.db_url, fleet_dir=home.path / "fleet"
        )
    )
    await backend.start()
    yield home
    await backend.stop()


def s3_value(secret: str) -> bytes:
    """The storage value as the CLI has always stored it."""
    fields = {
        "type": "storage",
        "provider": "s3",
        "bucket": "media",
        "region": "eu-west-1",
        "access_key_id": "AKIA",
        "secret_access_key": secret,
    }
    return json.dumps(fields, sort_keys=True).encode()


# --- 1. a partial typed rotation is refused ------------------------------------------------


async def test_rotate_with_some_typed_flags_is_refused(system: Home) -> None:
    put = await system.json("secret", "put", "media/s3", "--kind", "storage", *S3_FLAGS, "v1")
    assert (put["kind"], put["version"]) == ("storage", 1)  # type: ignore[index]
    assert system.stored_value("media", "s3") == s3_value("v1")

    partial = await system.run("secret", "rotate", "media/s3", "--secret-access-key", "NEW")
    line = assert_error(
        partial,
        "media/s3",
        "s3: --bucket, --region, --access-key-id, --secret-access-key",
        "gcs: --bucket, --access-key-id, --secret-access-key",
        "missing: --provider",
        "replaces the whole value",
    )
    assert "NEW" not in line
    partial = await system.run(
        "secret", "rotate", "media/s3", "--provider", "s3", "--secret-access-key", "NEW"
    )
    line = assert_error(
        partial,
        "media/s3",
        "needs --bucket, --region, --access-key-id, --secret-access-key",
        "missing: --bucket, --region, --access-key-id",
        "replaces the whole value",
    )
    assert "NEW" not in line
    assert system.versions("media", "s3") == [1]  # nothing written

    whole = await system.json("secret", "rotate", "media/s3", *S3_FLAGS, "v2")
    assert (whole["kind"], whole["version"]) == ("storage", 2)  # type: ignore[index]
    assert system.stored_value("media", "s3") == s3_value("v2")


# --- 2. typed values are validated -----------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "words"),
    [
        pytest.param(
            ["--kind", "storage", *S3_FLAGS, "x", "--api-key", "foo"],
            ("--api-key is not for a storage secret",),
            id="api-key-on-storage",
        ),
        pytest.param(
            ["--kind", "storage", "--provider", "dropbox"],
            ("--provider 'dropbox' is not a storage provider", "s3|gcs|azure"),
            id="dropbox",
        ),
        pytest.param(
            ["--kind", "storage", "--provider", "s3"],
            ("missing: --bucket, --region, --access-key-id, --secret-access-key",),
            id="provider-alone",
        ),
        pytest.param(
            ["--kind", "ai", "--provider", "nope"],
            ("--provider 'nope' is not an ai provider",),
            id="ai-nope",
        ),
        pytest.param(
            ["--kind", "generic", "--provider", "s3"],
            ("typed value flags are for the storage and ai kinds",),
            id="typed-generic",
        ),
    ],
)
def test_put_refuses_invalid_typed_values_before_connecting(
    offline: Home, args: list[str], words: tuple[str, ...]
) -> None:
    result = asyncio.run(offline.run("secret", "put", "media/s3", *args))
    assert_error(result, "media/s3", *words)


def test_put_refuses_a_value_file_that_is_not_of_its_kind(offline: Home, tmp_path: Path) -> None:
    value = tmp_path / "value.json"
    value.write_bytes(b'{"secret_access_key": "' + CANARY + b'", "type": "storage"}')
    result = asyncio.run(
        offline.run("secret", "put", "media/s3", "--kind", "storage", "--value-file", str(value))
    )
    line = assert_error(result, "not a storage value", "needs --provider")
    assert CANARY.decode() not in line


def test_apikey_create_refuses_an_unknown_ai_provider(offline: Home) -> None:
    result = asyncio.run(
        offline.run(
            "apikey", "create", "ml", "--scope", "ai", "--name", "x", "--access", "notaprovider"
        )
    )
    assert_error(result, "--access 'notaprovider'", "openai")
    storage = asyncio.run(
        offline.run(
            "apikey", "create", "ml", "--scope", "storage", "--name", "x", "--access", "all"
        )
    )
    assert_error(storage, "--access 'all'", "read|write|admin")


# --- 3. a rotation keeps the kind; errors name secrets as repo/name ---------------------


async def test_rotate_refuses_a_kind_change_in_the_users_words(system: Home) -> None:
    ai = b'{"api_key": "sk-1", "provider": "openai", "type": "ai"}'
    await system.json("secret", "put", "ml/openai", "--kind", "ai", input=ai)
    changed = await system.run("secret", "rotate", "ml/openai", "--kind", "generic", input=b"x")
    assert_error(changed, "ml/openai is of kind ai, not generic", "a rotation keeps the kind")
    assert "ml.openai" not in changed.err
    same = await system.json(
        "secret", "rotate", "ml/openai", "--kind", "ai", "--provider", "openai", "--api-key", "k2"
    )
    assert same["version"] == 2  # type: ignore[index]
    missing = await system.run("secret", "rotate", "ml/nothing", input=b"x")
    assert_error(missing, "ml/nothing does not exist")


# --- 4. API key names: checked as --name; apikey rename -----------------------------------


@pytest.mark.parametrize(
    ("name", "words"),
    [
        pytest.param("", ("--name is empty",), id="empty"),
        pytest.param(" ", ("--name is empty",), id="blank"),
        pytest.param("x" * 300, ("--name is 300 characters", "at most 128"), id="300-chars"),
        pytest.param("two\nlines", ("--name must be one line",), id="newline"),
    ],
)
def test_apikey_name_is_checked_as_the_option(
    offline: Home, name: str, words: tuple[str, ...]
) -> None:
    create = asyncio.run(
        offline.run("apikey", "create", "ci", "--scope", "storage", "--name", name)
    )
    line = assert_error(create, *words)
    assert "label" not in line and "$." not in line
    rename = asyncio.run(offline.run("apikey", "rename", "fgk_" + "a" * 24, "--name", name))
    assert_error(rename, *words)


async def test_apikey_rename(system: Home) -> None:
    created = await system.json("apikey", "create", "ci", "--scope", "storage", "--name", "old")
    key_id = created["key_id"]  # type: ignore[index]
    renamed = await system.json("apikey", "rename", key_id, "--name", "CI reader v2")
    assert renamed == {
        "key_id": key_id,
        "name": "CI reader v2",
        "event": "io.flashgate.apikey.renamed",
    }
    listed = await system.json("apikey", "list", "ci")
    assert [(k["key_id"], k["name"]) for k in listed] == [(key_id, "CI reader v2")]  # type: ignore[union-attr,index]
    unknown = await system.run("apikey", "rename", "fgk_" + "a" * 24, "--name", "x")
    assert_error(unknown, "does not exist")
    not_a_key = await system.run("apikey", "rename", "payments", "--name", "x")
    assert_error(not_a_key, "not an API key id")


# --- 5. secrets found by name; every listing paged -------------------------------------------


async def test_put_rotate_and_list_past_1000_secrets(system: Home) -> None:
    """Rows inserted directly (fast): 1100 secrets in one repository, the last one deleted
    at version 3, and 1001 API keys. `rotate` finds s1098, `put` re-creates s1099 at
    version 4, `list` shows every row."""
    await system.json("secret", "put", "big/seed", "--kind", "generic", input=b"v")
    [(repo_id,)] = system.sql("SELECT id FROM repositories WHERE name = 'big'")
    now = "2026-01-01 00:00:00.000000"

    def insert_rows() -> None:
        with sqlite3.connect(system.db_path) as conn:
            conn.executemany(
                "INSERT INTO secrets (repository_id, name, kind, current_version, deleted, "
                "created_at, updated_at) VALUES (?, ?, 'generic', ?, ?, ?, ?)",
                [
                    (repo_id, f"s{i:04d}", 3 if i == 1099 else 1, i == 1099, now, now)
                    for i in range(1100)
                ],
            )
            conn.executemany(
                "INSERT INTO api_keys (key_id, repository_id, scope, access, label, epoch, "
                "jwe, created_at) VALUES (?, ?, 'storage', 'read', ?, 1, 'x', ?)",
                [(f"fgk_{i:024d}", repo_id, f"key {i}", now) for i in range(1001)],
            )

    # In a thread: the backend (in this loop) may still be committing after its answer to
    # the put, and a write blocking the loop would wait for the lock that commit releases.
    await asyncio.to_thread(insert_rows)
    rotated = await system.json("secret", "rotate", "big/s1098", input=b"new")
    assert rotated["version"] == 2  # type: ignore[index]
    assert system.stored_value("big", "s1098") == b"new"
    recreated = await system.json("secret", "put", "big/s1099", "--kind", "generic", input=b"x")
    assert recreated["version"] == 4  # type: ignore[index]
    listed = await system.json("secret", "list", "big")
    names = [row["name"] for row in listed]  # type: ignore[attr-defined]
    assert names == sorted([f"s{i:04d}" for i in range(1100)] + ["seed"])
    keys = await system.json("apikey", "list")
    assert len(keys) == 1001  # type: ignore[arg-type]
    assert keys[-1]["name"] == "key 1000"  # type: ignore[index]


# --- 6. secret put/rotate --jwe: an envelope another JOSE library wrote ---------------------


def jose_header(home: Home, name: str, version: int, **overrides: object) -> dict[str, object]:
    """The protected header a JOSE library must write for ``app/<name>`` (generic)."""
    context = {"v": 1, "fleet": home.fleet, "repo": "app", "name": name, "kind": "generic"}
    header: dict[str, object] = {
        "alg": "RSA-OAEP-256",
        "enc": "A256GCM",
        "kid": f"flashgate:{home.fleet}:1",
        "flashgate": context | {"version": version},
    }
    for key, value in overrides.items():
        if value is None:
            header.pop(key, None)
        else:
            header[key] = value
    return header


def jwcrypto_jwe(home: Home, plaintext: bytes, header: dict[str, object]) -> str:
    """A compact JWE written by jwcrypto for the fleet's published JWK."""
    from jwcrypto import jwe as jwcrypto_jwe_module
    from jwcrypto import jwk as jwcrypto_jwk

    descriptor = json.loads((home.path / "fleet" / "fleet.json").read_bytes())
    key = jwcrypto_jwk.JWK(**descriptor["public_key_jwk"])
    token = jwcrypto_jwe_module.JWE(plaintext, protected=json.dumps(header))
    token.add_recipient(key)
    return str(token.serialize(compact=True))


async def test_put_and_rotate_a_jwe_written_by_jwcrypto(system: Home, tmp_path: Path) -> None:
    first = tmp_path / "v1.jwe"
    first.write_text(jwcrypto_jwe(system, b"from jwcrypto", jose_header(system, "hook", 1)))
    put = await system.json("secret", "put", "app/hook", "--kind", "generic", "--jwe", str(first))
    assert put["version"] == 1  # type: ignore[index]
    assert system.stored_jwe("app", "hook") == first.read_text().strip()  # as written
    assert system.stored_value("app", "hook") == b"from jwcrypto"
    second = tmp_path / "v2.jwe"
    second.write_text(jwcrypto_jwe(system, b"rotated", jose_header(system, "hook", 2)))
    rotated = await system.json("secret", "rotate", "app/hook", "--jwe", str(second))
    assert rotated["version"] == 2  # type: ignore[index]
    assert system.stored_value("app", "hook") == b"rotated"


@pytest.mark.parametrize(
    ("header", "words"),
    [
        pytest.param({"alg": "RSA-OAEP"}, ("alg must be RSA-OAEP-256",), id="alg"),
        pytest.param({"enc": "A128GCM"}, ("enc must be A256GCM",), id="enc"),
        pytest.param({"kid": "flashgate:other:1"}, ("kid is 'flashgate:other:1'",), id="kid"),
        pytest.param(
            {"flashgate": None}, ("no 'flashgate' context", '"name": "hook"'), id="no-context"
        ),
        pytest.param({"zip": "DEF"}, ("'zip'",), id="zip"),
        pytest.param({"x-extra": "1"}, ("x-extra",), id="other-parameter"),
    ],
)
async def test_put_jwe_refusals_say_what_is_wrong(
    system: Home, tmp_path: Path, header: dict[str, object], words: tuple[str, ...]
) -> None:
    token = tmp_path / "bad.jwe"
    full = jose_header(system, "hook", 1, **header)
    if header.get("alg") == "RSA-OAEP" or header.get("enc") or header.get("zip"):
        # jwcrypto would honour these; write the right token and swap in the header.
        good = jwcrypto_jwe(system, b"v", jose_header(system, "hook", 1)).split(".")
        protected = jwe.encode_header(full)
        token.write_text(".".join([protected, *good[1:]]))
    else:
        token.write_text(jwcrypto_jwe(system, b"v", full))
    result = await system.run("secret", "put", "app/hook", "--kind", "generic", "--jwe", str(token))
    assert_error(result, "--jwe", *words)
    assert system.versions("app", "hook") == []


async def test_put_jwe_context_must_be_this_secrets(system: Home, tmp_path: Path) -> None:
    await system.json("secret", "put", "app/hook", "--kind", "generic", input=b"v1")
    token = tmp_path / "v.jwe"
    token.write_text(jwcrypto_jwe(system, b"v", jose_header(system, "hook", 1)))
    stale = await system.run("secret", "rotate", "app/hook", "--jwe", str(token))
    assert_error(stale, "--jwe: the context's version is 1", "app/hook needs 2", '"version": 2')
    other = tmp_path / "other.jwe"
    other.write_text(jwcrypto_jwe(system, b"v", jose_header(system, "other", 2)))
    moved = await system.run("secret", "rotate", "app/hook", "--jwe", str(other))
    assert_error(moved, "the context's name is 'other'", "needs 'hook'")
    kind = await system.run("secret", "rotate", "app/hook", "--kind", "ai", "--jwe", str(token))
    assert_error(kind, "app/hook is of kind generic, not ai")
    garbage = tmp_path / "garbage.jwe"
    garbage.write_text("not.a.jwe")
    bad = await system.run("secret", "rotate", "app/hook", "--jwe", str(garbage))
    assert_error(bad, "--jwe", "5 dot-separated parts")
    both = await system.run(
        "secret", "rotate", "app/hook", "--jwe", str(token), "--value-file", str(token)
    )
    assert_error(both, "one way only", "--value-file and --jwe")
    missing = await system.run("secret", "rotate", "app/hook", "--jwe", str(tmp_path / "nope"))
    assert_error(missing, "cannot read --jwe")
    assert system.versions("app", "hook") == [1]


@pytest.fixture(scope="session")
def node_jose(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with the `jose` npm package installed and the docs' example script."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed to write a JWE with the `jose` npm package")
    where = tmp_path_factory.mktemp("node-jose")
    (where / "package.json").write_text('{"private": true, "type": "module"}\n')
    installed = subprocess.run(
        # from npm's own cache when it holds jose 6 (no registry round trip), else the registry
        [npm, "install", "--prefer-offline", "--no-audit", "--no-fund", "--silent", "jose@6"],
        cwd=where,
        capture_output=True,
        timeout=180,
        check=False,
    )
    if installed.returncode != 0:
        pytest.skip(f"`npm install jose` failed: {installed.stderr.decode()[-300:]}")
    shutil.copy(EXAMPLE, where / EXAMPLE.name)
    return where


@pytest.mark.processes
async def test_put_a_jwe_written_by_node_jose(
    node_jose: Path, tmp_path: Path, nats_url: str
) -> None:
    """The worked example of docs/operations.md: Node's `jose` writes the envelope. jose
    refuses RSA keys under 2048 bits, so this fleet has a 2048-bit key (new primes)."""
    primes = await asyncio.to_thread(generate_primes, 2048)
    home = await asyncio.to_thread(make_home, tmp_path, nats_url, 2048, primes)
    value = tmp_path / "value.txt"
    value.write_bytes(b"written by node jose")
    fleet_json = str(home.path / "fleet" / "fleet.json")
    script = str(node_jose / EXAMPLE.name)
    wrote = subprocess.run(
        ["node", script, fleet_json, "app", "hook", "generic", "1", str(value)],
        cwd=node_jose,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert wrote.returncode == 0, wrote.stderr.decode()
    token = tmp_path / "value.jwe"
    token.write_bytes(wrote.stdout)
    backend = Backend(
        BackendSettings(
            nats_urls=[home.nats_url], db_url=home.db_url, fleet_dir=home.path / "fleet"
        )
    )
    await backend.start()
    try:
        put = await home.json("secret", "put", "app/hook", "--kind", "generic", "--jwe", str(token))
        assert put["version"] == 1  # type: ignore[index]
        assert home.stored_value("app", "hook") == b"written by node jose"
        wrong = subprocess.run(
            ["node", script, fleet_json, "app", "hook", "generic", "1", str(value)],
            cwd=node_jose,
            capture_output=True,
            timeout=60,
            check=True,
        )
        token.write_bytes(wrong.stdout)  # version 1 again: the secret is at 1 now
        stale = await home.run("secret", "rotate", "app/hook", "--jwe", str(token))
        assert_error(stale, "the context's version is 1", "needs 2")
    finally:
        await backend.stop()
