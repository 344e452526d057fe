"""Hardening for the command-line processes that hold a key or a share.

``fleet init`` (the ceremony: the primes and every share), ``fleet rotate-key`` (a new
epoch's shares), ``fleet reseal``, ``recover`` and every admin command that opens
``admin.key`` call :func:`harden_process` before they unseal or deal anything; ``flashgate
bridge`` hardens before it unseals its bundle (:mod:`flashgate.cli.bridge`). The steps are
those of :mod:`flashgate.bridge.hardening` (no core dumps, not dumpable, memory locked where
RLIMIT_MEMLOCK allows); none can fail the command. A step that failed is reported on stderr
in one line: always for core dumps and dumpability (they fail only in odd environments),
for memory locking only where the caller asks (the ceremony: an unprivileged user's
RLIMIT_MEMLOCK is usually below a Python process's size, and a line on every admin command
would say nothing new).

Calling it again (rotate-key hardens at its start and again when it opens admin.key) does
the same steps again: each is idempotent.
"""

from __future__ import annotations

import click

from flashgate.bridge import hardening
from flashgate.bridge.hardening import HardeningReport


def harden_process(*, report_memory: bool = False) -> HardeningReport:
    report = hardening.harden(lock_memory=True)
    notes = [n for n in report.notes if report_memory or not n.startswith("mlockall")]
    if notes:
        click.echo(f"warning: process hardening incomplete: {'; '.join(notes)}", err=True)
    return report
