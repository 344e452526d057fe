"""Optional Prometheus metrics for a Bridge Node (``--metrics-port``).

A minimal HTTP endpoint serving the text exposition format (version 0.0.4) on
``GET /metrics``; anything else is 404. Counts and gauges only: names, versions and
reasons, never a value. Written here rather than with ``prometheus_client`` to keep the
node's dependencies to what it already has; the format is a few lines.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable

from flashgate.events.node import StatusResponse

Sample = tuple[str, dict[str, str], float]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render(families: Iterable[tuple[str, str, str, list[Sample]]]) -> bytes:
    lines: list[str] = []
    for name, kind, help_text, samples in families:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for sample_name, labels, value in samples:
            label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
            lines.append(
                f"{sample_name}{{{label_text}}} {value}" if label_text else f"{sample_name} {value}"
            )
    return ("\n".join(lines) + "\n").encode()


def families(
    status: StatusResponse, partials_computed: int
) -> list[tuple[str, str, str, list[Sample]]]:
    node = {"node": status.node_id}
    return [
        (
            "flashgate_secrets_held",
            "gauge",
            "Secrets held in memory.",
            [("flashgate_secrets_held", node, float(status.secrets_held))],
        ),
        (
            "flashgate_secrets_pending",
            "gauge",
            "Secrets not loaded yet, by reason.",
            [
                ("flashgate_secrets_pending", {**node, "reason": r}, float(c))
                for r, c in _count(p.reason for p in status.pending).items()
            ],
        ),
        (
            "flashgate_share_requests_served_total",
            "counter",
            "Share requests answered.",
            [("flashgate_share_requests_served_total", node, float(status.share_requests_served))],
        ),
        (
            "flashgate_share_requests_refused_total",
            "counter",
            "Share requests refused.",
            [
                ("flashgate_share_requests_refused_total", {**node, "reason": r}, float(c))
                for r, c in sorted(status.share_requests_refused.items())
            ],
        ),
        (
            "flashgate_partials_computed_total",
            "counter",
            "Partial decryptions computed.",
            [("flashgate_partials_computed_total", node, float(partials_computed))],
        ),
        (
            "flashgate_peer_misbehaviour_total",
            "counter",
            "Faulty partials proven, by peer.",
            [
                ("flashgate_peer_misbehaviour_total", {**node, "peer": p}, float(c))
                for p, c in sorted(status.misbehaviour.items())
            ],
        ),
        (
            "flashgate_peer_latency_ms",
            "gauge",
            "Last share round-trip per peer.",
            [
                ("flashgate_peer_latency_ms", {**node, "peer": p.node_id}, float(p.last_latency_ms))
                for p in status.peers
                if p.last_latency_ms is not None
            ],
        ),
        (
            "flashgate_roster_serial",
            "gauge",
            "Roster serial in force.",
            [("flashgate_roster_serial", node, float(status.roster_serial))],
        ),
    ]


def _count(reasons: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for reason in reasons:
        out[reason] = out.get(reason, 0) + 1
    return dict(sorted(out.items()))


async def serve(host: str, port: int, snapshot: Callable[[], bytes]) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            request = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            parts = request.split()
            if len(parts) >= 2 and parts[0] == b"GET" and parts[1] == b"/metrics":
                body, status = snapshot(), b"200 OK"
                ctype = b"text/plain; version=0.0.4; charset=utf-8"
            else:
                body, status, ctype = b"not found\n", b"404 Not Found", b"text/plain"
            writer.write(
                b"HTTP/1.1 "
                + status
                + b"\r\nContent-Type: "
                + ctype
                + b"\r\nContent-Length: "
                + str(len(body)).encode()
                + b"\r\nConnection: close\r\n\r\n"
                + body
            )
            await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, host, port)
