"""``flashgate`` as a process of its own, as a user runs it. The other CLI tests run the
command in process (:func:`tests.support.cli.run_cli`); these check the module entry point
end to end in a subprocess: exit statuses, the bytes on stdout and stderr, and that files
are sealed at the product's default Argon2 cost (in-process runs seal at FAST_KDF)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from flashgate.crypto.seal import DEFAULT_KDF, KdfParams
from tests.support.cli import (
    BINARY_SECRET,
    FAST_INIT,
    UNSET,
    assert_error,
    run_cli,
    run_cli_process,
)
from tests.support.material import FAST_KDF

pytestmark = pytest.mark.processes


def sealed_cost(blob: bytes) -> KdfParams:
    """The Argon2 cost in a sealed file's header (format: flashgate/crypto/seal.py)."""
    purpose_length = blob[7]
    return KdfParams(*struct.unpack_from(">III", blob, 8 + purpose_length + 1))


def init_args(out: Path) -> tuple[str | Path, ...]:
    return ("fleet", "init", "--fleet", "smoke", "--nodes", "3", "--threshold", "2", *FAST_INIT,
            "--out", out)  # fmt: skip


def test_version() -> None:
    result = run_cli_process("--version", passphrase=UNSET)
    assert result.returncode == 0, str(result)
    assert result.stdout.startswith(b"flashgate, version")


def test_init_encrypt_recover_and_a_refusal(tmp_path: Path) -> None:
    out = tmp_path / "smoke"
    init = run_cli_process(*init_args(out))
    assert init.returncode == 0, str(init)
    assert (init.stdout, init.stderr) == (b"", b"")  # --quiet
    sealed = [out / "admin.key", *sorted((out / "nodes").iterdir())]
    assert len(sealed) == 4
    for path in sealed:
        assert sealed_cost(path.read_bytes()) == DEFAULT_KDF, path

    encrypted = run_cli_process(
        "encrypt", "--fleet-dir", out, "--repo", "app", "--name", "db", "--kind", "generic",
        input=BINARY_SECRET,
    )  # fmt: skip
    assert encrypted.returncode == 0, str(encrypted)
    assert encrypted.stdout.count(b".") == 4 and encrypted.stdout.endswith(b"\n")
    bundles = [a for n in (1, 3) for a in ("--bundle", out / "nodes" / f"node-{n}.bundle")]
    recovered = run_cli_process("recover", "--fleet-dir", out, *bundles, input=encrypted.stdout)
    assert recovered.returncode == 0, str(recovered)
    assert recovered.stdout == BINARY_SECRET
    assert recovered.err == "recovered smoke/app/db (generic) v1\n"

    refused = run_cli_process("recover", "--fleet-dir", out, *bundles[:2], input=encrypted.stdout)
    assert_error(refused, "1 bundle(s) given", "needs 2")


def test_in_process_runs_seal_at_the_test_cost(tmp_path: Path) -> None:
    """The other side of the test knob (tests/support/cli.py): same command, in process."""
    out = tmp_path / "smoke"
    assert run_cli(*init_args(out)).returncode == 0
    for path in [out / "admin.key", *(out / "nodes").iterdir()]:
        assert sealed_cost(path.read_bytes()) == FAST_KDF, path
