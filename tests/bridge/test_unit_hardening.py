"""Unit tests of process hardening (flashgate/bridge/hardening.py).

harden() changes the whole process (rlimits, dumpable flag, locked memory), so it runs in
a child interpreter that prints its report and what the kernel says afterwards as JSON.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from flashgate.bridge import hardening
from flashgate.bridge.hardening import HardeningReport, harden

ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import ctypes, json, resource, sys
from flashgate.bridge.hardening import harden

report = harden(lock_memory={lock_memory})
libc = ctypes.CDLL(None, use_errno=True)
PR_GET_DUMPABLE = 3
vm_locked_kb = None
with open("/proc/self/status") as status:
    for line in status:
        if line.startswith("VmLck:"):
            vm_locked_kb = int(line.split()[1])
json.dump(
    {{
        "report": report.as_dict(),
        "rlimit_core": list(resource.getrlimit(resource.RLIMIT_CORE)),
        "dumpable": libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0),
        "vm_locked_kb": vm_locked_kb,
    }},
    sys.stdout,
)
"""

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")


def harden_in_child(*, lock_memory: bool) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", CHILD.format(lock_memory=lock_memory)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.mark.processes
@linux_only
def test_harden_disables_core_dumps_and_dumpability() -> None:
    before = resource.getrlimit(resource.RLIMIT_CORE)
    child = harden_in_child(lock_memory=False)
    report = child["report"]
    assert report["core_dumps_disabled"] is True
    assert child["rlimit_core"] == [0, 0]
    assert report["not_dumpable"] is True
    assert child["dumpable"] == 0
    assert resource.getrlimit(resource.RLIMIT_CORE) == before  # this process untouched


@pytest.mark.processes
@linux_only
def test_harden_without_memory_locking_says_so() -> None:
    report = harden_in_child(lock_memory=False)["report"]
    assert report["memory_locked"] is False
    assert "mlockall: disabled by configuration" in report["notes"]


@pytest.mark.processes
@linux_only
def test_memory_locking_is_reported_as_it_happened() -> None:
    """mlockall needs CAP_IPC_LOCK or a large RLIMIT_MEMLOCK: either it took effect (and
    the kernel shows locked pages) or the report carries a note saying why not."""
    child = harden_in_child(lock_memory=True)
    report = child["report"]
    if report["memory_locked"]:
        assert child["vm_locked_kb"] is not None and child["vm_locked_kb"] > 0
        assert not any(note.startswith("mlockall") for note in report["notes"])
    else:
        assert any(note.startswith("mlockall: errno") for note in report["notes"])
    assert report["core_dumps_disabled"] is True  # independent of the memory lock


def test_report_as_dict_is_json_ready() -> None:
    report = HardeningReport(
        core_dumps_disabled=True, not_dumpable=False, memory_locked=False, notes=("a", "b")
    )
    assert json.loads(json.dumps(report.as_dict())) == {
        "core_dumps_disabled": True,
        "not_dumpable": False,
        "memory_locked": False,
        "notes": ["a", "b"],
    }


@dataclass
class FakeLibc:
    """prctl/mlockall that fail (or succeed) as told, so harden() can run in this process
    without changing it."""

    prctl_result: int
    mlockall_result: int
    calls: list[tuple[str, tuple[int, ...]]] = field(default_factory=list)

    def prctl(self, *args: int) -> int:
        self.calls.append(("prctl", args))
        return self.prctl_result

    def mlockall(self, *args: int) -> int:
        self.calls.append(("mlockall", args))
        return self.mlockall_result


def refuse_setrlimit(*_: object) -> None:
    raise ValueError("not allowed")


def test_every_step_that_fails_is_reported_and_none_raises(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    libc = FakeLibc(prctl_result=-1, mlockall_result=-1)
    monkeypatch.setattr(resource, "setrlimit", refuse_setrlimit)
    monkeypatch.setattr(hardening, "_libc", lambda: libc)
    report = harden(lock_memory=True)
    assert (report.core_dumps_disabled, report.not_dumpable, report.memory_locked) == (
        False,
        False,
        False,
    )
    assert [note.split(":")[0] for note in report.notes] == [
        "RLIMIT_CORE",
        "prctl(PR_SET_DUMPABLE)",
        "mlockall",
    ]
    flags = hardening.MCL_CURRENT | hardening.MCL_FUTURE | hardening.MCL_ONFAULT
    assert libc.calls == [
        ("prctl", (hardening.PR_SET_DUMPABLE, 0, 0, 0, 0)),
        ("mlockall", (flags,)),
    ]


def test_every_step_that_succeeds_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    limits: list[tuple[int, tuple[int, int]]] = []
    monkeypatch.setattr(resource, "setrlimit", lambda which, value: limits.append((which, value)))
    monkeypatch.setattr(hardening, "_libc", lambda: FakeLibc(prctl_result=0, mlockall_result=0))
    report = harden(lock_memory=True)
    assert report == HardeningReport(
        core_dumps_disabled=True, not_dumpable=True, memory_locked=True, notes=()
    )
    assert limits == [(resource.RLIMIT_CORE, (0, 0))]


def test_without_libc_only_the_rlimit_is_attempted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resource, "setrlimit", lambda *_: None)
    monkeypatch.setattr(hardening, "_libc", lambda: None)
    report = harden()
    assert report.core_dumps_disabled is True
    assert (report.not_dumpable, report.memory_locked) == (False, False)
    assert report.notes == ("prctl/mlockall: not on Linux",)
