"""Process hardening for a node that holds plaintext in memory.

- no core dumps (RLIMIT_CORE = 0): a crash must not write the vault to disk;
- not dumpable (prctl PR_SET_DUMPABLE 0): other processes of the same user cannot ptrace
  it or read /proc/<pid>/mem;
- memory locked (mlockall MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT) where RLIMIT_MEMLOCK
  allows: pages holding secrets are never swapped out (ONFAULT: locked when touched, so
  reserved-but-unused memory is not made resident).

Each step is attempted on its own; :func:`harden` reports which took effect, and the node
logs that report at start. None of them can fail the start: an operator decides from the
log whether the environment is acceptable.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import resource
import sys
from dataclasses import dataclass

PR_SET_DUMPABLE = 4
MCL_CURRENT = 1
MCL_FUTURE = 2
MCL_ONFAULT = 4  # Linux >= 4.4: lock pages as they are touched, do not prefault them


@dataclass(frozen=True)
class HardeningReport:
    core_dumps_disabled: bool
    not_dumpable: bool
    memory_locked: bool
    notes: tuple[str, ...]

    def as_dict(self) -> dict[str, object]:
        return {
            "core_dumps_disabled": self.core_dumps_disabled,
            "not_dumpable": self.not_dumpable,
            "memory_locked": self.memory_locked,
            "notes": list(self.notes),
        }


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        return ctypes.CDLL(name, use_errno=True)
    except OSError:
        return None


def harden(*, lock_memory: bool = True) -> HardeningReport:
    notes: list[str] = []
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        core = True
    except (ValueError, OSError) as exc:
        core = False
        notes.append(f"RLIMIT_CORE: {exc}")
    libc = _libc()
    dumpable = False
    locked = False
    if libc is None:
        notes.append("prctl/mlockall: not on Linux")
    else:
        if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0:
            dumpable = True
        else:
            notes.append(f"prctl(PR_SET_DUMPABLE): errno {ctypes.get_errno()}")
        if lock_memory:
            if libc.mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT) == 0:
                locked = True
            else:
                soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
                notes.append(f"mlockall: errno {ctypes.get_errno()} (RLIMIT_MEMLOCK {soft})")
        else:
            notes.append("mlockall: disabled by configuration")
    return HardeningReport(
        core_dumps_disabled=core, not_dumpable=dumpable, memory_locked=locked, notes=tuple(notes)
    )
