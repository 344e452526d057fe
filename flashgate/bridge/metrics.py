"""Optional Prometheus metrics for a Bridge Node (``--metrics-port``).

``GET /metrics`` answers the node's counts and gauges, and those of its gateway when it
serves one (``flashgate_gateway_*``, per repository and API key id:
:meth:`flashgate.gateway.accounting.GatewayStats.families`); anything else is 404. Names, versions
and reasons only, never a value. The metric families and the exposition (text format 0.0.4,
what a scraper gets when it names no format) are ``prometheus_client``'s.

The listener stays asyncio's rather than ``prometheus_client.start_http_server``: that server
answers from a thread of its own, and the snapshot reads the node's vault, loader and peer
tables, which only the node's event loop may touch. Here the snapshot runs on the loop, and
the front end is only the request line and a ``Connection: close`` answer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable, Iterable

from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from flashgate.events.node_status import StatusResponse

_READ_TIMEOUT_S = 5.0
_CONTENT_TYPE = choose_encoder("")[1].encode()  # text/plain; version=0.0.4; charset=utf-8
_MAX_HEADERS = 100


class _Families(Collector):
    """A collector over metric families computed already (one scrape's worth)."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self._families


def families(status: StatusResponse, partials_computed: int) -> list[Metric]:
    """The node's metrics, read from one status snapshot."""
    node_id = status.node_id

    def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
        family = GaugeMetricFamily(name, doc, labels=["node"])
        family.add_metric([node_id], value)
        return family

    def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
        family = CounterMetricFamily(name, doc, labels=["node"])
        family.add_metric([node_id], value)
        return family

    pending = GaugeMetricFamily(
        "flashgate_secrets_pending", "Secrets not loaded yet, by reason.", labels=["node", "reason"]
    )
    for reason, count in sorted(Counter(p.reason for p in status.pending).items()):
        pending.add_metric([node_id, reason], count)
    refused = CounterMetricFamily(
        "flashgate_share_requests_refused_total",
        "Share requests refused.",
        labels=["node", "reason"],
    )
    for reason, count in sorted(status.share_requests_refused.items()):
        refused.add_metric([node_id, reason], count)
    misbehaviour = CounterMetricFamily(
        "flashgate_peer_misbehaviour_total",
        "Faulty partials proven, by peer.",
        labels=["node", "peer"],
    )
    for peer, count in sorted(status.misbehaviour.items()):
        misbehaviour.add_metric([node_id, peer], count)
    latency = GaugeMetricFamily(
        "flashgate_peer_latency_ms", "Last share round-trip per peer.", labels=["node", "peer"]
    )
    for p in status.peers:
        if p.last_latency_ms is not None:
            latency.add_metric([node_id, p.node_id], p.last_latency_ms)
    return [
        *_fast_path_families(status),
        gauge("flashgate_secrets_held", "Secrets held in memory.", status.secrets_held),
        gauge(
            "flashgate_tombstones_kept",
            "Admin-signed deletions and API key revocations kept for good.",
            status.tombstones,
        ),
        pending,
        counter(
            "flashgate_share_requests_served_total",
            "Share requests answered.",
            status.share_requests_served,
        ),
        refused,
        counter(
            "flashgate_partials_computed_total", "Partial decryptions computed.", partials_computed
        ),
        misbehaviour,
        latency,
        gauge("flashgate_roster_serial", "Roster serial in force.", status.roster_serial),
    ]


def _fast_path_families(status: StatusResponse) -> list[Metric]:
    """The fast path (DESIGN §6): secrets per ring term, those still on old terms, what
    this node opened by it, and bad fast wraps per writer."""
    fast = status.fast_path
    if fast is None:
        return []
    node_id = status.node_id
    per_term = GaugeMetricFamily(
        "flashgate_fast_path_secrets",
        "Secrets with a fast wrap in the wraps bucket, per ring term.",
        labels=["node", "term"],
    )
    for term, count in sorted(fast.wraps_per_term.items()):
        per_term.add_metric([node_id, term], count)
    old = GaugeMetricFamily(
        "flashgate_fast_path_old_term_secrets",
        "Fast wraps still under a ring term other than the current one.",
        labels=["node"],
    )
    old.add_metric([node_id], fast.on_old_terms)
    opened = CounterMetricFamily(
        "flashgate_fast_path_opened", "Envelopes opened by the fast path.", labels=["node"]
    )
    opened.add_metric([node_id], fast.opened_fast)
    bad = CounterMetricFamily(
        "flashgate_fast_path_bad_wraps",
        "Fast wraps that did not open their envelope, by writer (unsigned: 'unattributed').",
        labels=["node", "writer"],
    )
    for writer, count in sorted(fast.bad_wraps.items()):
        bad.add_metric([node_id, writer], count)
    if fast.unattributed_bad_wraps:
        bad.add_metric([node_id, "unattributed"], fast.unattributed_bad_wraps)
    return [per_term, old, opened, bad]


def render(metric_families: Iterable[Metric]) -> bytes:
    """The text exposition (0.0.4) of ``metric_families``."""
    encoder, _ = choose_encoder("")
    return encoder(_Families(metric_families))


async def serve(
    host: str,
    port: int,
    snapshot: Callable[[], bytes],
    *,
    ready: Callable[[], bool] = lambda: True,
) -> asyncio.Server:
    """Listen on ``host:port``; ``GET /metrics``: ``snapshot`` renders the metrics (text
    0.0.4), on the loop; ``GET /healthz``: 200 once ``ready()`` (the node's buckets bound
    and their initial values loaded), 503 before (for health checks)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            request = await asyncio.wait_for(reader.readline(), _READ_TIMEOUT_S)
            for _ in range(_MAX_HEADERS):  # read past the headers; none changes the answer
                if await asyncio.wait_for(reader.readline(), _READ_TIMEOUT_S) in (
                    b"\r\n",
                    b"\n",
                    b"",
                ):
                    break
            parts = request.split()
            if len(parts) >= 2 and parts[0] == b"GET" and parts[1] == b"/metrics":
                body, status = snapshot(), b"200 OK"
                ctype = _CONTENT_TYPE
            elif len(parts) >= 2 and parts[0] == b"GET" and parts[1] == b"/healthz":
                ctype = b"text/plain"
                body, status = (
                    (b"ready\n", b"200 OK")
                    if ready()
                    else (b"starting\n", b"503 Service Unavailable")
                )
            else:
                body, status, ctype = b"not found\n", b"404 Not Found", b"text/plain"
            writer.write(
                b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
                b"Connection: close\r\n\r\n%s" % (status, ctype, len(body), body)
            )
            await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, host, port)
