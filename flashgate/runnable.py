"""Commands as they can be pasted: every ``flashgate ...`` the project prints goes through here.

``flashgate`` is not on PATH in a fresh clone (it lives in ``.venv/bin``), so a message that
says "run flashgate fleet rotate-key" would fail as printed. :func:`command` gives the
script installed beside the running interpreter (or ``python -m flashgate.cli.main``),
shell-quoted, followed by the arguments, shell-quoted too.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path


def flashgate_command() -> str:
    """The ``flashgate`` command as it can be run from any shell: the script installed
    beside this interpreter, else ``python -m flashgate.cli.main`` (shell-quoted)."""
    python = Path(os.path.abspath(sys.executable))
    script = python.parent / "flashgate"
    if script.is_file() and os.access(script, os.X_OK):
        return shlex.quote(str(script))
    return f"{shlex.quote(str(python))} -m flashgate.cli.main"


def command(*args: str | os.PathLike[str]) -> str:
    """``flashgate ARGS...`` as a line a shell runs as is."""
    return " ".join([flashgate_command(), *(shlex.quote(str(a)) for a in args)])
