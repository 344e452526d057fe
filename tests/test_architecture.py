"""The layering rules of DEVELOPERS.md, checked on the source."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import flashgate

PACKAGE = Path(flashgate.__file__).parent
FORBIDDEN_IN_CRYPTO = (
    "asyncio",
    "nats",
    "sqlalchemy",
    "aiosqlite",
    "asyncpg",
    "socket",
    "subprocess",
    "structlog",
    "logging",
    "flashgate.events",
    "flashgate.fleet",
    "flashgate.backend",
    "flashgate.bridge",
    "flashgate.cli",
)
ENCRYPT_SIDE = (
    "flashgate.crypto.encrypt",
    "flashgate.crypto.jwe",
    "flashgate.crypto.publickey",
    "flashgate.crypto.context",
)
SHARE_SIDE = (
    "flashgate.crypto.threshold",
    "flashgate.crypto.oaep",
    "flashgate.crypto.decrypt",
    "flashgate.crypto.seal",
)


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_crypto_core_is_sans_io() -> None:
    offenders = []
    for path in sorted((PACKAGE / "crypto").rglob("*.py")):
        for name in imported_modules(path):
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN_IN_CRYPTO):
                offenders.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert offenders == []


def test_encrypt_side_does_not_load_share_or_combine_code() -> None:
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in ENCRYPT_SIDE)
        + "print('\\n'.join(m for m in sys.modules if m.startswith('flashgate')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    loaded = [m for m in out if any(m == s or m.startswith(s + ".") for s in SHARE_SIDE)]
    assert loaded == []
    assert "flashgate.crypto.encrypt" in out


def test_backend_never_imports_share_or_combine_code() -> None:
    offenders = []
    for path in sorted((PACKAGE / "backend").rglob("*.py")):
        for name in imported_modules(path):
            if any(name == s or name.startswith(s + ".") for s in SHARE_SIDE):
                offenders.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert offenders == []


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
