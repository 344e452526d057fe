"""Package boundaries: what a service process loads, and no import cycles in flashgate.

tests/test_architecture.py holds the crypto layering rules; these are about the shape of
the rest of the package.
"""

from __future__ import annotations

import subprocess
import sys

#: What ``flashgate backend`` and ``flashgate bridge`` import to run a service (the CLI
#: modules import the service modules inside their commands).
SERVICE_ENTRY_POINTS = (
    "flashgate.cli.main",
    "flashgate.cli.backend",
    "flashgate.cli.bridge",
    "flashgate.backend.service",
    "flashgate.backend.db",
    "flashgate.backend.health",
    "flashgate.bridge",
    "flashgate.bridge.node",
)


def _loaded_after_importing(modules: tuple[str, ...]) -> list[str]:
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in modules)
        + "print('\\n'.join(m for m in sys.modules if m.startswith('flashgate')))"
    )
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()


def test_service_processes_do_not_load_the_nats_server_harness() -> None:
    """The harness starts nats-server processes and registers an atexit hook: tests and
    ``dev up`` need it, a backend or bridge process must not carry it."""
    loaded = _loaded_after_importing(SERVICE_ENTRY_POINTS)
    assert "flashgate.backend.service" in loaded and "flashgate.bridge.node" in loaded
    assert [m for m in loaded if m.split(".")[:2] == ["flashgate", "devcluster"]] == []
