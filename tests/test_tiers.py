"""The test tiers (tests/support/tiers.py): markers registered, ``make test-fast`` runs the
fast tier, and a test that starts a process must say so."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support.tiers import E2E, FAST_TIER, NATS, POSTGRES, PROCESSES, SLOW

ROOT = Path(__file__).resolve().parents[1]


def test_tier_markers_are_registered(pytestconfig: pytest.Config) -> None:
    registered = {line.split(":")[0] for line in pytestconfig.getini("markers")}
    assert {NATS, POSTGRES, PROCESSES, SLOW, E2E} <= registered


def test_make_test_fast_selects_the_fast_tier() -> None:
    assert f'-m "{FAST_TIER}"' in (ROOT / "Makefile").read_text()


def test_a_test_not_marked_processes_cannot_start_one() -> None:
    with pytest.raises(pytest.fail.Exception, match="not marked `processes`"):
        subprocess.run(["true"], check=False)


@pytest.mark.processes
def test_a_test_marked_processes_can() -> None:
    assert subprocess.run(["true"], check=False).returncode == 0
