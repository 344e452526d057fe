"""The gateway's HTTP server (aiohttp): one listener, two protocols (DESIGN §7).

Dispatch: a request carrying AWS Signature V4 (``Authorization: AWS4-HMAC-SHA256 ...``, or
``X-Amz-Algorithm`` in the query for a presigned URL) goes to the S3 handler; ``/v1/...``
to the OpenAI-compatible one (:mod:`flashgate.gateway.openai`); anything else is a 404.
The S3 handler is :class:`flashgate.gateway.s3.S3Gateway` (a test may inject another).

Limits (:class:`GatewayLimits`): request line and each header field at most 8 KiB, at
most 100 header fields (aiohttp answers 400 past them), request bodies the handlers read
whole at most 16 MiB (413), reading one at most 60 s, idle keep-alive connections closed
after 75 s; upstream calls time out connecting after 10 s and after 300 s without a byte
(a model may think that long before it streams). A streamed S3 body may be idle at most
``body_timeout_s`` (60 s) between two reads (``RequestTimeout``), and each write of a
streamed S3 answer may take at most as long (the connection is then closed). Each API key
may have at most ``key_concurrency`` (32) requests in flight on this gateway; one more is
refused at once (S3 ``SlowDown`` 503, OpenAI 429), so that one key cannot take the
upstream pool (``upstream_connections``, 256, shared by every repository and both APIs):
:mod:`flashgate.gateway.concurrency`. aiohttp has no deadline for receiving a
request's headers: put the gateway behind a proxy that has one where slow clients matter.

Stopping (:meth:`GatewayServer.drain`): the listener closes, requests in flight get up to
``drain_s`` (5 s by default, ``--gateway-drain-seconds``) to finish (streams included),
then the rest are cancelled, the upstream
session closed and the last usage summaries published. The node drains its gateway before
it purges its vault, so no request is cut by a purge it could have finished before.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import structlog
from aiohttp import web
from prometheus_client.metrics_core import Metric

from flashgate.errors import ConfigurationError
from flashgate.gateway.accounting import API, GRANT, GatewayStats, Publish, accounting_middleware
from flashgate.gateway.authority import Authority
from flashgate.gateway.concurrency import AdmittingAuthority, KeyBusy, KeyLimiter, limit_middleware
from flashgate.gateway.openai import OpenAiGateway, error
from flashgate.gateway.s3 import S3Gateway
from flashgate.gateway.s3 import claims as s3_claims

log = structlog.get_logger("flashgate.gateway")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Claims = Callable[[web.Request], bool]
#: After the drain's wait, what is left is cancelled within this.
_CANCEL_AFTER_S = 0.5
RETRY_AFTER_S = 1


@dataclass(frozen=True)
class GatewayLimits:
    max_line_size: int = 8 * 1024
    max_field_size: int = 8 * 1024
    max_headers: int = 100
    max_body: int = 16 * 1024 * 1024
    body_timeout_s: float = 60.0
    keepalive_timeout_s: float = 75.0
    upstream_connect_s: float = 10.0
    upstream_read_s: float = 300.0
    upstream_connections: int = 256
    drain_s: float = 5.0
    #: Requests one API key may have in flight on this gateway (both APIs together).
    key_concurrency: int = 32


#: Builds the S3 handler: (authority, upstream session, limits) -> (claims, handle).
S3Factory = Callable[[Authority, aiohttp.ClientSession, GatewayLimits], tuple[Claims, Handler]]


def s3_gateway(
    authority: Authority, session: aiohttp.ClientSession, limits: GatewayLimits
) -> tuple[Claims, Handler]:
    """The S3-compatible endpoint (:mod:`flashgate.gateway.s3`)."""
    s3 = S3Gateway(authority, session, body_timeout_s=limits.body_timeout_s)
    return s3_claims, s3.handle


@dataclass
class GatewayServer:
    authority: Authority
    node_id: str
    #: Publishes one usage summary (the node signs and sends it); None: not published.
    publish_usage: Publish | None = None
    limits: GatewayLimits = field(default_factory=GatewayLimits)
    #: The S3 handler's factory (tests inject their own).
    s3: S3Factory = s3_gateway
    usage_interval_s: float | None = None
    stats: GatewayStats = field(init=False)
    _runner: web.AppRunner | None = field(default=None, init=False)
    _site: web.TCPSite | None = field(default=None, init=False)
    _session: aiohttp.ClientSession | None = field(default=None, init=False)
    _usage_task: asyncio.Task[None] | None = field(default=None, init=False)
    _port: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.stats = GatewayStats(self.node_id, publish=self.publish_usage)
        if self.usage_interval_s is not None:
            self.stats.usage_interval_s = self.usage_interval_s

    @property
    def port(self) -> int:
        """The port listened on (the one the OS chose for port 0)."""
        return self._port

    def families(self) -> list[Metric]:
        return self.stats.families()

    def build_app(self, session: aiohttp.ClientSession) -> web.Application:
        limits = self.limits
        # the OpenAI handler authenticates with Authority.verify: a slot is taken there
        openai = OpenAiGateway(
            AdmittingAuthority(self.authority),
            session,
            max_body=limits.max_body,
            body_timeout_s=limits.body_timeout_s,
        )
        claims, s3_handle = self.s3(self.authority, session, limits)  # admits itself

        async def dispatch(request: web.Request) -> web.StreamResponse:
            if claims(request):
                request[API] = "s3"
                return await s3_handle(request)
            if request.path.startswith("/v1/"):
                request[API] = "openai"
                try:
                    return await openai.handle(request)
                except KeyBusy as busy:
                    request[GRANT] = busy.grant
                    return error(429, "This API key has too many requests in flight; retry "
                                 "shortly.", "rate_limit_error", "too_many_concurrent_requests",
                                 headers={"Retry-After": str(RETRY_AFTER_S)})  # fmt: skip
            return error(404, "Not found: this gateway serves S3 and /v1/ (OpenAI).",
                         "invalid_request_error", "unknown_route")  # fmt: skip

        app = web.Application(
            middlewares=[
                accounting_middleware(self.stats),
                limit_middleware(KeyLimiter(limits.key_concurrency)),
            ],
            client_max_size=limits.max_body,
        )
        app.router.add_route("*", "/{tail:.*}", dispatch)
        return app

    async def start(self, host: str, port: int) -> None:
        limits = self.limits
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(
                total=None, connect=limits.upstream_connect_s, sock_read=limits.upstream_read_s
            ),
            connector=aiohttp.TCPConnector(limit=limits.upstream_connections),
            auto_decompress=False,  # bodies are relayed as they are, both ways
            trust_env=False,
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        app = self.build_app(self._session)
        self._runner = web.AppRunner(
            app,
            access_log=None,  # ours is the accounting middleware's
            shutdown_timeout=_CANCEL_AFTER_S,  # drain() waits for requests itself
            max_line_size=limits.max_line_size,
            max_field_size=limits.max_field_size,
            max_headers=limits.max_headers,
            keepalive_timeout=limits.keepalive_timeout_s,
            auto_decompress=False,
        )
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, host, port)
        try:
            await self._site.start()
        except OSError as exc:
            await self._runner.cleanup()
            await self._session.close()
            self._runner = self._site = None
            reason = exc.strerror or type(exc).__name__
            raise ConfigurationError(
                f"the gateway cannot listen on {host}:{port} (--gateway-listen): {reason}"
            ) from None
        self._port = int(self._runner.addresses[0][1])
        if self.publish_usage is not None:
            self._usage_task = asyncio.create_task(self.stats.run_usage(), name="gateway-usage")
        log.info("gateway listening", host=host, port=self.port)

    async def drain(self, timeout: float | None = None) -> None:
        """Stop listening, let requests in flight finish (up to ``timeout``, default the
        limits' ``drain_s``; 0 cancels them at once), close, publish the last usage."""
        if self._runner is None:
            return
        runner, self._runner = self._runner, None
        budget = self.limits.drain_s if timeout is None else timeout
        log.info("gateway draining", in_flight=self.stats.in_flight, drain_s=budget)
        if self._site is not None:
            await self._site.stop()  # no new connections
        deadline = asyncio.get_running_loop().time() + budget
        while self.stats.in_flight and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        left = self.stats.in_flight
        if left:
            log.warning("gateway drain ran out of time; cancelling requests", in_flight=left)
        await runner.cleanup()  # closes idle connections, cancels what is left
        if self._session is not None:
            await self._session.close()
        if self._usage_task is not None:
            self._usage_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._usage_task
        await self.stats.flush_usage()
        log.info("gateway stopped")
