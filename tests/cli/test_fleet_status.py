"""``fleet status --secrets``: why each secret a node has not loaded is pending."""

from __future__ import annotations

import json

import msgspec

from flashgate.cli.fleet_status import online_row, ready, render
from flashgate.events.node_status import (
    FastPathStatus,
    HeldSecret,
    PendingSecret,
    StatusResponse,
)


def _answer(*, is_ready: bool = True) -> StatusResponse:
    return StatusResponse(
        fleet="demo",
        node_id="node-2",
        request_id="r" * 16,
        issued_at=1_700_000_000_000,
        started_at=1_700_000_000_000,
        epoch=1,
        roster_serial=1,
        secrets=[HeldSecret("pay.db", 2, 1)],
        pending=[PendingSecret("pay.s3", "no_quorum"), PendingSecret("ops.key", "other_epoch")],
        secrets_held=1,
        ready=is_ready,
    )


def test_secrets_table_names_each_pending_secret_and_its_reason() -> None:
    expected = {"pay.db": 2, "pay.s3": 1, "ops.key": 1}
    row = online_row(_answer(), expected)
    assert (row.pending, row.missing) == (2, 2)
    table = render([row], expected, with_secrets=True, as_json=False).splitlines()
    assert any(line.split() == ["node-2", "pay.s3", "no_quorum"] for line in table), table
    assert any(line.split() == ["node-2", "ops.key", "other_epoch"] for line in table), table
    plain = render([row], expected, with_secrets=False, as_json=False)
    assert "no_quorum" not in plain  # the count only, as before


def test_json_with_secrets_carries_the_reasons() -> None:
    expected = {"pay.db": 2, "pay.s3": 1, "ops.key": 1}
    row = online_row(_answer(), expected)
    [node] = json.loads(render([row], expected, with_secrets=True, as_json=True))["nodes"]
    assert node["pending_secrets"] == {"pay.s3": "no_quorum", "ops.key": "other_epoch"}
    [bare] = json.loads(render([row], expected, with_secrets=False, as_json=True))["nodes"]
    assert "pending_secrets" not in bare and "secrets" not in bare


def test_a_node_that_answers_before_its_buckets_are_loaded_is_not_ready() -> None:
    """An empty fleet: a node that answers with nothing held and nothing missing, before
    it has bound and read its buckets, is loading, and the fleet is not ready."""
    empty = msgspec.structs.replace(_answer(is_ready=False), secrets=[], pending=[])
    row = online_row(empty, {})
    assert (row.status, row.missing) == ("loading", 0)
    assert not ready([row])
    loaded = online_row(msgspec.structs.replace(empty, ready=True), {})
    assert loaded.status == "online" and ready([loaded])


def test_the_fast_path_is_shown_per_ring_term() -> None:
    """DESIGN §6: how many secrets are on the fast path, per ring term (current or old)."""
    current, old = "a" * 32, "b" * 32
    answer = msgspec.structs.replace(
        _answer(),
        fast_path=FastPathStatus(
            current_term=current,
            terms_opened=2,
            wraps_per_term={current: 7, old: 3},
            on_old_terms=3,
            opened_fast=9,
            bad_wraps={"node-4": 1},
        ),
    )
    row = online_row(answer, {"pay.db": 2})
    text = render([row], {"pay.db": 2}, with_secrets=False, as_json=False).splitlines()
    assert any(line.split() == [current, "7", "current"] for line in text), text
    assert any(line.split()[:2] == [old, "3"] and "old" in line for line in text), text
    assert any(line.split() == ["node-2", "1"] for line in text), text
    [node] = json.loads(render([row], {"pay.db": 2}, with_secrets=False, as_json=True))["nodes"]
    assert node["fast_path"]["secrets_per_term"] == {current: 7, old: 3}
    assert node["fast_path"]["on_old_terms"] == 3
    without = render([online_row(_answer(), {})], {}, with_secrets=False, as_json=False)
    assert "fast path" not in without
