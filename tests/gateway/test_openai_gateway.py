"""The OpenAI-compatible gateway in process: the official ``openai`` SDK against the gateway
server over a real vault (:class:`VaultAuthority`), in front of a local upstream that
records what it received. The same through real Bridge Nodes is in
tests/e2e/test_gateway_ai_nodes.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
import platform
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import openai
import pytest
from structlog.testing import capture_logs

from flashgate.bridge.gateway_authority import VaultAuthority
from flashgate.bridge.metrics import render
from flashgate.bridge.vault import Vault
from flashgate.crypto.api_key_tokens import new_key_id, new_key_secret
from flashgate.events import domain as ev
from flashgate.events.envelope import ProvenApiKey
from flashgate.gateway.server import GatewayLimits, GatewayServer
from tests.support.ai_upstream import MODEL, AiUpstream, running_upstream
from tests.support.material import CANARY

# The openai SDK reports the processor (``uname -p``, a subprocess) on its first request;
# platform caches it: ask here, at collection, not in a test the tier guard watches.
platform.processor()

REPO = "payments"
PROVIDER_KEY = "sk-" + CANARY.decode()
ROTATED_KEY = "sk-rotated-" + CANARY.decode()


def ai_value(provider: str, api_key: str, base_url: str) -> bytearray:
    value = {"type": "ai", "provider": provider, "api_key": api_key, "base_url": base_url}
    return bytearray(json.dumps(value).encode())


@dataclass
class Key:
    key_id: str
    secret: bytes

    @property
    def token(self) -> str:
        return f"{self.key_id}.{self.secret.decode()}"


@dataclass
class Setup:
    vault: Vault
    upstream: AiUpstream
    server: GatewayServer
    published: list[ev.GatewayUsage] = field(default_factory=list)
    loaded: bool = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    def add_key(self, *, scope: str = "ai", access: str = "openai", repo: str = REPO) -> Key:
        key = Key(new_key_id(), new_key_secret())
        self.vault.put(
            f"{repo}.{key.key_id}",
            1,
            1,
            "apikey",
            bytearray(key.secret),
            api_key=ProvenApiKey(key_id=key.key_id, scope=scope, access=access),  # type: ignore[arg-type]
        )
        return key

    def put_ai(self, name: str, provider: str, api_key: str, version: int = 1) -> None:
        self.vault.put(
            f"{REPO}.{name}", version, 1, "ai", ai_value(provider, api_key, self.upstream.base_url)
        )

    def client(self, key: Key | str) -> openai.AsyncOpenAI:
        token = key.token if isinstance(key, Key) else key
        return openai.AsyncOpenAI(api_key=token, base_url=f"{self.url}/v1", max_retries=0)


@contextlib.asynccontextmanager
async def gateway(
    limits: GatewayLimits | None = None, **upstream_args: object
) -> AsyncIterator[Setup]:
    async with running_upstream(**upstream_args) as upstream:
        vault = Vault()
        setup: Setup
        published: list[ev.GatewayUsage] = []

        async def publish(usage: ev.GatewayUsage) -> None:
            published.append(usage)

        server = GatewayServer(
            VaultAuthority(vault, lambda: setup.loaded),
            "node-1",
            publish_usage=publish,
            limits=limits or GatewayLimits(),
        )
        setup = Setup(vault, upstream, server, published)
        setup.put_ai("openai-main", "openai", PROVIDER_KEY)
        await server.start("127.0.0.1", 0)
        try:
            yield setup
        finally:
            await server.drain(0)


async def test_chat_completion_injects_the_provider_key_and_hides_it() -> None:
    async with gateway() as g:
        key = g.add_key()
        client = g.client(key)
        raw = await client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}]
        )
        answer = raw.parse()
        assert answer.choices[0].message.content == "Hello from the upstream."
        seen = g.upstream.seen[-1]
        assert seen.path == "/v1/chat/completions"
        assert seen.headers["Authorization"] == f"Bearer {PROVIDER_KEY}"
        # what the client presented never goes upstream
        assert key.secret.decode() not in json.dumps(dict(seen.headers))
        assert key.key_id not in json.dumps(dict(seen.headers))
        # and the provider key never comes back
        assert CANARY.decode() not in json.dumps(dict(raw.headers)) + raw.http_response.text


async def test_streaming_is_relayed_as_it_comes() -> None:
    hold = asyncio.Event()
    async with gateway(hold=hold) as g:
        client = g.client(g.add_key())
        stream = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
        )
        chunks = aiter(stream)
        first = await asyncio.wait_for(anext(chunks), 30)  # the upstream holds the rest
        assert first.choices[0].delta.content == "Hello"
        assert not hold.is_set()
        hold.set()
        rest = [c.choices[0].delta.content async for c in chunks]
        assert "Hello" + "".join(r or "" for r in rest) == "Hello from the upstream."


async def test_embeddings_and_models() -> None:
    async with gateway() as g:
        client = g.client(g.add_key())
        embedded = await client.embeddings.create(model=MODEL, input=["a", "b"])
        assert [d.index for d in embedded.data] == [0, 1]
        models = await client.models.list()
        assert [m.id async for m in models] == [MODEL]
        assert {s.path for s in g.upstream.seen} == {"/v1/embeddings", "/v1/models"}


async def test_anthropic_key_goes_in_x_api_key() -> None:
    async with gateway() as g:
        g.put_ai("claude", "anthropic", "sk-ant-" + CANARY.decode())
        client = g.client(g.add_key(access="anthropic"))
        await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}]
        )
        seen = g.upstream.seen[-1]
        assert seen.headers["x-api-key"] == "sk-ant-" + CANARY.decode()
        assert seen.headers["anthropic-version"]
        assert "Authorization" not in seen.headers


async def test_wrong_unknown_and_malformed_keys_get_one_401() -> None:
    async with gateway() as g:
        key = g.add_key()
        wrong_secret = f"{key.key_id}.{new_key_secret().decode()}"
        unknown = f"{new_key_id()}.{key.secret.decode()}"
        messages = set()
        for token in (wrong_secret, unknown, "not-a-token", key.secret.decode()):
            with pytest.raises(openai.AuthenticationError) as caught:
                await g.client(token).models.list()
            assert caught.value.status_code == 401
            body = caught.value.response.text
            assert key.secret.decode() not in body and key.key_id not in body
            messages.add(body)
        assert len(messages) == 1  # it does not say which part was wrong
        assert g.upstream.seen == []


async def test_wrong_provider_and_wrong_scope_are_403() -> None:
    async with gateway() as g:
        for key in (g.add_key(access="anthropic"), g.add_key(scope="storage", access="read")):
            with pytest.raises(openai.PermissionDeniedError):
                await g.client(key).chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": "hi"}]
                )
        # a key of another repository: that repository has no AI secret
        other = g.add_key(repo="other")
        with pytest.raises(openai.PermissionDeniedError):
            await g.client(other).models.list()
        assert g.upstream.seen == []


async def test_loading_node_answers_503_with_retry_after() -> None:
    async with gateway() as g:
        key = g.add_key()
        g.loaded = False
        async with (
            aiohttp.ClientSession() as http,
            http.get(
                f"{g.url}/v1/models", headers={"Authorization": f"Bearer {key.token}"}
            ) as answer,
        ):
            assert answer.status == 503
            assert int(answer.headers["Retry-After"]) > 0
            assert (await answer.json())["error"]["code"] == "loading"
        g.loaded = True
        await g.client(key).models.list()


async def test_rotation_while_requests_flow() -> None:
    async with gateway() as g:
        g.upstream.accepted = {PROVIDER_KEY, ROTATED_KEY}
        client = g.client(g.add_key())
        rotated = asyncio.Event()
        after: set[str] = set()  # the inputs of requests sent after the rotation
        counter = iter(range(1_000_000))

        async def call() -> None:
            tag = f"request-{next(counter)}"
            if rotated.is_set():
                after.add(tag)
            await client.embeddings.create(model=MODEL, input=tag)

        async def flow() -> None:
            for _ in range(30):
                await asyncio.gather(*(call() for _ in range(4)))

        task = asyncio.create_task(flow())
        while len(g.upstream.seen) < 20:
            await asyncio.sleep(0.01)
        g.put_ai("openai-main", "openai", ROTATED_KEY, version=2)
        rotated.set()
        await task  # no request failed
        used = {json.loads(s.body)["input"]: s.credential() for s in g.upstream.seen}
        assert after and {used[tag] for tag in after} == {ROTATED_KEY}


async def test_revocation_refuses_from_the_next_request_on() -> None:
    async with gateway() as g:
        key = g.add_key()
        client = g.client(key)
        revoked = asyncio.Event()
        outcomes: list[tuple[bool, bool]] = []  # (started after the revocation, refused)

        async def call() -> None:
            after = revoked.is_set()
            try:
                await client.models.list()
                outcomes.append((after, False))
            except openai.AuthenticationError:
                outcomes.append((after, True))

        async def flow() -> None:
            for _ in range(30):
                await asyncio.gather(*(call() for _ in range(4)))

        task = asyncio.create_task(flow())
        while len(outcomes) < 20:
            await asyncio.sleep(0.01)
        g.vault.delete(f"{REPO}.{key.key_id}")  # the envelope's delete, as the loader does
        revoked.set()
        await task
        assert any(after for after, _ in outcomes)
        assert all(refused for after, refused in outcomes if after)
        assert not any(refused for after, refused in outcomes[:20])


async def test_upstream_refusing_the_credential_is_not_echoed() -> None:
    async with gateway() as g:
        g.upstream.accepted = {"sk-something-else"}  # its 401 echoes the key it got
        with pytest.raises(openai.APIStatusError) as caught:
            await g.client(g.add_key()).models.list()
        assert caught.value.status_code == 502
        assert CANARY.decode() not in caught.value.response.text
        text = render(g.server.families()).decode()
        assert 'flashgate_gateway_upstream_errors_total{api="openai"' in text


async def test_canary_never_in_logs_metrics_or_usage_events() -> None:
    async with gateway() as g:
        key = g.add_key()
        client = g.client(key)
        with capture_logs() as logs:
            await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}]
            )
            stream = await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
            )
            async for _ in stream:
                pass
            await client.embeddings.create(model=MODEL, input="x")
            with pytest.raises(openai.AuthenticationError):
                await g.client(f"{key.key_id}.{CANARY.decode()}").models.list()
        metrics = render(g.server.families()).decode()
        assert await g.server.stats.flush_usage() == 1
        events = [json.dumps(ev.encode_event(_event(u)).decode()) for u in g.published]
        lines = [json.dumps(entry, default=str) for entry in logs]
        assert [entry["status"] for entry in logs if entry["event"] == "gateway request"] == [
            200,
            200,
            200,
            401,
        ]
        for text in [metrics, *events, *lines]:
            assert CANARY.decode() not in text
            assert key.secret.decode() not in text
        assert f'key_id="{key.key_id}"' in metrics
        (usage,) = g.published
        assert (usage.repo, usage.key_id, usage.api, usage.requests) == (
            REPO,
            key.key_id,
            "openai",
            3,
        )
        assert usage.bytes_out > 0 and usage.bytes_in > 0


def _event(usage: ev.GatewayUsage) -> ev.DomainEvent:
    return ev.make_event(usage, event_id="usage-1", source="flashgate/f/bridge/node-1")


async def test_a_body_over_the_limit_is_413_and_never_relayed() -> None:
    async with gateway(GatewayLimits(max_body=64 * 1024)) as g:
        client = g.client(g.add_key())
        with pytest.raises(openai.APIStatusError) as caught:
            await client.embeddings.create(model=MODEL, input="x" * 100_000)
        assert caught.value.status_code == 413
        assert g.upstream.seen == []


async def test_a_client_leaving_mid_stream_is_no_error() -> None:
    hold = asyncio.Event()
    async with gateway(hold=hold) as g:
        key = g.add_key()
        with capture_logs() as logs:
            async with aiohttp.ClientSession() as http:
                answer = await http.post(
                    f"{g.url}/v1/chat/completions",
                    json={"model": MODEL, "messages": [], "stream": True},
                    headers={"Authorization": f"Bearer {key.token}"},
                )
                assert answer.status == 200
                assert (await answer.content.readany()).startswith(b"data: ")
                answer.close()  # the client leaves
            hold.set()
            while not any(e["event"] == "gateway request" for e in logs):
                await asyncio.sleep(0.01)
        assert not [e for e in logs if e["log_level"] == "error"]
        (line,) = [e for e in logs if e["event"] == "gateway request"]
        assert line["status"] == 200 and line["key_id"] == key.key_id


async def test_upstream_errors_are_relayed_scrubbed_of_the_credential() -> None:
    async with gateway(fail_status=429) as g:
        client = g.client(g.add_key())
        with pytest.raises(openai.RateLimitError) as caught:
            await client.embeddings.create(model=MODEL, input="x")
        text = caught.value.response.text
        assert "Trouble with key <redacted>" in text and CANARY.decode() not in text
        assert g.upstream.seen[-1].headers["Accept-Encoding"] == "identity"
        g.upstream.fail_status = 503
        with pytest.raises(openai.InternalServerError) as failed:
            await client.models.list()
        assert failed.value.status_code == 503
        assert CANARY.decode() not in failed.value.response.text
        metrics = render(g.server.families()).decode()
        assert 'flashgate_gateway_upstream_errors_total{api="openai"' in metrics
