"""What ``fleet rotate-key`` leaves on a terminal: every line whole, no fragment of a
progress bar or spinner (the output is played on pyte's terminal emulator, as a terminal
would show it)."""

from __future__ import annotations

import asyncio
import io
import sys

import pyte
import pytest

from flashgate.cli.rotate_key import Display, Progress, _progress
from flashgate.cli.session import spinner
from flashgate.events.queries import RotationInfo

COLUMNS, ROWS = 100, 24


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def screen_lines(output: str) -> list[str]:
    """The screen's non-blank lines after ``output`` (LF written as CR LF, as a tty does)."""
    screen = pyte.Screen(COLUMNS, ROWS)
    pyte.Stream(screen).feed(output.replace("\n", "\r\n"))
    return [line.rstrip() for line in screen.display if line.strip()]


def on_terminal(monkeypatch: pytest.MonkeyPatch) -> FakeTerminal:
    """stderr is a terminal (patched in the test's body: pytest's own capture replaces
    sys.stderr when the call phase starts, after fixtures)."""
    fake = FakeTerminal()
    monkeypatch.setenv("COLUMNS", str(COLUMNS))
    monkeypatch.setattr(sys, "stderr", fake)
    return fake


async def test_spinner_leaves_nothing_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = on_terminal(monkeypatch)
    terminal.write("before\n")
    with spinner("waiting for the backend", True):
        await asyncio.sleep(0.25)  # a few frames
    assert "waiting for the backend" in terminal.getvalue()  # it was drawn
    terminal.write("next line\n")
    assert screen_lines(terminal.getvalue()) == ["before", "next line"]


async def test_rotation_display_leaves_whole_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = on_terminal(monkeypatch)
    display = Display(quiet=False)
    display.bar(Progress(from_epoch=1, to_epoch=2, total=3, remaining=3))
    display.note("waiting: 1 of the new epoch's 3 nodes online; 2 are needed to re-wrap")
    display.bar(Progress(from_epoch=1, to_epoch=2, total=3, remaining=0))
    with spinner("fleet.rotation.finish: waiting for the backend", True):
        await asyncio.sleep(0.25)
    display.close()
    display.note("epoch 1 retired; epoch 2 is current")
    display.close()
    assert "fleet.rotation.finish" in terminal.getvalue()  # the spinner was drawn
    note, bar, retired = screen_lines(terminal.getvalue())
    assert note == "waiting: 1 of the new epoch's 3 nodes online; 2 are needed to re-wrap"
    assert bar.startswith("re-wrapping epoch 1 -> 2 ") and bar.endswith(" 3/3"), bar
    assert retired == "epoch 1 retired; epoch 2 is current"


def test_no_escape_codes_off_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    plain = io.StringIO()
    monkeypatch.setattr(sys, "stderr", plain)
    display = Display(quiet=False)
    display.bar(Progress(from_epoch=1, to_epoch=2, total=3, remaining=0))
    display.note("done")
    display.close()
    assert "\x1b" not in plain.getvalue() and "\r" not in plain.getvalue()


def test_progress_counts_rewraps_only() -> None:
    """A secret written under the new epoch during the rotation is no re-wrap: it is in
    neither the bar's done nor its total."""
    info = RotationInfo(epoch=1, rotating_to=2, envelopes={1: 1, 2: 2}, rewrapped=1)
    progress = _progress(info)
    assert (progress.done, progress.remaining, progress.total) == (1, 1, 2)
