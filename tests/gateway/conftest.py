"""The gateway's tests read its log lines (structlog's ``capture_logs``): a logger cached
under a configuration another test left behind would not be captured, so each test here
runs with structlog's defaults (no caching) and puts the configuration back after."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog


@pytest.fixture(autouse=True)
def uncached_structlog() -> Iterator[None]:
    saved = structlog.get_config() if structlog.is_configured() else None
    structlog.reset_defaults()
    try:
        yield
    finally:
        if saved is None:
            structlog.reset_defaults()
        else:
            structlog.configure(**saved)
