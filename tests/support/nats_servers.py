"""pytest plugin: real nats-server processes for integration tests (marker ``nats``).

Registered in ``tests/conftest.py`` (``pytest_plugins``).

* ``nats_binary`` (session): the nats-server found by :func:`find_nats_server` (>= 2.10;
  a missing or too old binary fails the test with the reason and the fix);
* ``nats_server`` / ``nats_url`` (session): one JetStream server on a free loopback port,
  its store under pytest's tmp dir, stopped at the end of the session;
* ``nc`` / ``js`` (function): a client connected with role ``test``, drained afterwards,
  and its JetStream context;
* ``fleet_names`` (function): a fresh :class:`FleetNames` per test, so tests never share
  streams or buckets on the session server;
* ``nats_cluster`` (session, started only if a test asks for it): three routed servers.

Server fixtures are synchronous (they start processes and poll ``/healthz``); only the
client fixtures are async, and they run in each test's own event loop. Every test that
uses one of these fixtures is marked ``nats`` (:mod:`tests.support.tiers`; ``-m "not nats"``
skips them).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import suppress
from typing import TypeVar
from uuid import uuid4

import nats.errors
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from flashgate.broker.connection import connect
from flashgate.devcluster.nats_server import (
    NatsBinary,
    NatsCluster,
    NatsServerProcess,
    find_nats_server,
)
from flashgate.errors import BrokerError
from flashgate.events.subjects import FleetNames

T = TypeVar("T")


async def eventually(
    attempt: Callable[[], Awaitable[T]],
    *,
    timeout: float = 15.0,
    interval: float = 0.2,
    retry_on: tuple[type[BaseException], ...] = (BrokerError,),
) -> T:
    """``await attempt()`` until it stops raising ``retry_on`` (for leader elections and
    reconnects); after ``timeout`` seconds the last error is raised. No timing asserts."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await attempt()
        except retry_on:
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(interval)


@pytest.fixture(scope="session")
def nats_binary() -> NatsBinary:
    return find_nats_server()


@pytest.fixture(scope="session")
def nats_server(
    nats_binary: NatsBinary, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NatsServerProcess]:
    server = NatsServerProcess(
        tmp_path_factory.mktemp("nats"), name="flashgate-test", binary=nats_binary
    )
    with server:
        yield server


@pytest.fixture(scope="session")
def nats_url(nats_server: NatsServerProcess) -> str:
    return nats_server.url


@pytest.fixture
async def nc(nats_url: str, request: pytest.FixtureRequest) -> AsyncIterator[Client]:
    client = await connect(nats_url, role="test", name=f"pytest:{request.node.name}"[:120])
    try:
        yield client
    finally:
        with suppress(nats.errors.Error, TimeoutError):
            await client.drain()
        if not client.is_closed:
            await client.close()


@pytest.fixture
def js(nc: Client) -> JetStreamContext:
    return nc.jetstream()


@pytest.fixture
def fleet_names() -> FleetNames:
    return FleetNames(f"t{uuid4().hex[:12]}")


@pytest.fixture(scope="session")
def nats_cluster(
    nats_binary: NatsBinary, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NatsCluster]:
    cluster = NatsCluster(
        3, base_dir=tmp_path_factory.mktemp("nats-cluster"), name="fgtest", binary=nats_binary
    )
    with cluster:
        yield cluster
