"""The OpenAI-compatible gateway on real Bridge Node processes (``flashgate bridge
--gateway-listen``), a real nats-server and the real backend, with the official ``openai``
SDK as the client and a local upstream that records what it received (issue 16).

A node still loading answers 503 with Retry-After; the upstream sees the repository's
provider key and the client never does; streaming works; wrong, wrong-provider and revoked
keys are refused; the upstream credential rotated while requests flow is used from the
next request on and no request fails; a revocation while requests flow refuses from the
next request on; the node's usage summary is a signed ``gateway.usage`` event; and the
stored credentials appear in no response, log, metric, event or store.
"""

from __future__ import annotations

import asyncio
import json
import platform
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import openai
import pytest
from nats.aio.client import Client

from flashgate.crypto.api_key_tokens import new_key_id, new_key_secret
from flashgate.devcluster.nats_server import free_ports
from flashgate.events import commands as cmd
from flashgate.events import domain as ev
from flashgate.events.event_auth import bridge_source
from flashgate.events.signing import sign, verify
from flashgate.fleet.identity_keys import load_ed25519_public
from tests.support.ai_upstream import MODEL, AiUpstream, running_upstream
from tests.support.bridge_cluster import Cluster, running_cluster, wait_until
from tests.support.material import CANARY, stated

pytestmark = [pytest.mark.nats, pytest.mark.processes, pytest.mark.e2e]
platform.processor()  # the openai SDK's `uname -p`, asked before the tier guard watches

REPO = "payments"
PROVIDER_KEY = "sk-" + CANARY.decode()
ROTATED_KEY = "sk-rotated-" + CANARY.decode()


def ai_value(upstream: AiUpstream, api_key: str, provider: str = "openai") -> bytes:
    return json.dumps(
        {"type": "ai", "provider": provider, "api_key": api_key, "base_url": upstream.base_url}
    ).encode()


async def create_key(cluster: Cluster, access: str) -> str:
    """A repository AI API key; returns its bearer token ``<key id>.<secret>``."""
    admin, fleet = cluster.admin, cluster.fleet
    key_id, secret = new_key_id(), new_key_secret()
    created = await admin.send(
        sign(
            stated(
                cmd.CreateApiKey,
                fleet.admin,
                **admin.base(),
                key_id=key_id,
                repo=REPO,
                scope="ai",
                access=access,
                label="gateway test",
                epoch=1,
                jwe=admin.jwe(REPO, key_id, secret, kind="apikey"),
            ),
            fleet.admin,
        ),
        timeout=30,
    )
    assert created.type == "io.flashgate.apikey.created", created.data
    return f"{key_id}.{secret.decode()}"


