"""The key ceremony's progress display: the safe-prime search, with a live timer on stderr.

Used by ``fleet init``, ``dev demo`` and ``dev up``.
"""

from __future__ import annotations

import sys
import threading
import time

import click

from flashgate.crypto.threshold.dealing import generate_primes


def search_primes(bits: int, *, quiet: bool) -> tuple[int, int]:
    """Run the safe-prime search, showing a live timer on stderr."""
    if quiet:
        return generate_primes(bits)
    result: dict[str, object] = {}

    def work() -> None:
        try:
            result["primes"] = generate_primes(bits)
        except BaseException as exc:  # re-raised in the caller's thread
            result["error"] = exc

    worker = threading.Thread(target=work, daemon=True)
    start = time.monotonic()
    worker.start()
    tty = sys.stderr.isatty()
    label = f"searching for two {bits // 2}-bit safe primes"
    spinner = "|/-\\"
    tick = 0
    last_line = 0.0
    while worker.is_alive():
        worker.join(0.2)
        elapsed = time.monotonic() - start
        if tty:
            click.echo(f"\r{label} {spinner[tick % 4]} {elapsed:5.1f}s", nl=False, err=True)
            tick += 1
        elif elapsed - last_line >= 5 or last_line == 0:
            click.echo(f"{label} ... {elapsed:.0f}s", err=True)
            last_line = max(elapsed, 0.001)
    elapsed = time.monotonic() - start
    click.echo(f"{chr(13) if tty else ''}{label}: done in {elapsed:.1f}s", err=True)
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result["primes"]  # type: ignore[return-value]
