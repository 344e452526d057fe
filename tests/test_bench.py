"""Every bench script still runs: its smallest mode (``--smoke``), with JSON output.

The numbers are not looked at (no timing assertion): only that each script runs through
every measurement and reports it. bridge.py and e2e.py start process clusters: slow tier.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

# Each test runs a bench script as its own process.
pytestmark = pytest.mark.processes

ROOT = Path(__file__).resolve().parents[1]


def run_bench(script: str, *args: str, timeout: float = 300) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--smoke", "--json", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    document: dict[str, Any] = json.loads(out.stdout)
    assert document["mode"] == "smoke"
    assert document["machine"]["usable_cores"] >= 1
    return document


def test_crypto() -> None:
    document = run_bench("crypto.py")
    keys = {row["key"] for row in document["rows"]}
    assert {"deal", "partial.ratio", "throughput.threads_w1", "combine", "jwe.total"} <= keys
    assert "proof.verify" in keys and "baseline.rsa_oaep" in keys


def test_events() -> None:
    document = run_bench("events.py")
    assert {r["key"] for r in document["codecs"]} >= {
        "envelope.encode",
        "event.decode",
        "proof.worker",
        "proof.node_full",
        "proof.decode_accepted",
    }
    assert [r["key"] for r in document["broker"]] == [
        "kv.paced_watch",
        "kv.paced_ack",
        "kv.burst_watch",
    ]
    reads = document["reads"]
    assert [r["name"].split()[0] for r in reads] == ["follow", "follow_batches"]
    # every value of the bucket read back, by both, each round (the warm-up's 50 too)
    smoke_puts = 20 + 50 + 50
    assert all(r["count"] == smoke_puts and len(r["wall"]) == 3 for r in reads)


def test_node_reports() -> None:
    document = run_bench("node_reports.py")
    assert [r["key"] for r in document["rows"]] == [
        "relayed",
        "rate_limited",
        "garbage",
        "bad_signature",
        "replayed",
    ]


def test_backend_with_its_loop_profile() -> None:
    document = run_bench("backend.py", "--profile")
    assert [r["key"] for r in document["rows"]] == ["throughput", "latency"]
    assert all(r["seen"] == r["count"] for r in document["rows"])
    assert document["stages"]["sqlite"]["sampled"]["samples"] > 0


@pytest.mark.slow
def test_bridge() -> None:
    document = run_bench("bridge.py")
    (scenario,) = document["scenarios"]
    assert scenario["error"] is None
    assert scenario["cold_start"]["complete"]
    assert scenario["rotation"]["verified"]


@pytest.mark.slow
def test_bridge_fast_path() -> None:
    # --against this very tree: the paired first joins run, from both "revisions"
    document = run_bench("bridge.py", "--fast-path", "--against", str(ROOT), "--paired", "1")
    result = document["fast_path"]
    assert result["against"].startswith(str(ROOT))
    (join,) = result["joins"]
    assert {len(times) for times in join["paired"].values()} == {1}
    assert set(join["paired"]) == {"this", "against", "this_restart", "against_restart"}
    assert join["fast"]["opened_fast"] == join["secrets"]
    assert join["fast"]["connected_to_held_s"] is not None
    for field in ("cpu_s", "worker_cpu_s", "server_cpu_s", "machine_busy"):
        assert join["fast"][field] is not None
    assert join["cold"]["connected_to_held_s"] is not None
    assert join["restart"]["connected_to_held_s"] is not None
    assert join["restart"]["opened_fast"] == join["secrets"]
    fleet = result["fleet"]
    assert fleet["fleet_start_s"] is not None and fleet["rotation_purged_s"] is not None


@pytest.mark.slow
def test_bridge_fast_path_on_a_rewrapped_fleet() -> None:
    """Every envelope as a fleet key rotation leaves it (a node's re-wrap attestation
    each): a joining node proves and holds them all by the fast path."""
    document = run_bench("bridge.py", "--fast-path", "--rewrapped", "--fleet-secrets", "0")
    result = document["fast_path"]
    assert result["rewrapped"] and not result["errors"]
    (join,) = result["joins"]
    assert join["fast"]["held"] == join["fast"]["opened_fast"] == join["secrets"]
    assert join["restart"]["held"] == join["secrets"]


@pytest.mark.slow
def test_e2e() -> None:
    document = run_bench("e2e.py", "--insecure-test-key", timeout=600)
    assert {r["key"] for r in document["rows"]} >= {"sequential.held_all", "paced.held_all"}
    assert document["rotation"]["epoch"] == 2


def test_gateway() -> None:
    document = run_bench("gateway.py")
    keys = {r["key"] for r in document["rows"]}
    assert {"fixed.get.4k", "saturation.get.1024k", "saturation.put.1024k"} <= keys
    assert all(r["direct"]["errors"] == 0 and r["gateway"]["errors"] == 0 for r in document["rows"])
    assert document["verify"]["median_s"] > 0


def test_gateway_ai() -> None:
    document = run_bench("gateway_ai.py")
    assert [r["key"] for r in document["rows"]] == ["chat.direct", "chat.gateway"]
    assert all(r["fixed_latency"]["count"] > 0 for r in document["rows"])
    assert [g["measure"] for g in document["goals"]] == [
        "added p50 (ms)",
        "added p99 (ms)",
        "gateway / direct throughput",
    ]
