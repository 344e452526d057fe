"""The nats-server version flashgate needs, and reading a version string.

flashgate needs nats-server >= 2.10, because 2.9 silently ignores consumer
``filter_subjects`` and would hand a consumer messages it never asked for. A client
checks the server it connected to (:func:`flashgate.broker.connection.check_server_version`);
the local-cluster harness checks the binary it is about to run
(:mod:`flashgate.devcluster.nats_server`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from flashgate.errors import UnsupportedServer

MIN_SERVER_VERSION: tuple[int, int, int] = (2, 10, 0)
WHY_MIN_VERSION = "2.9 silently ignores consumer filter_subjects"

_VERSION_RE = re.compile(r"v?(\d+)\.(\d+)\.(\d+)")


def parse_version(text: str) -> tuple[int, int, int]:
    """``"nats-server: v2.15.1"``, ``"2.10.0-beta.1"`` -> ``(2, 15, 1)``, ``(2, 10, 0)``."""
    match = _VERSION_RE.search(text)
    if match is None:
        raise UnsupportedServer(f"cannot read a nats-server version from {text[:80]!r}")
    major, minor, patch = (int(part) for part in match.groups())
    return major, minor, patch


def format_version(version: Sequence[int]) -> str:
    return ".".join(str(part) for part in version)


def minimum_version_text() -> str:
    """``">= 2.10"``: the minimum, as said in messages."""
    major, minor, patch = MIN_SERVER_VERSION
    return f">= {major}.{minor}" + (f".{patch}" if patch else "")
