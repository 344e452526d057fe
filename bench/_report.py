"""Helpers shared by the bench scripts (``events.py``, ``backend.py``, ``bridge.py``):
progress lines, machine information, latency statistics, goals and aligned plain-text tables.

Not a benchmark itself; ``bench/crypto.py`` predates it and keeps its own copies.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from nats.js.kv import KeyValue

# --------------------------------------------------------------------------- progress


def log(message: str) -> None:
    """A progress line on stderr (stdout carries only the results)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@contextmanager
def gc_paused() -> Iterator[None]:
    """No garbage collection inside a timed loop (as :mod:`timeit` does)."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# --------------------------------------------------------------------------- machine


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_info(packages: Sequence[str] = ()) -> dict[str, Any]:
    """CPU, platform, Python and the versions of ``packages`` (distribution names)."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 1
    return {
        "cpu_count": os.cpu_count(),
        "usable_cores": usable,
        "cpu_model": cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "packages": {name: package_version(name) for name in packages},
    }


def header_lines(title: str, info: Mapping[str, Any]) -> list[str]:
    packages = ", ".join(f"{name} {version}" for name, version in info["packages"].items())
    return [
        title,
        f"machine: {info['cpu_count']} CPUs ({info['usable_cores']} usable), "
        f"{info['cpu_model']}, {info['platform']}"
        + (f", load average {load:.2f} at start" if (load := info.get("load_average")) else ""),
        f"python {info['python']}" + (f", {packages}" if packages else ""),
    ]


# --------------------------------------------------------------------------- statistics


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation between closest ranks."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True, slots=True)
class Latency:
    """Latency percentiles in seconds over ``count`` samples."""

    p50: float
    p90: float
    p99: float
    max: float
    count: int

    @classmethod
    def of(cls, samples: Sequence[float]) -> Latency:
        return cls(
            p50=percentile(samples, 50),
            p90=percentile(samples, 90),
            p99=percentile(samples, 99),
            max=max(samples) if samples else math.nan,
            count=len(samples),
        )


@dataclass(frozen=True, slots=True)
class Goal:
    text: str
    passed: bool

    @property
    def result(self) -> str:
        return "PASS" if self.passed else "MISS"


def at_most(limit: float, text: str) -> Callable[[float], Goal]:
    return lambda value: Goal(text, value <= limit)


def below(limit: float, text: str) -> Callable[[float], Goal]:
    return lambda value: Goal(text, value < limit)


def at_least(limit: float, text: str) -> Callable[[float], Goal]:
    return lambda value: Goal(text, value >= limit)


# --------------------------------------------------------------------------- formatting


def fmt_ms(seconds: float | None) -> str:
    if seconds is None or math.isnan(seconds):
        return "-"
    ms = seconds * 1e3
    return f"{ms:.2f}" if ms < 10 else f"{ms:.1f}"


def fmt_us(seconds: float | None) -> str:
    if seconds is None or math.isnan(seconds):
        return "-"
    us = seconds * 1e6
    return f"{us:.2f}" if us < 10 else f"{us:.1f}"


def fmt_rate(per_second: float | None) -> str:
    if per_second is None or math.isnan(per_second):
        return "-"
    return f"{per_second:,.0f}" if per_second >= 100 else f"{per_second:.1f}"


def fmt_int(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def goal_cells(goal: Goal | None) -> tuple[str, str]:
    return (goal.text, goal.result) if goal else ("", "")


def render_table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    right: frozenset[int] = frozenset(),
    groups: Sequence[object] | None = None,
) -> list[str]:
    """Aligned plain-text lines: a header, a rule, the rows. Columns in ``right`` are
    right-aligned (numbers); a blank line separates rows whose ``groups`` entry changes."""
    widths = [max(len(line[i]) for line in (header, *rows)) for i in range(len(header))]

    def render(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    lines = [render(header), render(["-" * w for w in widths])]
    previous: object = None
    for index, cells in enumerate(rows):
        group = groups[index] if groups is not None else None
        if index and group != previous:
            lines.append("")
        previous = group
        lines.append(render(cells))
    return lines


def goal_summary(goals: Sequence[Goal]) -> str:
    passed = sum(goal.passed for goal in goals)
    return f"goals: {passed} PASS, {len(goals) - passed} MISS"


def json_safe(value: Any) -> Any:
    """NaN and infinity become null (JSON has no such numbers)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


# --------------------------------------------------------------------------- KV arrivals


class Arrivals:
    """Reads a KV watcher and records when each key is first seen (``events``, ``backend``)."""

    def __init__(self) -> None:
        self.seen: dict[str, float] = {}
        self._waiting: set[str] = set()
        self._all_seen = asyncio.Event()

    async def follow(self, kv: KeyValue) -> None:
        watcher = await kv.watchall()
        try:
            async for entry in watcher:
                now = time.perf_counter()
                if entry is None:  # end of the initial values
                    continue
                self.seen.setdefault(entry.key, now)
                if self._waiting:
                    self._waiting.discard(entry.key)
                    if not self._waiting:
                        self._all_seen.set()
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]

    def expect(self, keys: Sequence[str]) -> None:
        self._waiting = {k for k in keys if k not in self.seen}
        self._all_seen.clear()
        if not self._waiting:
            self._all_seen.set()

    async def wait(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._all_seen.wait(), timeout)
        except TimeoutError:
            return False
        return True
