"""``flashgate fleet status``: every node of the roster, and whether it holds every secret."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import click
from tenacity import AsyncRetrying, retry_if_exception, wait_fixed

from flashgate.cli.home import load_home_roster, resolve_home
from flashgate.cli.options import home_option, json_option
from flashgate.cli.session import AdminSession, run
from flashgate.cli.terminal import spinner, table
from flashgate.errors import FlashgateError, HomeFileError, NotReady
from flashgate.events.node_status import StatusResponse
from flashgate.events.subjects import secret_key


@dataclass
class NodeRow:
    node: str
    #: online | loading (answers; buckets not bound or loaded yet) | offline |
    #: unverified (answer not signed by it) | revoked
    status: str
    epoch: int | None
    held: int
    pending: int
    misbehaviour: int
    missing: int  # current secrets it does not hold (at the current version)
    latency_ms: float | None
    secrets: dict[str, int] | None = None  # key -> version held (with --secrets)
    epochs: dict[str, int] | None = None  # key -> fleet key epoch it was opened under
    pending_secrets: dict[str, str] | None = None  # key -> why it is pending (--secrets)
    tombstones: int = 0  # admin-signed deletions and revocations it keeps for good
    #: The fast path as the node sees it (DESIGN §6): secrets with a fast wrap per ring
    #: term, the current term, and bad wraps it found (None: a node without one).
    fast_path: dict[str, object] | None = None


PAGE = 1000
COLUMNS = [
    "NODE", "STATUS", "EPOCH", "HELD", "PENDING", "MISSING", "MISBEHAVIOUR", "TOMBSTONES",
    "PEER RTT ms",
]  # fmt: skip


async def expected_secrets(session: AdminSession) -> dict[str, int]:
    """Every live secret (key -> current version) and API key (key -> 1), page by page."""
    out: dict[str, int] = {}
    offset = 0
    while True:
        page = (await session.query("secrets", limit=PAGE, offset=offset)).secrets or []
        out.update({secret_key(s.repo, s.name): s.current_version for s in page})
        if len(page) < PAGE:
            break
        offset += PAGE
    offset = 0
    while True:
        keys = (await session.query("apikeys", limit=PAGE, offset=offset)).api_keys or []
        out.update({secret_key(k.repo, k.key_id): 1 for k in keys})
        if len(keys) < PAGE:
            break
        offset += PAGE
    return out


async def snapshot(session: AdminSession, root: Path) -> tuple[list[NodeRow], dict[str, int]]:
    expected = await expected_secrets(session)
    ids = [(n.id, n.status) for n in load_home_roster(root, session.descriptor).nodes]
    statuses = await asyncio.gather(
        *(session.status(i, include_secrets=True) for i, st in ids if st == "active")
    )
    by_id = {s.node_id: s for s in statuses if s is not None}
    rows = []
    for node_id, state in ids:
        status = by_id.get(node_id)
        if state != "active":
            rows.append(NodeRow(node_id, "revoked", None, 0, 0, 0, 0, None))
            continue
        if status is None:
            shown = "unverified" if node_id in session.unverified else "offline"
            rows.append(NodeRow(node_id, shown, None, 0, 0, 0, len(expected), None))
            continue
        rows.append(online_row(status, expected))
    return rows, expected


def online_row(status: StatusResponse, expected: dict[str, int]) -> NodeRow:
    """The row of a node that answered (its signed status, asked with its secrets)."""
    held = {(s.key, s.version) for s in status.secrets}
    missing = sum(1 for k, v in expected.items() if (k, v) not in held)
    latencies = [p.last_latency_ms for p in status.peers if p.last_latency_ms is not None]
    return NodeRow(
        status.node_id,
        "online" if status.ready else "loading",
        status.epoch,
        status.secrets_held,
        len(status.pending),
        sum(status.misbehaviour.values()),
        missing,
        round(sum(latencies) / len(latencies), 1) if latencies else None,
        {s.key: s.version for s in status.secrets},
        {s.key: s.epoch for s in status.secrets if s.epoch is not None},
        {p.key: p.reason for p in status.pending},
        status.tombstones,
        _fast_path(status),
    )


def _fast_path(status: StatusResponse) -> dict[str, object] | None:
    fast = status.fast_path
    if fast is None:
        return None
    return {
        "current_term": fast.current_term,
        "secrets_per_term": dict(fast.wraps_per_term),
        "on_old_terms": fast.on_old_terms,
        "opened_fast": fast.opened_fast,
        "bad_wraps": sum(fast.bad_wraps.values()) + fast.unattributed_bad_wraps,
    }


def ready(rows: list[NodeRow]) -> bool:
    return all(r.status == "revoked" or (r.status == "online" and r.missing == 0) for r in rows)


@click.command("status")
@click.option(
    "--wait",
    is_flag=True,
    help="Block until every node is online (its buckets bound and loaded) and holds every "
    "current secret, and the backend's command consumer is in place.",
)
@click.option("--timeout", type=float, default=120.0, show_default=True)
@click.option(
    "--secrets",
    "with_secrets",
    is_flag=True,
    help="Also each node's pending secrets and why (no_quorum, ...); with --json, its held "
    "secrets and versions too (never values).",
)
@home_option
@json_option
def status(
    wait: bool, timeout: float, with_secrets: bool, home: Path | None, as_json: bool
) -> None:
    """Nodes (online, epoch, secrets held, pending, misbehaviour) and secrets."""
    root = resolve_home(home)

    deadline = time.monotonic() + timeout

    async def attempt() -> tuple[list[NodeRow], dict[str, int]]:
        async with AdminSession(root) as session:
            with spinner("waiting for the fleet", wait and not as_json):
                while True:
                    rows, expected = await snapshot(session, root)
                    if not wait:
                        return rows, expected
                    consuming = await session.backend_consuming()
                    if ready(rows) and consuming:
                        return rows, expected
                    if time.monotonic() > deadline:
                        summary = _summary(rows, expected)
                        if not consuming:
                            summary += "; the backend is not consuming commands (its command "
                            summary += "consumer is missing: is the backend running?)"
                        raise NotReady(summary)
                    await asyncio.sleep(0.5)

    # With --wait, a failure to connect or to read is the system still starting: try again
    # every second until the deadline (then the last error is raised as it is). A home file
    # does not appear by waiting, and NotReady is the deadline itself.
    retrying = AsyncRetrying(
        retry=retry_if_exception(
            lambda e: (
                wait
                and isinstance(e, FlashgateError)
                and not isinstance(e, (NotReady, HomeFileError))
            )
        ),
        wait=wait_fixed(1.0),
        stop=lambda _: time.monotonic() > deadline,
        reraise=True,
    )
    rows, expected = run(retrying(attempt))
    click.echo(render(rows, expected, with_secrets=with_secrets, as_json=as_json))


def render(
    rows: list[NodeRow], expected: dict[str, int], *, with_secrets: bool, as_json: bool
) -> str:
    if as_json:
        nodes = [asdict(r) for r in rows]
        for row in nodes if not with_secrets else []:
            row.pop("secrets")
            row.pop("epochs")
            row.pop("pending_secrets")
        return json.dumps(
            {"ready": ready(rows), "secrets": len(expected), "nodes": nodes}, sort_keys=True
        )
    lines = [
        table(
            COLUMNS,
            [
                [
                    r.node,
                    r.status,
                    r.epoch if r.epoch else "-",
                    r.held,
                    r.pending,
                    r.missing,
                    r.misbehaviour,
                    r.tombstones if r.status == "online" or r.tombstones else "-",
                    r.latency_ms if r.latency_ms is not None else "-",
                ]
                for r in rows
            ],
            right={2, 3, 4, 5, 6, 7, 8},
        )
    ]
    pending = [
        (r.node, k, why) for r in rows for k, why in sorted((r.pending_secrets or {}).items())
    ]
    if with_secrets and pending:
        lines += ["", table(["NODE", "PENDING SECRET", "REASON"], pending, right=set())]
    lines += _fast_path_lines(rows)
    lines.append(
        f"\n{len(expected)} current secret(s) and API key(s); "
        f"{'every node holds every one' if ready(rows) else 'not all held yet'}"
    )
    return "\n".join(lines)


def _fast_path_lines(rows: list[NodeRow]) -> list[str]:
    """Secrets on the fast path per ring term (the wraps bucket, as the first online node
    with a fast path sees it) and bad fast wraps per node."""
    seen = [r for r in rows if r.status in ("online", "loading") and r.fast_path is not None]
    if not seen:
        return []
    fast = seen[0].fast_path or {}
    current = fast.get("current_term")
    per_term = fast.get("secrets_per_term") or {}
    assert isinstance(per_term, dict)
    terms = [
        [str(term), count, "current" if term == current else "old (being re-made)"]
        for term, count in sorted(per_term.items(), key=lambda kv: kv[0] != current)
    ]
    lines = ["", f"fast path (as {seen[0].node} sees it):"]
    if terms:
        lines.append(table(["RING TERM", "SECRETS", "STATE"], terms, right={1}))
    else:
        lines.append("no fast wraps yet: every node loads by the cold path")
    bad = [(r.node, r.fast_path.get("bad_wraps")) for r in seen if r.fast_path]
    bad = [(node, count) for node, count in bad if count]
    if bad:
        lines.append(table(["NODE", "BAD FAST WRAPS FOUND"], bad, right={1}))
    return lines


def _summary(rows: list[NodeRow], expected: dict[str, int]) -> str:
    offline = [r.node for r in rows if r.status == "offline"]
    unverified = [r.node for r in rows if r.status == "unverified"]
    loading = [r.node for r in rows if r.status == "loading"]
    behind = [f"{r.node} ({r.missing} missing)" for r in rows if r.status == "online" and r.missing]
    return (
        f"fleet not ready: {len(expected)} secret(s); offline: {offline or 'none'}; "
        f"loading: {loading or 'none'}; behind: {behind or 'none'}"
        + (f"; answers that do not verify: {unverified}" if unverified else "")
    )
