"""The bridge's /metrics endpoint: prometheus_client's exposition behind the node's listener."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

import pytest

from flashgate.bridge import metrics
from flashgate.events.node_status import PeerStatus, PendingSecret, StatusResponse

STATUS = StatusResponse(
    fleet="f",
    node_id="node-1",
    request_id=b"\x00" * 16,
    issued_at=1,
    started_at=1,
    epoch=1,
    roster_serial=3,
    peers=[PeerStatus("node-2", 5, 1.25), PeerStatus("node-3", 5, None)],
    pending=[PendingSecret("a.b", "no_quorum"), PendingSecret("a.c", "no_quorum")],
    secrets_held=2,
    share_requests_served=7,
    share_requests_refused={"replay": 2},
    misbehaviour={"node-3": 1},
)


def test_exposition_names_and_labels() -> None:
    text = metrics.render(metrics.families(STATUS, 4)).decode()
    lines = text.splitlines()
    assert 'flashgate_secrets_held{node="node-1"} 2.0' in lines
    assert 'flashgate_secrets_pending{node="node-1",reason="no_quorum"} 2.0' in lines
    assert "# TYPE flashgate_share_requests_served_total counter" in lines
    assert 'flashgate_share_requests_served_total{node="node-1"} 7.0' in lines
    assert 'flashgate_share_requests_refused_total{node="node-1",reason="replay"} 2.0' in lines
    assert 'flashgate_partials_computed_total{node="node-1"} 4.0' in lines
    assert 'flashgate_peer_misbehaviour_total{node="node-1",peer="node-3"} 1.0' in lines
    assert 'flashgate_peer_latency_ms{node="node-1",peer="node-2"} 1.25' in lines
    assert not any('peer="node-3"' in line for line in lines if "latency" in line)
    assert 'flashgate_roster_serial{node="node-1"} 3.0' in lines
    assert "_created" not in text


def _get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310 (a local test URL)
            return r.status, r.headers["Content-Type"], r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read().decode()


async def test_serves_get_metrics_and_nothing_else() -> None:
    server = await metrics.serve(
        "127.0.0.1", 0, lambda: metrics.render(metrics.families(STATUS, 4))
    )
    port = server.sockets[0].getsockname()[1]
    try:
        status, ctype, body = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        assert ctype == "text/plain; version=0.0.4; charset=utf-8"
        assert 'flashgate_secrets_held{node="node-1"} 2.0' in body
        status, _, _ = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/")
        assert status == 404
    finally:
        server.close()
        await server.wait_closed()
    with pytest.raises(OSError):
        await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics")


async def test_healthz_is_ready_only_once_the_node_says_so() -> None:
    """A node that answers is not ready until its buckets are bound and loaded: the
    health check reads /healthz, 503 until then."""
    ready = False
    server = await metrics.serve(
        "127.0.0.1", 0, lambda: metrics.render(metrics.families(STATUS, 4)), ready=lambda: ready
    )
    port = server.sockets[0].getsockname()[1]
    try:
        status, _, body = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/healthz")
        assert (status, body) == (503, "starting\n")
        ready = True
        status, _, body = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/healthz")
        assert (status, body) == (200, "ready\n")
    finally:
        server.close()
        await server.wait_closed()
