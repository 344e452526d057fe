"""``flashgate schemas``: export the JSON Schemas of every wire type."""

from __future__ import annotations

from pathlib import Path

import click

from flashgate.errors import ConfigurationError
from flashgate.events.schemas import drift, export
from flashgate.runnable import command


@click.group()
def schemas() -> None:
    """JSON Schemas of the wire types."""


@schemas.command("export")
@click.option("--out", type=click.Path(path_type=Path), default=Path("schemas"), show_default=True)
@click.option("--check", is_flag=True, help="Write nothing; fail if the files are stale.")
def export_cmd(out: Path, check: bool) -> None:
    """Write one JSON Schema (2020-12) per wire type into OUT."""
    if check:
        problems = drift(out)
        if problems:
            raise ConfigurationError(
                f"schemas in {out} are stale ({'; '.join(problems[:5])}); "
                f"run: {command('schemas', 'export', '--out', out)}"
            )
        click.echo(f"schemas in {out} match the wire types", err=True)
        return
    for path in export(out):
        click.echo(f"wrote {path}", err=True)
