"""The backend's event key in an admin home: a home without ``backend.json`` (a fleet made
before it existed) is refused with the remedy, and ``fleet backend-key`` makes one."""

from __future__ import annotations

from pathlib import Path

import pytest

from flashgate.cli.session import AdminSession
from flashgate.errors import HomeFileError
from flashgate.fleet.backend_key import (
    BACKEND_KEY_FILE,
    BACKEND_PUBLIC_FILE,
    load_backend_public,
    load_backend_signing_key,
)
from flashgate.fleet.ceremony import run_ceremony
from flashgate.fleet.directory import write_fleet_dir
from flashgate.fleet.files import load_descriptor
from tests.support.cli import run_cli
from tests.support.material import FAST_KDF, TEST_BITS, TEST_PASSPHRASE, fixed_primes


@pytest.fixture
def home(tmp_path: Path) -> Path:
    cer = run_ceremony(
        fleet="keytest",
        node_ids=["node-1", "node-2"],
        threshold=2,
        bits=TEST_BITS,
        primes=fixed_primes(),
        allow_insecure=True,
    )
    write_fleet_dir(tmp_path / "fleet", cer, TEST_PASSPHRASE, params=FAST_KDF)
    (tmp_path / "config.json").write_text('{"nats": ["nats://127.0.0.1:1"]}')
    (tmp_path / "config.json").chmod(0o600)
    return tmp_path


def test_a_home_without_the_backend_key_names_the_remedy(home: Path) -> None:
    (home / "fleet" / BACKEND_PUBLIC_FILE).unlink()
    (home / "fleet" / BACKEND_KEY_FILE).unlink()
    with pytest.raises(HomeFileError, match="fleet backend-key"):
        AdminSession(home)
    result = run_cli("fleet", "backend-key", "--home", home)
    assert result.returncode == 0, result
    descriptor = load_descriptor(home / "fleet")
    public = load_backend_public(home / "fleet", descriptor)
    assert load_backend_signing_key(home / "fleet", descriptor).public_key() == public
    AdminSession(home)  # usable now


def test_the_backend_key_is_not_replaced_without_force(home: Path) -> None:
    before = (home / "fleet" / BACKEND_PUBLIC_FILE).read_bytes()
    assert run_cli("fleet", "backend-key", "--home", home).returncode != 0
    assert (home / "fleet" / BACKEND_PUBLIC_FILE).read_bytes() == before
    assert run_cli("fleet", "backend-key", "--force", "--home", home).returncode == 0
    assert (home / "fleet" / BACKEND_PUBLIC_FILE).read_bytes() != before


def test_a_backend_json_signed_by_another_admin_is_refused(home: Path, tmp_path: Path) -> None:
    from flashgate.fleet.backend_key import write_backend_key
    from flashgate.fleet.identity_keys import new_ed25519

    write_backend_key(home / "fleet", "keytest", new_ed25519())
    with pytest.raises(HomeFileError, match=r"backend\.json"):
        AdminSession(home)
