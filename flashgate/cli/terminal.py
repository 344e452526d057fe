"""What the CLI draws on a terminal: spinners, progress bars and tables, with ``rich``.

One :class:`rich.console.Console` per stderr stream, so a spinner started while a progress bar
is live nests under it (rich draws both and erases the spinner's line when it ends) instead of
two displays overwriting each other's line. A stream that is not a terminal (a pipe, a file,
the tests) gets no drawing at all: the callers print plain lines there, and tables are plain
columns without escape codes.
"""

from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import Iterator, Sequence
from typing import IO

from rich.console import Console
from rich.table import Table

_consoles: dict[int, tuple[IO[str], Console]] = {}


def _unproxied(stream: IO[str]) -> IO[str]:
    # While a rich display is live, sys.stderr is rich's proxy of the real stream.
    real: IO[str] = getattr(stream, "rich_proxied_file", stream)
    return real


def stderr_console() -> Console:
    """The console that draws on the current ``sys.stderr`` (a terminal or not)."""
    stream = _unproxied(sys.stderr)
    cached = _consoles.get(id(stream))
    if cached is not None and cached[0] is stream:
        return cached[1]
    console = Console(
        file=stream,
        force_terminal=stream.isatty(),  # a terminal exactly when isatty(), whatever the env
        markup=False,  # our text is never rich markup ("[...]" is printed as it is)
        highlight=False,
        emoji=False,
    )
    _consoles.clear()  # only the current stream's console is ever needed again
    _consoles[id(stream)] = (stream, console)
    return console


@contextlib.contextmanager
def spinner(text: str, enabled: bool) -> Iterator[None]:
    """A spinner on stderr while the block runs (only on a terminal). When it ends its line
    is erased whole: nothing of it, or of what it was drawn over, is left behind."""
    console = stderr_console()
    if not enabled or not console.is_terminal:
        yield
        return
    with console.status(text):
        yield


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], right: set[int]) -> str:
    """Columns under ``headers`` (those numbered in ``right`` right-aligned), as text:
    separated by spaces, no borders, never wrapped; bold headers on a terminal's stdout."""
    grid = Table(box=None, pad_edge=False, show_edge=False, padding=(0, 1, 0, 0))
    for i, header in enumerate(headers):
        grid.add_column(
            header,
            justify="right" if i in right else "left",
            no_wrap=True,
            header_style="bold" if sys.stdout.isatty() else "",
        )
    for row in rows:
        grid.add_row(*(str(cell) for cell in row))
    out = io.StringIO()
    Console(
        file=out,
        force_terminal=sys.stdout.isatty(),
        width=10_000,  # the table's own width; a pipe gets whole lines
        markup=False,
        highlight=False,
        emoji=False,
    ).print(grid)
    return "\n".join(line.rstrip() for line in out.getvalue().splitlines())
