"""Crash points for failure tests (off unless ``FLASHGATE_FAILPOINTS`` names them).

``FLASHGATE_FAILPOINTS=backend.after_commit`` makes the backend process exit abruptly
(``os._exit``, no cleanup, like a power cut) right after it commits a command and before
it relays the outbox. Tests use it to prove that a crash there loses nothing and
duplicates nothing.

``name=stop@N`` instead stops the process (``SIGSTOP``) at the N-th hit, so that a test
can SIGKILL it at a known point: in the middle of a batch of commands it fetched and has
not acknowledged. ``name=raise@N`` raises :class:`FailpointError` there (as a database
that fails once would), ``name@N`` exits at the N-th hit. Points: ``backend.after_commit``,
``backend.before_apply``, ``ceremony.dealt`` (``fleet init``, every share in memory).
Unset in production; reading it costs one dict lookup.
"""

from __future__ import annotations

import os
import signal
import sys

from flashgate import environment
from flashgate.environment import FAILPOINTS_ENV
from flashgate.errors import FailpointError

EXIT_CODE = 86


def _parse(spec: str) -> dict[str, tuple[str, int]]:
    """``name[=exit|stop][@N]`` entries, comma-separated: name -> (action, hit number)."""
    points: dict[str, tuple[str, int]] = {}
    for entry in filter(None, (part.strip() for part in spec.split(","))):
        entry, _, at = entry.partition("@")
        name, _, action = entry.partition("=")
        points[name] = (action or "exit", int(at) if at else 1)
    return points


_ACTIVE = _parse(environment.read(FAILPOINTS_ENV) or "")
_HITS: dict[str, int] = {}


def hit(name: str) -> None:
    point = _ACTIVE.get(name)
    if point is None:
        return
    action, at = point
    _HITS[name] = count = _HITS.get(name, 0) + 1
    if count != at:
        return
    sys.stderr.write(f"failpoint {name}: {action} at hit {count}\n")
    sys.stderr.flush()
    if action == "stop":
        os.kill(os.getpid(), signal.SIGSTOP)
        return
    if action == "raise":
        raise FailpointError(f"failpoint {name}")
    os._exit(EXIT_CODE)