async def test_openai_sdk_through_a_bridge_node(tmp_path: Path, nats_url: str, nc: Client) -> None:
    gateway_port, metrics_port = free_ports(2)
    async with (
        running_upstream(accepted={PROVIDER_KEY, ROTATED_KEY}) as upstream,
        running_cluster(tmp_path, nats_url, nc, nodes=3, threshold=2, start=False) as cluster,
    ):
        node1 = cluster.nodes["node-1"]
        node1.extra_args = [
            "--gateway-listen",
            f"127.0.0.1:{gateway_port}",
            "--metrics-port",
            str(metrics_port),
        ]
        url = f"http://127.0.0.1:{gateway_port}"
        admin = cluster.admin
        # Written while no node runs: node-1 alone (threshold 2) cannot load it.
        event = await admin.send(
            admin.put(REPO, "openai-main", ai_value(upstream, PROVIDER_KEY), kind="ai")
        )
        assert event.type == "io.flashgate.secret.created", event.data
        token = await create_key(cluster, "openai")
        drain_token = await create_key(cluster, "openai")
        wrong_provider = await create_key(cluster, "anthropic")

        # -- a node still loading answers 503 with Retry-After -----------------------------
        node1.start()
        async with aiohttp.ClientSession() as http:

            async def answers_503() -> bool:
                try:
                    async with http.get(
                        f"{url}/v1/models", headers={"Authorization": f"Bearer {token}"}
                    ) as answer:
                        return answer.status == 503 and int(answer.headers["Retry-After"]) > 0
                except aiohttp.ClientConnectionError:
                    return False

            await wait_until(answers_503, 60, "node-1's gateway answering 503 while loading")
        for node in ("node-2", "node-3"):
            cluster.start(node)
        await cluster.wait_held(["node-1"], f"{REPO}.openai-main", 1)

        client = openai.AsyncOpenAI(api_key=token, base_url=f"{url}/v1", max_retries=0)

        async def ready() -> bool:
            try:
                await client.models.list()
                return True
            except openai.APIStatusError:
                return False

        await wait_until(ready, 60, "node-1's gateway ready")

        # -- the upstream sees the provider key; the client never does ---------------------
        raw = await client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}]
        )
        assert raw.parse().choices[0].message.content == "Hello from the upstream."
        assert upstream.seen[-1].headers["Authorization"] == f"Bearer {PROVIDER_KEY}"
        assert token.split(".")[1] not in json.dumps(dict(upstream.seen[-1].headers))
        responses = [json.dumps(dict(raw.headers)) + raw.http_response.text]
        stream = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
        )
        words = [c.choices[0].delta.content or "" async for c in stream]
        assert "".join(words) == "Hello from the upstream."

        # -- wrong and wrong-provider keys ---------------------------------------------------
        key_id = token.split(".")[0]
        for bad in (f"{key_id}.{new_key_secret().decode()}", f"{new_key_id()}.x"):
            with pytest.raises(openai.AuthenticationError) as caught:
                await openai.AsyncOpenAI(
                    api_key=bad, base_url=f"{url}/v1", max_retries=0
                ).models.list()
            responses.append(caught.value.response.text)
        with pytest.raises(openai.PermissionDeniedError) as denied:
            await openai.AsyncOpenAI(
                api_key=wrong_provider, base_url=f"{url}/v1", max_retries=0
            ).models.list()
        responses.append(denied.value.response.text)

        # -- rotation while requests flow: none fails, the next ones use the new key -------
        failures: list[BaseException] = []
        stop = asyncio.Event()

        async def flow(c: openai.AsyncOpenAI, outcomes: list[Outcome]) -> None:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    await c.embeddings.create(model=MODEL, input="x")
                    outcomes.append(Outcome(started, time.monotonic(), ok=True))
                except openai.APIStatusError as exc:
                    outcomes.append(Outcome(started, time.monotonic(), ok=False))
                    failures.append(exc)

        rotation_outcomes: list[Outcome] = []
        flows = [asyncio.create_task(flow(client, rotation_outcomes)) for _ in range(3)]
        await wait_until(
            lambda: _at_least(rotation_outcomes, 5), 30, "requests flowing before the rotation"
        )
        rotated = await admin.send(
            admin.rotate(REPO, "openai-main", ai_value(upstream, ROTATED_KEY), version=2, kind="ai")
        )
        assert rotated.type == "io.flashgate.secret.rotated", rotated.data
        await wait_until(
            lambda: _uses(upstream, ROTATED_KEY), 60, "the rotated credential used upstream"
        )
        seen_before = len(upstream.seen)
        await wait_until(
            lambda: _at_least(upstream.seen, seen_before + 10), 30, "more requests after it"
        )
        stop.set()
        await asyncio.gather(*flows)
        assert failures == []
        # (a request that read the old credential just before may still arrive after the
        # first new one: at most one per flow)
        assert {s.credential() for s in upstream.seen[seen_before + len(flows) :]} == {ROTATED_KEY}

        # -- revocation while requests flow: refused from the next request on --------------
        stop.clear()
        revocation_outcomes: list[Outcome] = []
        flows = [asyncio.create_task(flow(client, revocation_outcomes)) for _ in range(3)]
        await wait_until(
            lambda: _at_least(revocation_outcomes, 5), 30, "requests flowing before revoking"
        )
        revoked = await admin.send(
            sign(cmd.RevokeApiKey(**admin.base(), key_id=key_id), cluster.fleet.admin)
        )
        assert revoked.type == "io.flashgate.apikey.revoked", revoked.data
        await wait_until(
            lambda: _refused_for_a_while(revocation_outcomes), 60, "the revoked key refused"
        )
        stop.set()
        await asyncio.gather(*flows)
        # once a refusal has come back, every request sent after it is refused too
        first_refused = min(o.ended for o in revocation_outcomes if not o.ok)
        later = [o for o in revocation_outcomes if o.started > first_refused]
        assert later and not any(o.ok for o in later)
        assert all(isinstance(f, openai.AuthenticationError) for f in failures)

        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{metrics_port}/metrics") as answer,
        ):
            metrics = await answer.text()
        assert f'key_id="{key_id}"' in metrics
        assert "flashgate_gateway_requests_total" in metrics

        # -- SIGTERM: a stream in flight finishes before the purge; no new connection --------
        upstream.hold = asyncio.Event()
        drain_client = openai.AsyncOpenAI(api_key=drain_token, base_url=f"{url}/v1", max_retries=0)
        held = await drain_client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
        )
        chunks = aiter(held)
        first = await anext(chunks)
        assert node1.process is not None
        node1.process.send_signal(signal.SIGTERM)

        async def refuses_connections() -> bool:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", gateway_port)
            except OSError:
                return True
            writer.close()
            return False

        await wait_until(refuses_connections, 30, "node-1's gateway to stop listening")
        upstream.hold.set()
        rest = [c.choices[0].delta.content or "" async for c in chunks]
        assert (first.choices[0].delta.content or "") + "".join(rest) == "Hello from the upstream."
        assert await asyncio.to_thread(node1.process.wait, 30) == 0
        node1_log = node1.log.read_text()
        assert node1_log.index('"gateway stopped"') < node1_log.index("vault purged")

        # -- the last usage summary, published on the way out, signed by node-1 ------------
        usage_event = await admin.wait_for(
            lambda e: e.type == "io.flashgate.gateway.usage" and e.data.key_id == key_id, 30
        )
        assert isinstance(usage_event.data, ev.GatewayUsage)
        assert usage_event.data.requests > 0 and usage_event.data.repo == REPO
        assert usage_event.source == bridge_source(cluster.fleet.name, "node-1")
        node_key = cluster.fleet.ceremony.roster.node("node-1")
        assert node_key is not None
        verify(usage_event, load_ed25519_public(node_key.signing_key))

        # -- canary: never in responses, logs, metrics, events or the backend's store -------
        events = [ev.encode_event(e).decode() for e in admin.events]
        logs = [p.read_bytes().decode(errors="replace") for p in (tmp_path / "logs").iterdir()]
        store = (tmp_path / "backend.db").read_bytes()
        for text in [*responses, metrics, *events, *logs]:
            assert CANARY.decode() not in text
            assert token.split(".")[1] not in text
        assert CANARY not in store
        assert any('"gateway request"' in line for line in logs)


async def _at_least(items: list[object], n: int) -> bool:
    return len(items) >= n


async def _uses(upstream: AiUpstream, credential: str) -> bool:
    return any(s.credential() == credential for s in upstream.seen)


async def _refused_for_a_while(outcomes: list[Outcome]) -> bool:
    return len(outcomes) >= 6 and not any(o.ok for o in outcomes[-6:])


@dataclass(frozen=True)
class Outcome:
    started: float
    ended: float
    ok: bool
