"""The one harness of the bench scripts (``crypto``, ``events``, ``backend``, ``bridge``,
``e2e``): progress lines, machine information, timing loops, latency statistics, goals,
tables (with ``rich``, as the CLI draws its own), JSON output, the common options and a
profile of the event loop thread (with ``pyinstrument``). Not a benchmark itself.

Chosen not to use: ``pyperf`` for the micro-benchmarks. It runs every benchmark in worker
processes it spawns from its own command line and prints its own report, while these
scripts measure functions that need fixtures costing seconds (a dealing, a fleet key),
interleave the calls of the functions they compare so that machine noise hits them alike
(``time_interleaved``), and print one table with goals. ``py-spy`` samples from outside
(ptrace, often refused in containers); ``pyinstrument`` runs in the process and tells the
asyncio tasks apart.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import io
import json
import math
import os
import platform
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import rich.box
from nats.js.kv import KeyValue
from rich.console import Console
from rich.table import Table

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


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def machine_info(packages: Sequence[str] = ()) -> dict[str, Any]:
    """CPU, platform, Python and the versions of ``packages`` (distribution names)."""
    return {
        "cpu_count": os.cpu_count(),
        "usable_cores": usable_cores(),
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


# --------------------------------------------------------------------------- options


def arg_parser(doc: str | None, quick_help: str) -> argparse.ArgumentParser:
    """The options every bench script has: ``--quick`` (a short run), ``--smoke`` (the
    smallest run through every measurement: tests/test_bench.py runs it; its numbers mean
    nothing) and ``--json``."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help=quick_help)
    size.add_argument(
        "--smoke", action="store_true", help="every measurement once, tiny (for tests)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def mode_of(args: argparse.Namespace) -> str:
    """Which mode: "smoke", "quick" or "full"."""
    return "smoke" if args.smoke else "quick" if args.quick else "full"


# --------------------------------------------------------------------------- timing loops


def time_interleaved(
    fns: Mapping[str, Callable[[int], object]], calls: int, warmup: int = 2
) -> dict[str, list[float]]:
    """Per-call seconds of each function; call i of every function runs before call i+1,
    so that a noisy neighbour slows them alike. No garbage collection while timing."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(warmup):
        for fn in fns.values():
            fn(i)
    with gc_paused():
        for i in range(calls):
            for name, fn in fns.items():
                start = time.perf_counter()
                fn(i)
                samples[name].append(time.perf_counter() - start)
    return samples


def time_calls(fn: Callable[[int], object], calls: int, warmup: int = 2) -> list[float]:
    """Per-call seconds of ``fn(i)`` for i in 0..calls-1."""
    return time_interleaved({"fn": fn}, calls, warmup)["fn"]


def time_rounds(
    fn: Callable[[], object], rounds: int, round_time: float
) -> tuple[list[float], int]:
    """Seconds per call of ``fn`` in each of ``rounds`` rounds of about ``round_time``
    (the calls per round are calibrated first, as :mod:`timeit` does); and that count."""
    fn()  # warm-up (and any lazy initialization)
    calls, elapsed = 1, 0.0
    while elapsed < round_time / 4 and calls < 10_000_000:  # calibrate
        calls *= 2
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        elapsed = time.perf_counter() - start
    calls = max(1, round(calls * round_time / max(elapsed, 1e-9)))
    samples: list[float] = []
    with gc_paused():
        for _ in range(rounds):
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            samples.append((time.perf_counter() - start) / calls)
    return samples, calls


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


def p90(samples: Sequence[float]) -> float | None:
    """The 90th percentile, or None under two samples."""
    return percentile(samples, 90) if len(samples) >= 2 else None


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
    """A table as lines (drawn by ``rich``): a header, a rule, the rows. Columns in
    ``right`` are right-aligned (numbers); a blank line separates rows whose ``groups``
    entry changes. Never wrapped; bold headers only when stdout is a terminal."""
    on_terminal = sys.stdout.isatty()
    grid = Table(box=rich.box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1))
    for i, name in enumerate(header):
        grid.add_column(
            name,
            justify="right" if i in right else "left",
            no_wrap=True,
            header_style="bold" if on_terminal else "",
        )
    for index, cells in enumerate(rows):
        last_of_group = (
            groups is not None and index + 1 < len(rows) and groups[index + 1] != groups[index]
        )
        grid.add_row(*cells, end_section=last_of_group)
    out = io.StringIO()
    Console(
        file=out,
        force_terminal=on_terminal,
        width=10_000,  # the table's own width: a pipe gets whole lines
        markup=False,
        highlight=False,
        emoji=False,
    ).print(grid)
    return [line.rstrip() for line in out.getvalue().splitlines()]


def print_lines(lines: Sequence[str]) -> None:
    for line in lines:
        print(line)


def goal_summary(goals: Sequence[Goal]) -> str:
    passed = sum(goal.passed for goal in goals)
    return f"goals: {passed} PASS, {len(goals) - passed} MISS"


def print_json(document: Mapping[str, Any]) -> None:
    """The results as JSON on stdout (NaN and infinity as null; other types as text)."""
    print(json.dumps(json_safe(document), indent=2, default=str))


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


# --------------------------------------------------------------------------- loop profile


class LoopProfile:
    """Where the event loop thread's time goes, sampled by ``pyinstrument`` (a diagnostic:
    it slows what it observes). Time is charged to the asyncio task whose step the loop was
    running (the coroutine a ``Handle._run`` called; named through ``task_names``, by
    qualified name) and to the component of the innermost Python frame (``components``:
    path markers and names, first match wins); a C call such as a socket write or an
    Ed25519 verify is charged to the Python frame that made it. Idle time shows as the loop
    waiting in ``select``."""

    def __init__(
        self,
        task_names: Mapping[str, str],
        components: Sequence[tuple[str, str]],
        interval: float = 0.0005,
    ) -> None:
        from pyinstrument import Profiler

        self.task_names = task_names
        self.components = components
        self._profiler = Profiler(interval=interval, async_mode="disabled")

    def __enter__(self) -> LoopProfile:
        self._profiler.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._profiler.stop()

    def _task(self, frame: Any) -> str:
        name = _qualname(frame)
        return self.task_names.get(name, name)

    def _component(self, frame: Any) -> str:
        path = str(frame.file_path or "")
        for marker, name in self.components:
            if marker in path:
                if name == "flashgate":  # which part of flashgate: the module
                    return f"flashgate.{Path(path).stem} {frame.function}"
                return name
        return f"other ({Path(path).name} {frame.function})"

    def summary(self, top: int = 12) -> dict[str, Any]:
        session = self._profiler.last_session
        if session is None:
            return {"samples": 0}
        by_task: Counter[str] = Counter()
        by_component: Counter[str] = Counter()
        by_pair: Counter[str] = Counter()
        by_leaf: Counter[str] = Counter()

        def real(frame: Any) -> bool:
            path = frame.file_path
            return bool(path) and not str(path).startswith("<") and frame.function != "[self]"

        def walk(frame: Any, task: str, inner: Any, caller: Any) -> None:
            if real(frame):
                inner, caller = frame, inner
            if not frame.children:
                where = self._component(inner) if inner is not None else "-"
                by_task[task] += frame.time
                by_component[where] += frame.time
                by_pair[f"{task} / {where}"] += frame.time
                label = _frame_label(inner) if inner is not None else "-"
                by_leaf[f"{label} <- {_frame_label(caller) if caller else '-'}"] += frame.time
                return
            parent_is_loop = frame.function == "_run" and str(frame.file_path).endswith(
                "asyncio/events.py"
            )
            for child in frame.children:
                if parent_is_loop:  # a callback or a task step; [self]: the loop's own code
                    named = self._task(child) if real(child) else "loop callbacks (no task)"
                    walk(child, named, inner, caller)
                else:
                    walk(child, task, inner, caller)

        root = session.root_frame()
        if root is not None:
            walk(root, "loop (outside any callback)", None, None)
        total = sum(by_task.values()) or 1.0

        def share(counter: Counter[str]) -> dict[str, float]:
            return {k: round(100 * v / total, 1) for k, v in counter.most_common(top)}

        return {
            "samples": session.sample_count,
            "process CPU s / wall s": f"{session.cpu_time:.2f} / {session.duration:.2f}",
            "by task, % of the loop thread's time": share(by_task),
            "by component (innermost frame), %": share(by_component),
            "task / component, %": share(by_pair),
            "innermost frames, %": share(by_leaf),
        }


def _qualname(frame: Any) -> str:
    owner = getattr(frame, "class_name", None)
    return f"{owner}.{frame.function}" if owner else str(frame.function)


def _frame_label(frame: Any) -> str:
    return f"{_qualname(frame)} ({Path(str(frame.file_path)).name})"
