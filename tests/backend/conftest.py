"""Backend fixtures: a fleet directory per test, SQLite and PostgreSQL databases, an
in-process backend, and an admin client that signs commands and waits for outcomes
(the helpers themselves live in :mod:`tests.support`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from flashgate.backend import db
from flashgate.backend.service import Backend, BackendSettings
from tests.support.admin_client import AdminClient
from tests.support.databases import (
    PG_ADMIN_URL,
    PG_AVAILABLE,
    PG_SKIP_REASON,
    postgres_database,
    sqlite_url,
)
from tests.support.fleets import FleetFixture, make_fleet

#: Tests of this package that start processes of their own (nats-server, ``flashgate backend
#: health``) without the nats fixtures, by module and function: tier ``processes``
#: (tests/support/tiers.py). Marked here so that their modules stay as they are.
_START_PROCESSES = {
    ("test_health.py", "test_healthy_while_running_unhealthy_when_nats_goes_or_the_relay_sticks"),
    ("test_health.py", "test_a_stale_or_unhealthy_file_is_unhealthy"),
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        name = getattr(item, "originalname", item.name)
        if (item.path.name, name) in _START_PROCESSES:
            item.add_marker(pytest.mark.processes)


def pytest_report_header(config: pytest.Config) -> str:
    return ("postgresql: available at " + PG_ADMIN_URL) if PG_AVAILABLE else PG_SKIP_REASON


@pytest.fixture
def fleet(tmp_path: Path) -> FleetFixture:
    return make_fleet(tmp_path / "fleets")


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each test that takes it runs on SQLite and on PostgreSQL (skipped, and said so,
    when no PostgreSQL is reachable)."""
    if request.param == "sqlite":
        url = sqlite_url(tmp_path / "backend.db")
        db.migrate(url)
        yield url
        return
    if not PG_AVAILABLE:
        pytest.skip(PG_SKIP_REASON)
    with postgres_database() as url:
        db.migrate(url)
        yield url


@pytest.fixture
def pg_url() -> Iterator[str]:
    if not PG_AVAILABLE:
        pytest.skip(PG_SKIP_REASON)
    with postgres_database() as url:
        db.migrate(url)
        yield url


@pytest.fixture
async def backend(nats_url: str, db_url: str, fleet: FleetFixture) -> AsyncIterator[Backend]:
    service = Backend(BackendSettings(nats_urls=[nats_url], db_url=db_url, fleet_dir=fleet.dir))
    await service.start()
    yield service
    await service.stop()


@pytest.fixture
async def admin(fleet: FleetFixture, nc: Client) -> AsyncIterator[AdminClient]:
    client = AdminClient(fleet, nc)
    await client.start()
    yield client
    await client.close()
