"""README's file map names every module of the package, so that a reader of the tree and a
reader of the README see the same house (issue 13: "README's file map is current")."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "flashgate"


def _map_rows() -> dict[str, str]:
    """The file map's rows: path cell -> description cell."""
    rows: dict[str, str] = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        match = re.match(r"\| `([^`]+)` \| (.*) \|$", line)
        if match:
            rows[match.group(1)] = match.group(2)
    return rows


def _modules() -> list[Path]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if path.name == "__init__.py" or relative.parts[:2] == ("backend", "migrations"):
            continue
        found.append(relative)
    return found


def test_every_module_is_in_the_file_map() -> None:
    rows = _map_rows()
    missing = []
    for module in _modules():
        if len(module.parts) == 1:  # a top-level module has a row of its own
            if f"flashgate/{module.name}" not in rows:
                missing.append(str(module))
            continue
        row = rows.get(f"flashgate/{module.parts[0]}/", "")
        if f"`{module.stem}`" not in row:
            missing.append(str(module))
    assert not missing, f"README's file map does not name: {', '.join(missing)}"


def test_the_file_map_names_no_module_that_is_gone() -> None:
    stems = {m.stem for m in _modules()} | {p.name for p in PACKAGE.rglob("*") if p.is_dir()}
    rows = _map_rows()
    stale = []
    for path, text in rows.items():
        if not path.startswith("flashgate/") or not path.endswith("/") or path == "flashgate/cli/":
            continue  # the CLI's row also names commands (`flashgate`, `recover`)
        for name in re.findall(r"`([a-z_]+)/?`", text):
            if name not in stems and not (ROOT / path / name).exists():
                stale.append(f"{path}{name}")
    assert not stale, f"README's file map names modules that do not exist: {', '.join(stale)}"
