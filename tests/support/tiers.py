"""pytest plugin: the test tiers, by what a test needs (markers registered in pyproject.toml).

* ``nats`` - a real nats-server (added here to every test that uses a fixture of
  :mod:`tests.support.nats_servers`);
* ``postgres`` - PostgreSQL (added here to every test with a ``postgresql`` parameter, e.g.
  ``db_url``, or the ``pg_url`` fixture);
* ``processes`` - starts processes of its own: ``flashgate`` as a subprocess, Bridge Nodes,
  ``dev up``, a shell, Node.js, nats-server (marked by hand, per module or test; added here
  to every test that uses ``nats_binary``);
* ``slow`` - long even among those; ``e2e`` - through ``flashgate dev up``.

``make test-fast`` runs the tier that needs none of them (:data:`FAST_TIER`); ``make test``
runs everything. So that the fast tier stays what it says, a test that starts a process
without being marked ``processes`` (or ``nats``) fails and says so.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

NATS, POSTGRES, PROCESSES, SLOW, E2E = "nats", "postgres", "processes", "slow", "e2e"
#: The ``-m`` expression of ``make test-fast``.
FAST_TIER = f"not {NATS} and not {POSTGRES} and not {PROCESSES} and not {SLOW} and not {E2E}"
#: Tests with one of these markers may start processes.
MAY_START_PROCESSES = (NATS, PROCESSES)

_NATS_FIXTURES = frozenset({"nats_server", "nats_url", "nc", "js", "nats_cluster"})
#: Fixtures that run a program (``nats_binary`` asks nats-server its version).
_PROCESS_FIXTURES = frozenset({"nats_binary"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if _NATS_FIXTURES & fixtures:
            item.add_marker(NATS)
        if _PROCESS_FIXTURES & fixtures:
            item.add_marker(PROCESSES)
        callspec = getattr(item, "callspec", None)
        params = callspec.params.values() if callspec is not None else ()
        if "pg_url" in fixtures or "postgresql" in params:
            item.add_marker(POSTGRES)


@pytest.fixture(autouse=True)
def _processes_are_marked(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that starts a process (subprocess.Popen, which asyncio's subprocesses
    use too) while not marked ``processes``."""
    if any(request.node.get_closest_marker(m) for m in MAY_START_PROCESSES):
        yield
        return
    real = subprocess.Popen.__init__

    def refuse(self: subprocess.Popen[Any], args: Any, *rest: Any, **kwargs: Any) -> None:
        pytest.fail(
            f"{request.node.nodeid} starts a process ({args!r:.120}) but is not marked "
            f"`{PROCESSES}`: add @pytest.mark.{PROCESSES} (tests/support/tiers.py)",
            pytrace=False,
        )

    subprocess.Popen.__init__ = refuse  # type: ignore[method-assign]
    try:
        yield
    finally:
        subprocess.Popen.__init__ = real  # type: ignore[method-assign]
