"""Logging setup for the services: structlog, JSON lines or a console view, to stderr.

Log calls pass identifiers (fleet, secret key, version, command id, node id, reason codes)
and never values: no plaintext, partial decryption, share, passphrase or envelope body.
"""

from __future__ import annotations

import logging
import sys

import structlog


def configure(*, level: str = "info", json: bool | None = None) -> None:
    """Route structlog (and stdlib logging) to stderr. ``json`` defaults to "not a tty"."""
    as_json = (not sys.stderr.isatty()) if json is None else json
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer()
    )
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    logging.basicConfig(
        stream=sys.stderr,
        level=max(numeric, logging.WARNING),
        format="%(name)s %(levelname)s %(message)s",
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
