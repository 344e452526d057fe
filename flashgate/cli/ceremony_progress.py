"""The key ceremony's progress display: the safe-prime search, with a live timer on stderr.

Used by ``fleet init``, ``dev demo`` and ``dev up``.
"""

from __future__ import annotations

import threading
import time

import click
import rich.progress

from flashgate.cli.terminal import stderr_console
from flashgate.fleet import prime_search


def search_primes(bits: int, *, quiet: bool) -> tuple[int, int]:
    """Run the safe-prime search (two processes), showing a live timer on stderr."""
    if quiet:
        return prime_search.search_primes(bits)
    result: dict[str, object] = {}

    def work() -> None:
        try:
            result["primes"] = prime_search.search_primes(bits)
        except BaseException as exc:  # re-raised in the caller's thread
            result["error"] = exc

    worker = threading.Thread(target=work, daemon=True)
    start = time.monotonic()
    worker.start()
    label = f"searching for two {bits // 2}-bit safe primes"
    console = stderr_console()
    if console.is_terminal:  # a spinner and a live timer, erased when done
        with rich.progress.Progress(
            rich.progress.SpinnerColumn(),
            rich.progress.TextColumn("{task.description}"),
            rich.progress.TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as progress:
            progress.add_task(label, total=None)
            while worker.is_alive():
                worker.join(0.2)
    else:  # a line every 5 s
        last_line = 0.0
        while worker.is_alive():
            worker.join(0.2)
            elapsed = time.monotonic() - start
            if elapsed - last_line >= 5 or last_line == 0:
                click.echo(f"{label} ... {elapsed:.0f}s", err=True)
                last_line = max(elapsed, 0.001)
    elapsed = time.monotonic() - start
    click.echo(f"{label}: done in {elapsed:.1f}s", err=True)
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result["primes"]  # type: ignore[return-value]
