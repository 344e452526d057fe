"""Fixtures for the CLI tests (the runners and helpers are in :mod:`tests.support.cli`).

One 3-of-5 fleet ("demo") and one 2-of-3 fleet ("other") are dealt per session with
``fleet init`` (1024-bit INSECURE test keys) and shared by every test; tests that alter a
file copy it first.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.cli import BINARY_SECRET, Fleet, Runner, init_fleet, run_cli


@pytest.fixture(scope="session")
def run() -> Runner:
    return run_cli


@pytest.fixture(scope="session")
def fleets_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fleets")


@pytest.fixture(scope="session")
def demo(fleets_base: Path) -> Fleet:
    """The main fleet: 'demo', 3-of-5, nodes node-1..node-5."""
    return init_fleet(fleets_base, "demo", nodes=5, threshold=3)


@pytest.fixture(scope="session")
def other(fleets_base: Path) -> Fleet:
    """A second, unrelated fleet: 'other', 2-of-3."""
    return init_fleet(fleets_base, "other", nodes=3, threshold=2)


@pytest.fixture(scope="session")
def demo_token(demo: Fleet) -> bytes:
    """BINARY_SECRET encrypted for demo as app/db-password (generic) v3."""
    return demo.encrypt(BINARY_SECRET, version=3)


@pytest.fixture(scope="session")
def other_token(other: Fleet) -> bytes:
    """A JWE encrypted for the 'other' fleet."""
    return other.encrypt(b"belongs to other", repo="app", name="api-key", kind="generic")
