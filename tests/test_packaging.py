"""What a fresh machine installs: ranges in pyproject.toml, one tested point in constraints.txt."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _direct_requirements() -> list[Requirement]:
    project = _pyproject()["project"]
    names = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        names.extend(extra)
    return [Requirement(r) for r in names]


def _pins() -> dict[str, Version]:
    pins = {}
    for raw in (ROOT / "constraints.txt").read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, _, version = line.partition("==")
        assert version, f"constraints.txt: {line!r} is not an exact pin"
        pins[canonicalize_name(name)] = Version(version)
    return pins


def test_every_dependency_has_a_bounded_range() -> None:
    """A range with no upper bound lets next month's release of a library into a fresh install."""
    for req in _direct_requirements():
        ops = {spec.operator for spec in req.specifier}
        assert ">=" in ops and "<" in ops, f"{req}: state the tested range as >=low,<high"


def test_constraints_pin_every_dependency_inside_its_range() -> None:
    pins = _pins()
    for req in _direct_requirements():
        name = canonicalize_name(req.name)
        assert name in pins, f"constraints.txt does not pin {req.name}"
        assert req.specifier.contains(pins[name]), f"{req.name}=={pins[name]} is outside {req}"


def test_license_is_an_spdx_expression() -> None:
    """setuptools >= 77 warns about (and will refuse) the old ``{ text = ... }`` table."""
    project = _pyproject()["project"]
    assert isinstance(project["license"], str)
    requires = _pyproject()["build-system"]["requires"]
    setuptools = next(Requirement(r) for r in requires if r.startswith("setuptools"))
    assert not setuptools.specifier.contains("76.9"), "the SPDX form needs setuptools >= 77"


def test_make_installs_with_the_constraints() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "-c constraints.txt" in makefile
