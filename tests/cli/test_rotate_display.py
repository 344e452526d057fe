"""What ``fleet rotate-key`` leaves on a terminal: every line whole, no fragment of a
progress bar or spinner (rendered by a small terminal model: CR, LF, ANSI erase-line)."""

from __future__ import annotations

import asyncio
import io
import sys

import pytest

from flashgate.cli.rotate_key import Display, Progress, _progress
from flashgate.cli.session import spinner
from flashgate.events.queries import RotationInfo

ERASE_LINE = "\x1b[2K"


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def render(output: str) -> list[str]:
    """The screen's lines after ``output``: CR to column 0, LF to a new line, ESC[2K
    erases the line (the cursor stays), other characters overwrite at the cursor."""
    assert "\x1b" not in output.replace(ERASE_LINE, ""), "an escape the model does not know"
    lines, col, i = [""], 0, 0
    while i < len(output):
        if output.startswith(ERASE_LINE, i):
            lines[-1] = ""
            i += len(ERASE_LINE)
            continue
        char = output[i]
        i += 1
        if char == "\r":
            col = 0
        elif char == "\n":
            lines.append("")
            col = 0
        else:
            line = lines[-1].ljust(col)
            lines[-1] = line[:col] + char + line[col + 1 :]
            col += 1
    return [line.rstrip() for line in lines]


def on_terminal(monkeypatch: pytest.MonkeyPatch) -> FakeTerminal:
    """stderr is a terminal (patched in the test's body: pytest's own capture replaces
    sys.stderr when the call phase starts, after fixtures)."""
    fake = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", fake)
    return fake


async def test_spinner_erases_its_whole_line(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = on_terminal(monkeypatch)
    terminal.write("\r" + "re-wrapping epoch 1 -> 2 [" + "#" * 30 + "] 1000/1000")
    with spinner("waiting", True):
        await asyncio.sleep(0.25)  # a few frames
    terminal.write("next line\n")
    assert render(terminal.getvalue()) == ["next line", ""]


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
    bar = "re-wrapping epoch 1 -> 2 [" + "#" * 30 + "] 3/3"
    assert render(terminal.getvalue()) == [
        "waiting: 1 of the new epoch's 3 nodes online; 2 are needed to re-wrap",
        bar,
        "epoch 1 retired; epoch 2 is current",
        "",
    ]


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
