"""A local OpenAI-compatible upstream for gateway tests: an aiohttp server on loopback that
records the headers of every request it got and answers chat completions (whole or as
server-sent events), embeddings and the model list."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

from aiohttp import web
from multidict import CIMultiDictProxy

MODEL = "test-model"


@dataclass
class Seen:
    method: str
    path: str
    headers: CIMultiDictProxy[str]
    body: bytes

    def credential(self) -> str | None:
        """The provider credential as the upstream received it (any convention)."""
        auth = self.headers.get("Authorization")
        if auth is not None:
            return auth.removeprefix("Bearer ")
        return self.headers.get("x-api-key") or self.headers.get("api-key")


@dataclass
class AiUpstream:
    #: Credentials the upstream accepts (anything else gets a 401 that echoes the key, as
    #: OpenAI's does); empty: any.
    accepted: set[str] = field(default_factory=set)
    #: Seconds between streamed chunks.
    chunk_gap_s: float = 0.0
    #: When set, a stream stops after its first chunk until this is set (a gateway that
    #: buffered the stream would then deliver nothing).
    hold: asyncio.Event | None = None
    #: Set once a held stream has sent its first chunk.
    first_sent: asyncio.Event = field(default_factory=asyncio.Event)
    #: When set, every request is answered with this status and an error that quotes the
    #: credential it got (as some providers' do).
    fail_status: int | None = None
    seen: list[Seen] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _record(self, request: web.Request) -> web.Response | None:
        body = await request.read()
        seen = Seen(request.method, request.path, request.headers, body)
        self.seen.append(seen)
        credential = seen.credential()
        if self.fail_status is not None:
            return web.json_response(
                {"error": {"message": f"Trouble with key {credential}", "code": "x"}},
                status=self.fail_status,
            )
        if self.accepted and credential not in self.accepted:
            return web.json_response(
                {"error": {"message": f"Incorrect API key provided: {credential}", "code": 401}},
                status=401,
            )
        return None

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        refused = await self._record(request)
        if refused is not None:
            return refused
        document = json.loads(self.seen[-1].body)
        words = ["Hello", " from", " the", " upstream", "."]
        if not document.get("stream"):
            return web.json_response(
                {
                    "id": "chatcmpl-1",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": document["model"],
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "".join(words)},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8},
                }
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i, word in enumerate(words):
            chunk = {
                "id": "chatcmpl-1",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": document["model"],
                "choices": [
                    {
                        "index": 0,
                        "delta": {"content": word, **({"role": "assistant"} if i == 0 else {})},
                        "finish_reason": None,
                    }
                ],
            }
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            if i == 0 and self.hold is not None:
                self.first_sent.set()
                await self.hold.wait()
            if self.chunk_gap_s:
                await asyncio.sleep(self.chunk_gap_s)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        refused = await self._record(request)
        if refused is not None:
            return refused
        document = json.loads(self.seen[-1].body)
        inputs = document["input"] if isinstance(document["input"], list) else [document["input"]]
        return web.json_response(
            {
                "object": "list",
                "model": document["model"],
                "data": [
                    {"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]}
                    for i in range(len(inputs))
                ],
                "usage": {"prompt_tokens": 2, "total_tokens": 2},
            }
        )

    async def _models(self, request: web.Request) -> web.StreamResponse:
        refused = await self._record(request)
        if refused is not None:
            return refused
        return web.json_response(
            {
                "object": "list",
                "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "test"}],
            }
        )


@contextlib.asynccontextmanager
async def running_upstream(**kwargs: object) -> AsyncIterator[AiUpstream]:
    upstream = AiUpstream(**kwargs)  # type: ignore[arg-type]
    await upstream.start()
    try:
        yield upstream
    finally:
        await upstream.stop()


@contextlib.contextmanager
def upstream_in_thread(**kwargs: object) -> Iterator[AiUpstream]:
    """The upstream on an event loop of its own thread (for synchronous tests)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="ai-upstream", daemon=True)
    thread.start()
    upstream = AiUpstream(**kwargs)  # type: ignore[arg-type]
    asyncio.run_coroutine_threadsafe(upstream.start(), loop).result(30)
    try:
        yield upstream
    finally:
        asyncio.run_coroutine_threadsafe(upstream.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()
