"""Crash points for failure tests (off unless ``FLASHGATE_FAILPOINTS`` names them).

``FLASHGATE_FAILPOINTS=backend.after_commit`` makes the backend process exit abruptly
(``os._exit``, no cleanup, like a power cut) right after it commits a command and before
it relays the outbox. Tests use it to prove that a crash there loses nothing and
duplicates nothing. Unset in production; reading it costs one dict lookup.
"""

from __future__ import annotations

import os
import sys

ENV = "FLASHGATE_FAILPOINTS"
EXIT_CODE = 86
_ACTIVE = frozenset(filter(None, os.environ.get(ENV, "").split(",")))


def hit(name: str) -> None:
    if name in _ACTIVE:
        sys.stderr.write(f"failpoint {name}: exiting\n")
        sys.stderr.flush()
        os._exit(EXIT_CODE)
