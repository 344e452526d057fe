"""``flashgate backend``: run the backend service; ``flashgate backend migrate``."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import click
import structlog

from flashgate import environment, logs
from flashgate.environment import (
    DB_PASSWORD_ENV,
    DB_URL_ENV,
    FLEET_DIR_ENV,
    HEALTH_FILE_ENV,
    HOME_ENV,
    NATS_PASSWORD_ENV,
    NATS_URL_ENV,
    NATS_USER_ENV,
    STREAM_REPLICAS_ENV,
)

#: SIGTERM to exit: bounded, so supervisors and tests never wait on a stuck close.
STOP_TIMEOUT_S = 10.0
log = structlog.get_logger("flashgate.backend")


def default_home() -> Path:
    home = environment.read(HOME_ENV)
    return Path(home if home is not None else ".flashgate")


def default_db_url() -> str:
    return f"sqlite:///{(default_home() / 'backend.db').resolve()}"


db_option = click.option(
    "--db",
    "db_url",
    envvar=DB_URL_ENV,
    default=default_db_url,
    show_default="sqlite:///$FLASHGATE_HOME/backend.db",
    help="SQLAlchemy URL: sqlite:///FILE or postgresql://USER@HOST/DB.",
)
db_password_option = click.option(
    "--db-password",
    envvar=DB_PASSWORD_ENV,
    default=None,
    help="PostgreSQL password, any characters (put in --db's URL for you); "
    "prefer the environment variable.",
)


def database_url(db_url: str, db_password: str | None) -> str:
    from flashgate.backend import db

    return db.with_password(db_url, db_password)


@click.group(invoke_without_command=True)
@click.option(
    "--nats",
    "nats_url",
    envvar=NATS_URL_ENV,
    default="nats://127.0.0.1:4222",
    show_default=True,
    help="NATS URL(s), comma-separated.",
)
@click.option("--nats-user", envvar=NATS_USER_ENV, default=None)
@click.option("--nats-password", envvar=NATS_PASSWORD_ENV, default=None)
@db_option
@db_password_option
@click.option(
    "--fleet-dir",
    type=click.Path(path_type=Path),
    envvar=FLEET_DIR_ENV,
    default=lambda: default_home() / "fleet",
    show_default="$FLASHGATE_HOME/fleet",
)
@click.option(
    "--stream-replicas",
    type=click.IntRange(1, 5),
    envvar=STREAM_REPLICAS_ENV,
    default=None,
    show_default="min(3, cluster size), raised as the cluster grows, never lowered",
    help="Replicas of the fleet's streams and buckets; set it to apply another count "
    "(also lower). Default: follow the NATS cluster the server reports.",
)
@click.option(
    "--migrate", "run_migrations", is_flag=True, help="Apply database migrations before starting."
)
@click.option(
    "--health-file",
    type=click.Path(path_type=Path),
    envvar=HEALTH_FILE_ENV,
    default=None,
    help="Rewrite this file with the backend's health every few seconds "
    "(read by `flashgate backend health`).",
)
@click.option("--log-level", default="info", show_default=True)
@click.option("--log-json/--log-console", default=None, help="Default: JSON unless a terminal.")
@click.pass_context
def backend(
    ctx: click.Context,
    nats_url: str,
    nats_user: str | None,
    nats_password: str | None,
    db_url: str,
    db_password: str | None,
    fleet_dir: Path,
    stream_replicas: int | None,
    run_migrations: bool,
    health_file: Path | None,
    log_level: str,
    log_json: bool | None,
) -> None:
    """Run the backend: admin commands in, database and outbox, envelopes and events out."""
    if ctx.invoked_subcommand is not None:
        return
    from flashgate.backend.service import Backend, BackendSettings

    logs.configure(level=log_level, json=log_json)
    db_url = database_url(db_url, db_password)
    if run_migrations:
        from flashgate.backend import db

        db.migrate(db_url)
    settings = BackendSettings(
        nats_urls=[u.strip() for u in nats_url.split(",") if u.strip()],
        db_url=db_url,
        fleet_dir=fleet_dir,
        nats_user=nats_user,
        nats_password=nats_password,
        stream_replicas=stream_replicas,
        health_file=health_file,
    )
    asyncio.run(_run(Backend(settings)))


async def _run(service: object) -> None:
    from flashgate.backend.service import Backend

    assert isinstance(service, Backend)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await service.start()
    try:
        await stop.wait()
    finally:
        try:
            await asyncio.wait_for(service.stop(), STOP_TIMEOUT_S)
        except TimeoutError:
            log.error("backend did not stop in time; exiting anyway", seconds=STOP_TIMEOUT_S)


@backend.command("migrate")
@db_option
@db_password_option
def migrate_cmd(db_url: str, db_password: str | None) -> None:
    """Bring the database schema to the latest version."""
    from flashgate.backend import db

    db.migrate(database_url(db_url, db_password))
    click.echo(f"database at revision {db.head_revision()}", err=True)


@backend.command("health")
@click.option(
    "--file",
    "health_file",
    type=click.Path(path_type=Path),
    envvar=HEALTH_FILE_ENV,
    required=True,
    help="The running backend's --health-file.",
)
@click.option(
    "--max-age",
    type=click.FloatRange(min=1),
    default=30.0,
    show_default=True,
    help="Seconds after which an unchanged file means a hung or stopped backend.",
)
def health_cmd(health_file: Path, max_age: float) -> None:
    """Exit 0 if the backend is connected to NATS and the database and its outbox relay
    is not stuck (what its --health-file says); else print why and exit 1."""
    from flashgate.backend import health

    problems = health.read(health_file, max_age=max_age)
    if problems:
        for problem in problems:
            click.echo(f"unhealthy: {problem}", err=True)
        raise SystemExit(1)
    click.echo("healthy")
