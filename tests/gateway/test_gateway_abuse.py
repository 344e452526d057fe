"""A key holder abusing the gateway (review findings, each once a proof script): a replayed
signed PUT carrying a forged oversized chunk, bodies that never arrive pinning the upstream
connections of every repository, one key's requests crowding out the others, object-lock
headers, and a client dropping mid-body. The gateway server as the node runs it, in front
of a real S3 server (``rclone serve s3``) and the AI upstream of the OpenAI tests."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from flashgate.gateway.s3 import sigv4
from flashgate.gateway.server import GatewayLimits, GatewayServer
from tests.gateway.test_openai_gateway import gateway as openai_gateway
from tests.support.ai_upstream import MODEL
from tests.support.gateway import REAL_BUCKET, TestAuthority, Upstream, rclone_upstream, s3_storage

pytestmark = [pytest.mark.processes]

OTHER_BUCKET = "real-other-0044"


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    with rclone_upstream(tmp_path_factory.mktemp("abuse"), (REAL_BUCKET, OTHER_BUCKET)) as up:
        yield up


class Site:
    def __init__(self, server: GatewayServer, authority: TestAuthority) -> None:
        self.server, self.authority = server, authority

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server.port}"


@contextlib.asynccontextmanager
async def serving(upstream: Upstream, **limits: float) -> AsyncIterator[Site]:
    authority = TestAuthority()
    authority.storages[("repo-a", "data")] = s3_storage(upstream.url)
    authority.storages[("repo-b", "other")] = s3_storage(upstream.url, OTHER_BUCKET)
    server = GatewayServer(authority, "node-test", limits=GatewayLimits(**limits))  # type: ignore[arg-type]
    await server.start("127.0.0.1", 0)
    try:
        yield Site(server, authority)
    finally:
        await server.drain(0)


def signed(
    key_id: str,
    secret: str,
    host: str,
    method: str,
    path: str,
    payload: str = sigv4.UNSIGNED_PAYLOAD,
    extra: tuple[tuple[str, str], ...] = (),
) -> tuple[dict[str, str], bytes, sigv4.Scope, str, str]:
    """Headers signed for ``method path`` (every header signed), with the signing key,
    scope, seed signature and request time (for signed chunks)."""
    amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    scope = sigv4.Scope(key_id, amz_date[:8], "us-east-1", "s3")
    headers = [("host", host), ("x-amz-content-sha256", payload), ("x-amz-date", amz_date)]
    headers += list(extra)
    names = tuple(sorted(n for n, _ in headers))
    canonical = sigv4.canonical_request(method, path, [], headers, names, payload)
    key = sigv4.signing_key(secret.encode(), scope)
    seed = sigv4.sign(key, sigv4.string_to_sign(amz_date, scope, canonical))
    authorization = (
        f"AWS4-HMAC-SHA256 Credential={key_id}/{scope.date}/us-east-1/s3/aws4_request, "
        f"SignedHeaders={';'.join(names)}, Signature={seed}"
    )
    out = {n: v for n, v in headers if n != "host"} | {"Authorization": authorization}
    return out, key, scope, seed, amz_date


def chunks(data: bytes, key: bytes, scope: sigv4.Scope, seed: str, amz_date: str) -> bytes:
    out, previous = b"", seed
    for chunk in (data, b""):
        to_sign = sigv4.chunk_string_to_sign(
            amz_date, scope, previous, hashlib.sha256(chunk).hexdigest()
        )
        previous = sigv4.sign(key, to_sign)
        out += b"%x;chunk-signature=%s\r\n%s\r\n" % (len(chunk), previous.encode(), chunk)
    return out


Stalled = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def stalled_put(site: Site, key_id: str, secret: str, path: str) -> Stalled:
    """A PUT declaring a megabyte that sends one byte, then nothing."""
    headers, *_ = signed(key_id, secret, site.host, "PUT", path)
    reader, writer = await asyncio.open_connection("127.0.0.1", site.server.port)
    lines = [f"PUT {path} HTTP/1.1", f"host: {site.host}", "content-length: 1000000"]
    lines += [f"{n}: {v}" for n, v in headers.items()]
    writer.write("\r\n".join([*lines, "", ""]).encode() + b"x")
    await writer.drain()
    return reader, writer


async def status_of(
    http: aiohttp.ClientSession, site: Site, key_id: str, secret: str, method: str, path: str
) -> tuple[int, str]:
    headers, *_ = signed(key_id, secret, site.host, method, path)
    async with http.request(method, site.url + path, headers=headers) as answer:
        return answer.status, await answer.text()


# --------------------------------------------------------------------------- chunk bounds


async def test_a_replayed_signed_put_with_a_forged_oversized_chunk_stores_nothing(
    upstream: Upstream,
) -> None:
    async with serving(upstream) as site, aiohttp.ClientSession() as http:
        key_id, secret = site.authority.add_key("repo-a", "write")
        data = b"legitdata!"
        headers, key, scope, seed, amz_date = signed(
            key_id, secret, site.host, "PUT", "/data/report.txt", sigv4.STREAMING_SIGNED,
            (("x-amz-decoded-content-length", str(len(data))),),
        )  # fmt: skip
        legit = chunks(data, key, scope, seed, amz_date)
        async with http.put(f"{site.url}/data/report.txt", headers=headers, data=legit) as a:
            assert a.status == 200, await a.text()
        stored = upstream.root / REAL_BUCKET / "report.txt"
        assert stored.read_bytes() == data
        # the same signed headers replayed, the body replaced by one oversized forged chunk
        evil = b"EVIL-BYTES" + b"x" * (256 * 1024 + 10)
        forged = b"%x;chunk-signature=%s\r\n%s\r\n" % (len(evil), b"0" * 64, evil)
        forged += b"0;chunk-signature=" + b"0" * 64 + b"\r\n\r\n"
        async with http.put(f"{site.url}/data/report.txt", headers=headers, data=forged) as a:
            assert a.status in (400, 403)
        await asyncio.sleep(0.5)  # an upstream write would have landed by now
        assert stored.read_bytes() == data


# --------------------------------------------------------------------------- slow bodies


async def test_bodies_that_never_arrive_time_out_and_free_the_upstream_connections(
    upstream: Upstream,
) -> None:
    async with (
        serving(upstream, upstream_connections=2, body_timeout_s=0.5) as site,
        aiohttp.ClientSession() as http,
    ):
        key_a, secret_a = site.authority.add_key("repo-a", "write")
        key_b, secret_b = site.authority.add_key("repo-b", "read")
        stalled = [await stalled_put(site, key_a, secret_a, f"/data/k{i}") for i in range(2)]
        try:
            answer = await asyncio.wait_for(
                status_of(http, site, key_b, secret_b, "GET", "/other"), 10
            )
            assert answer[0] == 200
        finally:
            for _, writer in stalled:
                writer.close()
        assert not (upstream.root / REAL_BUCKET / "k0").exists()


async def test_a_stalled_put_is_answered_request_timeout(upstream: Upstream) -> None:
    async with serving(upstream, body_timeout_s=0.3) as site:
        key_id, secret = site.authority.add_key("repo-a", "write")
        reader, writer = await stalled_put(site, key_id, secret, "/data/stalled")
        try:
            head = await asyncio.wait_for(_read_answer(reader), 30)
        finally:
            writer.close()
        assert head.startswith(b"HTTP/1.1 400")
        assert b"<Code>RequestTimeout</Code>" in head
        assert not (upstream.root / REAL_BUCKET / "stalled").exists()


async def _read_answer(reader: asyncio.StreamReader) -> bytes:
    out = b""
    while b"</Error>" not in out:
        piece = await reader.read(4096)
        if not piece:
            break
        out += piece
    return out


async def test_a_client_that_stops_reading_an_answer_is_cut_off(upstream: Upstream) -> None:
    big = upstream.root / REAL_BUCKET / "big.bin"
    big.write_bytes(b"z" * (48 * 1024 * 1024))  # more than the sockets' buffers hold
    try:
        async with serving(upstream, body_timeout_s=0.5) as site:
            key_id, secret = site.authority.add_key("repo-a", "read")
            headers, *_ = signed(key_id, secret, site.host, "GET", "/data/big.bin")
            reader, writer = await asyncio.open_connection("127.0.0.1", site.server.port)
            lines = ["GET /data/big.bin HTTP/1.1", f"host: {site.host}"]
            lines += [f"{n}: {v}" for n, v in headers.items()]
            writer.write("\r\n".join([*lines, "", ""]).encode())
            await writer.drain()
            await reader.read(1024)  # the answer started; then the client reads no more
            try:
                for _ in range(600):
                    if site.server.stats.in_flight == 0:
                        break
                    await asyncio.sleep(0.05)
                assert site.server.stats.in_flight == 0  # the request ended, its slot free
            finally:
                writer.close()
    finally:
        big.unlink()


# --------------------------------------------------------------------------- per-key limit


async def test_one_key_cannot_take_more_than_its_share(upstream: Upstream) -> None:
    async with (
        serving(upstream, key_concurrency=2, body_timeout_s=60) as site,
        aiohttp.ClientSession() as http,
    ):
        key_a, secret_a = site.authority.add_key("repo-a", "write")
        key_b, secret_b = site.authority.add_key("repo-b", "read")
        stalled = [await stalled_put(site, key_a, secret_a, f"/data/s{i}") for i in range(2)]
        try:
            for _ in range(200):  # the two PUTs are authenticated once they hold their slots
                status, text = await status_of(http, site, key_a, secret_a, "GET", "/data")
                if status == 503:
                    break
                await asyncio.sleep(0.05)
            assert status == 503 and "<Code>SlowDown</Code>" in text
            assert (await status_of(http, site, key_b, secret_b, "GET", "/other"))[0] == 200
        finally:
            for _, writer in stalled:
                writer.close()
        for _ in range(200):  # the slots come back when the stalled requests end
            status, _text = await status_of(http, site, key_a, secret_a, "GET", "/data")
            if status == 200:
                break
            await asyncio.sleep(0.05)
        assert status == 200


async def test_the_openai_side_has_the_same_per_key_limit() -> None:
    hold = asyncio.Event()
    async with (
        openai_gateway(GatewayLimits(key_concurrency=1), hold=hold) as g,
        aiohttp.ClientSession() as http,
    ):
        busy, other = g.add_key(), g.add_key()
        chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}

        def post(key: object, stream: bool) -> object:
            return http.post(
                f"{g.url}/v1/chat/completions",
                json=chat | {"stream": stream},
                headers={"Authorization": f"Bearer {key.token}"},  # type: ignore[attr-defined]
            )

        async with post(busy, True) as streaming:  # type: ignore[attr-defined]
            assert streaming.status == 200
            await streaming.content.readline()
            async with post(busy, False) as second:  # type: ignore[attr-defined]
                assert second.status == 429
                assert second.headers["Retry-After"]
                assert (await second.json())["error"]["code"] == "too_many_concurrent_requests"
            async with post(other, False) as third:  # type: ignore[attr-defined]
                assert third.status == 200
            hold.set()
            await streaming.read()
        async with post(busy, False) as again:  # type: ignore[attr-defined]
            assert again.status == 200


# --------------------------------------------------------------------------- object lock


@pytest.mark.parametrize(
    "header",
    [
        ("x-amz-object-lock-mode", "COMPLIANCE"),
        ("x-amz-object-lock-retain-until-date", "2099-01-01T00:00:00Z"),
        ("x-amz-object-lock-legal-hold", "ON"),
    ],
)
async def test_object_lock_headers_are_refused_to_a_write_key(
    upstream: Upstream, header: tuple[str, str]
) -> None:
    async with serving(upstream) as site, aiohttp.ClientSession() as http:
        key_id, secret = site.authority.add_key("repo-a", "write")
        headers, *_ = signed(key_id, secret, site.host, "PUT", "/data/locked", extra=(header,))
        async with http.put(f"{site.url}/data/locked", headers=headers, data=b"x") as answer:
            assert answer.status == 403
            assert "<Code>AccessDenied</Code>" in await answer.text()
        assert not (upstream.root / REAL_BUCKET / "locked").exists()


# --------------------------------------------------------------------------- dropped clients


async def test_a_client_dropping_mid_body_logs_no_error(
    upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with serving(upstream) as site:
        key_id, secret = site.authority.add_key("repo-a", "write")
        _, writer = await stalled_put(site, key_id, secret, "/data/dropped")
        await asyncio.sleep(0.3)
        writer.transport.abort()
        for _ in range(100):
            if site.server.stats.in_flight == 0:
                break
            await asyncio.sleep(0.05)
        assert site.server.stats.in_flight == 0
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
    assert not (upstream.root / REAL_BUCKET / "dropped").exists()
