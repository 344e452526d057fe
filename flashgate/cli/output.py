"""What the admin commands print: ``--json`` documents, and errors as JSON under ``--json``.

A command's ``--json`` option (:data:`flashgate.cli.options.json_option`) records itself
in click's ``ctx.meta`` (eagerly, before any
other option is processed), so :func:`flashgate.cli.main.main` knows, whatever goes wrong
after that, to print the error as one JSON document on stdout::

    {"error": {"code": "home_file", "message": "..."}}
"""

from __future__ import annotations

import json
from typing import Any

import click

#: ``ctx.meta`` key: the invoked command was given ``--json``.
JSON_MODE = "flashgate.json"
#: ``ctx.meta`` key: the command printed its own document about the error already.
ERROR_REPORTED = "flashgate.error_reported"


def emit(as_json: bool, document: dict[str, Any], text: str) -> None:
    click.echo(json.dumps(document, sort_keys=True) if as_json else text)


def error_document(code: str, message: str) -> str:
    return json.dumps({"error": {"code": code, "message": message}}, sort_keys=True)


def mark_error_reported() -> None:
    """The running command's own ``--json`` document carries the error already."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.meta[ERROR_REPORTED] = True
