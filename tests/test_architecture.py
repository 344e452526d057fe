"""The layering rules of the package.

The static rules (crypto is sans-I/O, the backend never imports share or combine code, the
encrypt side stays apart from the share side, packages import downwards, no import cycle) are
import-linter contracts in pyproject.toml's [tool.importlinter]; ``test_import_contracts_are_kept``
runs them. What import-linter cannot see (what a running process actually loads) is checked on
a real interpreter.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
SHARE_SIDE = (
    "flashgate.crypto.threshold",
    "flashgate.crypto.oaep",
    "flashgate.crypto.decrypt",
    "flashgate.crypto.seal",
)


@pytest.mark.processes
def test_import_contracts_are_kept() -> None:
    result = subprocess.run(
        [str(LINT_IMPORTS), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    ids = {c["id"] for c in contracts["contracts"]}
    assert ids >= {
        "crypto-sans-io",
        "backend-no-share-code",
        "encrypt-side-apart",
        "layers",
        "no-cycles",
    }
    assert f"Contracts: {len(ids)} kept, 0 broken." in result.stdout


def test_crypto_contract_has_no_exception() -> None:
    """crypto holds no pool of any kind: not even one allowed import of concurrent,
    threading or multiprocessing (the pools live at the edges that use them)."""
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    crypto = next(c for c in contracts["contracts"] if c["id"] == "crypto-sans-io")
    assert crypto.get("ignore_imports", []) == []


@pytest.mark.processes
def test_backend_process_loads_no_share_or_combine_code() -> None:
    """Not only direct imports: the whole import closure of the backend service."""
    code = (
        "import sys\n"
        "import flashgate.backend.service, flashgate.cli.backend\n"
        "print('\\n'.join(m for m in sys.modules if m.startswith('flashgate')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert "flashgate.backend.service" in out
    loaded = [m for m in out if any(m == s or m.startswith(s + ".") for s in SHARE_SIDE)]
    assert loaded == []
