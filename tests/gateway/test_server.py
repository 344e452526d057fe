"""The gateway server's limits, dispatch, accounting middleware and drain (in process,
real aiohttp on loopback)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from flashgate.bridge.metrics import render
from flashgate.errors import ConfigurationError
from flashgate.events import domain as ev
from flashgate.gateway.accounting import BYTES_IN, BYTES_OUT, GRANT, UPSTREAM_ERROR
from flashgate.gateway.authority import Grant
from flashgate.gateway.s3 import claims as s3_claims
from flashgate.gateway.server import GatewayLimits, GatewayServer, S3Factory
from tests.support.ai_upstream import AiUpstream

GRANT_S3 = Grant(
    key_id="fgk_aaaaaaaaaaaaaaaaaaaaaaaa", repo="media", scope="storage", access="read"
)


class NoAuthority:
    """Knows no key: every request is refused before it is authenticated."""

    def __init__(self, ready: bool = True) -> None:
        self._ready = ready

    def ready(self) -> bool:
        return self._ready

    def grant(self, key_id: str) -> Grant | None:
        return None

    def verify(self, key_id: str, presented: bytes) -> Grant | None:
        return None

    def key_secret(self, key_id: str) -> contextlib.AbstractContextManager[memoryview]:
        raise NotImplementedError

    def storage_names(self, repo: str) -> list[str]:
        return []

    def storage(self, repo: str, name: str) -> contextlib.AbstractContextManager[object]:
        raise NotImplementedError

    def ai(self, repo: str, provider: str) -> contextlib.AbstractContextManager[object]:
        raise NotImplementedError


def fake_s3(release: asyncio.Event | None = None) -> S3Factory:
    """An S3 slot that authenticates every request as GRANT_S3 and streams a body."""

    def build(_authority: object, _session: aiohttp.ClientSession, _limits: object) -> tuple:  # type: ignore[type-arg]
        async def handle(request: web.Request) -> web.StreamResponse:
            request[GRANT] = GRANT_S3
            body = await request.read()
            request[BYTES_IN] = len(body)
            response = web.StreamResponse()
            await response.prepare(request)
            await response.write(b"x" * 100)
            if release is not None:
                await release.wait()
            await response.write(b"y" * 100)
            request[BYTES_OUT] = 200
            if request.query.get("fail"):
                request[UPSTREAM_ERROR] = True
            await response.write_eof()
            return response

        return s3_claims, handle

    return build


@contextlib.asynccontextmanager
async def serving(
    limits: GatewayLimits | None = None, s3: S3Factory | None = None, ready: bool = True
) -> AsyncIterator[tuple[GatewayServer, str, list[ev.GatewayUsage]]]:
    published: list[ev.GatewayUsage] = []

    async def publish(usage: ev.GatewayUsage) -> None:
        published.append(usage)

    server = GatewayServer(
        NoAuthority(ready),  # type: ignore[arg-type]
        "node-1",
        publish_usage=publish,
        limits=limits or GatewayLimits(),
        **({} if s3 is None else {"s3": s3}),
    )
    await server.start("127.0.0.1", 0)
    try:
        yield server, f"http://127.0.0.1:{server.port}", published
    finally:
        await server.drain(0)


SIGV4 = {"Authorization": "AWS4-HMAC-SHA256 Credential=fgk_x/20260101/us-east-1/s3/aws4_request"}


async def test_oversized_headers_and_bodies_are_refused() -> None:
    limits = GatewayLimits(max_field_size=1024, max_headers=20, max_body=4096)
    async with serving(limits) as (_, url, _pub), aiohttp.ClientSession() as http:
        async with http.get(f"{url}/v1/models", headers={"X-Big": "a" * 4000}) as answer:
            assert answer.status in (400, 431)
        many = {f"X-H{i}": "v" for i in range(40)}
        async with http.get(f"{url}/v1/models", headers=many) as answer:
            assert answer.status in (400, 431)
        # a too-large body is refused before a key is even checked when it is announced
        async with http.post(
            f"{url}/v1/chat/completions",
            data=b"{" + b" " * 10_000 + b"}",
            headers={"Authorization": "Bearer fgk_x.fgs_y"},
        ) as answer:
            assert answer.status in (401, 413)


async def test_dispatch_unknown_routes_and_the_s3_endpoint() -> None:
    async with serving() as (_, url, _pub), aiohttp.ClientSession() as http:
        async with http.get(f"{url}/") as answer:
            assert answer.status == 404
            assert (await answer.json())["error"]["code"] == "unknown_route"
        async with http.get(f"{url}/bucket/key", headers=SIGV4) as answer:  # the real S3 one
            assert answer.status in (400, 403, 503)
            assert "<Error><Code>" in await answer.text()
        async with http.get(f"{url}/bucket/key?X-Amz-Algorithm=AWS4-HMAC-SHA256") as answer:
            assert "<Error><Code>" in await answer.text()
        async with http.get(f"{url}/v1/models") as answer:  # no bearer token
            assert answer.status == 401
            assert (await answer.json())["error"]["code"] == "invalid_api_key"


async def test_loading_answers_503_before_anything_else() -> None:
    async with (
        serving(ready=False) as (_, url, _pub),
        aiohttp.ClientSession() as http,
        http.post(f"{url}/v1/embeddings", data=b"{}") as answer,
    ):
        assert answer.status == 503 and answer.headers["Retry-After"]


async def test_middleware_counts_per_key_and_publishes_aggregated_usage() -> None:
    async with (
        serving(s3=fake_s3()) as (server, url, published),
        aiohttp.ClientSession() as http,
    ):
        with capture_logs() as logs:
            for _ in range(3):
                async with http.put(f"{url}/bucket/a", data=b"z" * 50, headers=SIGV4) as answer:
                    assert answer.status == 200 and len(await answer.read()) == 200
            async with http.get(f"{url}/bucket/a?fail=1", headers=SIGV4) as answer:
                await answer.read()
            async with http.get(f"{url}/v1/models") as answer:
                assert answer.status == 401
        text = render(server.families()).decode()
        key = 'key_id="fgk_aaaaaaaaaaaaaaaaaaaaaaaa"'
        labels = f'api="s3",{key},node="node-1",repo="media"'  # the exposition sorts them
        requests_2xx = f'api="s3",code="2xx",{key},node="node-1",repo="media"'
        assert f"flashgate_gateway_requests_total{{{requests_2xx}}} 4.0" in text
        assert f"flashgate_gateway_bytes_received_total{{{labels}}} 150.0" in text
        assert f"flashgate_gateway_bytes_sent_total{{{labels}}} 800.0" in text
        assert f"flashgate_gateway_upstream_errors_total{{{labels}}} 1.0" in text
        assert f"flashgate_gateway_request_duration_seconds_count{{{labels}}} 4.0" in text
        assert (
            'flashgate_gateway_refused_total{api="openai",node="node-1",status="401"} 1.0' in text
        )
        requests = [e for e in logs if e["event"] == "gateway request"]
        assert [e["status"] for e in requests] == [200, 200, 200, 200, 401]
        assert requests[0]["key_id"] == GRANT_S3.key_id and requests[0]["repo"] == "media"
        assert "key_id" not in requests[-1]
        assert all("?" not in e["path"] for e in requests)  # never the query
        assert await server.stats.flush_usage() == 1
        (usage,) = published
        assert (usage.api, usage.requests, usage.upstream_errors) == ("s3", 4, 1)
        assert (usage.bytes_in, usage.bytes_out) == (150, 800)
        assert await server.stats.flush_usage() == 0  # a window is published once


async def test_drain_lets_requests_in_flight_finish_and_takes_no_new_ones() -> None:
    release = asyncio.Event()
    async with serving(s3=fake_s3(release)) as (server, url, published):
        async with aiohttp.ClientSession() as http:
            answer = await http.get(f"{url}/bucket/slow", headers=SIGV4)
            assert answer.status == 200
            assert await answer.content.readexactly(100) == b"x" * 100
            drain = asyncio.create_task(server.drain(30))
            while server._site is not None and server._runner is not None:
                await asyncio.sleep(0.01)  # the listener closes first
            async with aiohttp.ClientSession() as other:
                with pytest.raises(aiohttp.ClientConnectionError):
                    await other.get(f"{url}/bucket/new", headers=SIGV4)
            assert not drain.done()
            release.set()
            assert await answer.content.read() == b"y" * 100  # finished, not cut
            answer.release()
            await asyncio.wait_for(drain, 30)
        assert [u.requests for u in published] == [1]  # the last window, published on drain


async def test_ai_upstream_fixture_records_headers() -> None:
    upstream = AiUpstream()
    await upstream.start()
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{upstream.base_url}/models", headers={"x-api-key": "k"}) as answer,
        ):
            assert answer.status == 200
        assert upstream.seen[0].credential() == "k"
    finally:
        await upstream.stop()


async def test_a_port_in_use_is_a_one_line_error() -> None:
    async with serving() as (server, _url, _pub):
        other = GatewayServer(NoAuthority(), "node-2")  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match=rf"127\.0\.0\.1:{server.port}.*in use"):
            await other.start("127.0.0.1", server.port)
        await other.drain(0)  # nothing to drain: a no-op
