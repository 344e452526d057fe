"""Child processes that do not outlive their parent (``flashgate dev up``).

:func:`die_with_parent` returns a ``preexec_fn`` for :class:`subprocess.Popen`: in the
forked child, before ``exec``, it asks Linux to send the child SIGTERM when the parent
dies (``prctl(PR_SET_PDEATHSIG, SIGTERM)``; the setting survives ``exec``), then checks
that the parent is still the one that forked it: if the parent died between ``fork`` and
``prctl``, the signal would never come, so the child exits at once.

The death signal follows the *thread* that forked the child: start children from the
thread that lives as long as the parent (the main thread). On systems without ``prctl``
there is no such signal and :func:`die_with_parent` returns None.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` giving the child ``sig`` when this process dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    # Resolved here, in the parent: the child only calls a function already loaded.
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        if prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            os._exit(126)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec
