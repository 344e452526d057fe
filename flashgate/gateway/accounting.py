"""What the gateway counts: access log lines, Prometheus metrics and usage summaries.

The handlers of both protocols follow one contract: once a request is authenticated the
handler sets ``request["fg.grant"]`` (a :class:`~flashgate.gateway.authority.Grant`),
then ``request["fg.bytes_in"]`` and ``request["fg.bytes_out"]`` (ints, body bytes relayed
each way) and ``request["fg.upstream_error"] = True`` when the upstream failed (could not
be reached, timed out, answered 5xx, or refused the stored credential). The dispatcher
sets ``request["fg.api"]`` (``s3`` or ``openai``). :func:`accounting_middleware` turns
that into:

- one structlog line per request (``gateway request``): API, method, path (never the
  query: a presigned URL carries a signature there), status, repository and key id when
  authenticated, bytes, milliseconds. Never a header, a body, a token or a value;
- metrics per repository and key id (:meth:`GatewayStats.families`): requests by status
  class, bytes each way, upstream errors, a latency histogram; requests refused before a
  key was authenticated are counted per API and status only (a label from an unverified
  key id would let anyone grow the metrics without bound);
- usage summaries (:class:`UsageWindow`): per key and API, counts and bytes over a window,
  published as one signed ``gateway.usage`` event per key, API and window by a callable
  the node injects.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import warnings
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from flashgate.events.domain import GatewayUsage
from flashgate.gateway.authority import Grant

log = structlog.get_logger("flashgate.gateway")

# The contract's keys are strings both handlers share (not aiohttp RequestKey objects).
warnings.filterwarnings("ignore", category=web.NotAppKeyWarning, module=r"flashgate\.gateway")

GRANT = "fg.grant"
BYTES_IN = "fg.bytes_in"
BYTES_OUT = "fg.bytes_out"
UPSTREAM_ERROR = "fg.upstream_error"
API = "fg.api"

#: Latency histogram bounds (seconds): a relayed request is dominated by its upstream.
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
#: How often usage summaries are published (seconds).
USAGE_INTERVAL_S = 60.0

Publish = Callable[[GatewayUsage], Awaitable[None]]
"""Publishes one usage summary (signed and sent by the node)."""


@dataclass
class _KeyStats:
    codes: Counter[str] = field(default_factory=Counter)
    bytes_in: int = 0
    bytes_out: int = 0
    upstream_errors: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS))
    latency_sum: float = 0.0
    latency_count: int = 0


@dataclass
class _Usage:
    requests: int = 0
    errors: int = 0
    upstream_errors: int = 0
    bytes_in: int = 0
    bytes_out: int = 0


@dataclass
class UsageWindow:
    """The usage of each (repository, key id, API) since the last :meth:`take`."""

    node_id: str
    clock_ms: Callable[[], int] = field(default=lambda: int(time.time() * 1000))
    _rows: dict[tuple[str, str, str], _Usage] = field(default_factory=dict)
    _since: int = 0

    def __post_init__(self) -> None:
        self._since = self.clock_ms()

    def add(self, grant: Grant, api: str, status: int, bytes_in: int, bytes_out: int,
            upstream_error: bool) -> None:  # fmt: skip
        row = self._rows.setdefault((grant.repo, grant.key_id, api), _Usage())
        row.requests += 1
        row.errors += status >= 400
        row.upstream_errors += upstream_error
        row.bytes_in += bytes_in
        row.bytes_out += bytes_out

    def take(self) -> list[GatewayUsage]:
        """The summaries of the window that ends now (a new one starts)."""
        now = self.clock_ms()
        rows, self._rows = self._rows, {}
        start, self._since = self._since, now
        return [
            GatewayUsage(
                node_id=self.node_id,
                repo=repo,
                key_id=key_id,
                api=api,  # type: ignore[arg-type]
                window_start=start,
                window_end=max(now, start),
                requests=u.requests,
                errors=u.errors,
                upstream_errors=u.upstream_errors,
                bytes_in=u.bytes_in,
                bytes_out=u.bytes_out,
            )
            for (repo, key_id, api), u in sorted(rows.items())
        ]


@dataclass
class GatewayStats:
    node_id: str
    publish: Publish | None = None
    usage_interval_s: float = USAGE_INTERVAL_S
    in_flight: int = 0
    _keys: dict[tuple[str, str, str], _KeyStats] = field(default_factory=dict)
    _refused: Counter[tuple[str, str]] = field(default_factory=Counter)
    usage: UsageWindow = field(init=False)

    def __post_init__(self) -> None:
        self.usage = UsageWindow(self.node_id)

    def record(self, request: web.BaseRequest, status: int, seconds: float) -> None:
        api = str(request.get(API) or "none")
        grant = request.get(GRANT)
        bytes_in = int(request.get(BYTES_IN) or 0)
        bytes_out = int(request.get(BYTES_OUT) or 0)
        upstream_error = bool(request.get(UPSTREAM_ERROR))
        fields: dict[str, object] = {
            "api": api,
            "method": request.method,
            "path": request.path[:256],
            "status": status,
            "ms": round(seconds * 1000, 2),
            "bytes_in": bytes_in,
            "bytes_out": bytes_out,
        }
        if upstream_error:
            fields["upstream_error"] = True
        if isinstance(grant, Grant):
            fields["repo"], fields["key_id"] = grant.repo, grant.key_id
            stats = self._keys.setdefault((api, grant.repo, grant.key_id), _KeyStats())
            stats.codes[f"{status // 100}xx"] += 1
            stats.bytes_in += bytes_in
            stats.bytes_out += bytes_out
            stats.upstream_errors += upstream_error
            stats.latency_sum += seconds
            stats.latency_count += 1
            for i, bound in enumerate(LATENCY_BUCKETS):
                if seconds <= bound:
                    stats.buckets[i] += 1
                    break
            self.usage.add(grant, api, status, bytes_in, bytes_out, upstream_error)
        else:
            self._refused[(api, str(status))] += 1
        log.info("gateway request", **fields)

    def families(self) -> list[Metric]:
        node = self.node_id
        labels = ["node", "api", "repo", "key_id"]
        requests = CounterMetricFamily(
            "flashgate_gateway_requests",
            "Gateway requests of authenticated API keys, by status class.",
            labels=[*labels, "code"],
        )
        sent = CounterMetricFamily(
            "flashgate_gateway_bytes_sent", "Body bytes relayed to clients.", labels=labels
        )
        received = CounterMetricFamily(
            "flashgate_gateway_bytes_received", "Body bytes received from clients.", labels=labels
        )
        upstream = CounterMetricFamily(
            "flashgate_gateway_upstream_errors",
            "Requests whose upstream failed (unreachable, timeout, 5xx, credential refused).",
            labels=labels,
        )
        latency = HistogramMetricFamily(
            "flashgate_gateway_request_duration_seconds",
            "Time from request to the end of the answer (streams included).",
            labels=labels,
        )
        for (api, repo, key_id), s in sorted(self._keys.items()):
            values = [node, api, repo, key_id]
            for code, count in sorted(s.codes.items()):
                requests.add_metric([*values, code], count)
            sent.add_metric(values, s.bytes_out)
            received.add_metric(values, s.bytes_in)
            upstream.add_metric(values, s.upstream_errors)
            cumulative, buckets = 0, []
            for bound, count in zip(LATENCY_BUCKETS, s.buckets, strict=True):
                cumulative += count
                buckets.append((repr(bound), cumulative))
            buckets.append(("+Inf", s.latency_count))
            latency.add_metric(values, buckets, s.latency_sum)
        refused = CounterMetricFamily(
            "flashgate_gateway_refused",
            "Gateway requests answered before an API key was authenticated (unknown or wrong "
            "key, node loading, malformed), by status.",
            labels=["node", "api", "status"],
        )
        for (api, status), count in sorted(self._refused.items()):
            refused.add_metric([node, api, status], count)
        in_flight = GaugeMetricFamily(
            "flashgate_gateway_in_flight", "Gateway requests being answered.", labels=["node"]
        )
        in_flight.add_metric([node], self.in_flight)
        return [requests, received, sent, upstream, latency, refused, in_flight]

    # --- usage summaries -------------------------------------------------------------------

    async def flush_usage(self) -> int:
        """Publish the window's summaries now (best effort). Returns how many."""
        summaries = self.usage.take()
        if self.publish is None:
            return 0
        for summary in summaries:
            try:
                await self.publish(summary)
            except Exception as exc:  # a broker hiccup must not stop the gateway
                log.warning("usage summary not published", error=type(exc).__name__)
        return len(summaries)

    async def run_usage(self) -> None:
        """Publish summaries every ``usage_interval_s`` until cancelled."""
        while True:
            await asyncio.sleep(self.usage_interval_s)
            await self.flush_usage()


def accounting_middleware(stats: GatewayStats) -> Middleware:
    @web.middleware
    async def accounting(
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        stats.in_flight += 1
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:
            status = 499  # the client went away (or the drain ran out of time)
            raise
        except Exception as exc:
            log.error("gateway handler failed", error=type(exc).__name__)
            raise
        finally:
            stats.in_flight -= 1
            with contextlib.suppress(Exception):
                stats.record(request, status, time.perf_counter() - started)

    return accounting
