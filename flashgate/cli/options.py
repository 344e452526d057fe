"""Options shared by the admin commands: ``--home`` and ``--json``."""

from __future__ import annotations

from pathlib import Path

import click

from flashgate.cli.output import JSON_MODE

home_option = click.option(
    "--home",
    type=click.Path(path_type=Path),
    default=None,
    help="Admin home (default $FLASHGATE_HOME or ./.flashgate).",
)


def _record_json(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    if value:
        ctx.meta[JSON_MODE] = True
    return value


json_option = click.option(
    "--json",
    "as_json",
    is_flag=True,
    is_eager=True,  # recorded before other options can fail
    callback=_record_json,
    help="Machine-readable output (errors too: one JSON document on stdout).",
)
