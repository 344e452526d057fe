"""``flashgate node revoke`` against a real backend (SQLite) on a real nats-server: a
revocation that leaves fewer active nodes than the threshold is refused without --force;
one that leaves exactly t (no node may fail any more) is made with a warning."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from flashgate.backend import db
from flashgate.backend.service import Backend, BackendSettings
from flashgate.cli.home import HomeConfig, save_config
from flashgate.cli.node_revoke import check_revocation
from flashgate.errors import BelowThreshold
from flashgate.events.fleet import ROSTER_CODEC
from tests.support.cli import Result, run_cli
from tests.support.databases import sqlite_url
from tests.support.fleets import make_fleet

pytestmark = pytest.mark.nats


@pytest.fixture
async def home(tmp_path: Path, nats_url: str) -> AsyncIterator[Path]:
    """An admin home of a 2-of-3 fleet (node-1..node-3) and its backend, running."""
    fleet = make_fleet(tmp_path / "fleets")
    home = tmp_path / "home"
    shutil.copytree(fleet.dir, home / "fleet")
    save_config(home, HomeConfig(nats=[nats_url]))  # 0600, as the CLI writes it
    url = sqlite_url(tmp_path / "backend.db")
    await asyncio.to_thread(db.migrate, url)
    service = Backend(BackendSettings(nats_urls=[nats_url], db_url=url, fleet_dir=fleet.dir))
    await service.start()
    yield home
    await service.stop()


async def revoke(home: Path, *args: str) -> Result:
    return await asyncio.to_thread(run_cli, "node", "revoke", *args, "--home", home)


def roster_of(home: Path) -> dict[str, str]:
    roster = ROSTER_CODEC.decode((home / "fleet" / "roster.json").read_bytes())
    return {n.id: n.status for n in roster.nodes}


async def test_revocations_down_to_and_below_the_threshold(home: Path) -> None:
    # 3 -> 2 active, threshold 2: made, with a warning that no node may fail any more
    first = await revoke(home, "node-1")
    assert first.returncode == 0, str(first)
    warning = first.err.lower()
    assert "warning" in warning and "2 active node(s)" in warning, str(first)
    assert "can lose no node" in warning and "ceremony" in warning, str(first)
    assert roster_of(home)["node-1"] == "revoked"

    # 2 -> 1 active, under the threshold: refused, nothing changes
    refused = await revoke(home, "node-2")
    assert refused.returncode == 1, str(refused)
    line = refused.err.strip()
    assert len(refused.err.splitlines()) == 1 and "Traceback" not in refused.err
    assert "fewer than the threshold 2" in line and "--force" in line, line
    assert "ceremony" in line, line
    assert roster_of(home)["node-2"] == "active"

    # ... under --json: the same refusal as a document
    as_json = await revoke(home, "node-2", "--json")
    assert as_json.returncode == 1
    assert json.loads(as_json.stdout)["error"]["code"] == "below_threshold"

    # --force: made, and said what it means
    forced = await revoke(home, "node-2", "--force", "--json")
    assert forced.returncode == 0, str(forced)
    doc = json.loads(forced.stdout)
    assert doc["node_id"] == "node-2" and "threshold" in doc["warning"]
    assert "fewer than the threshold" in forced.err
    assert roster_of(home) == {"node-1": "revoked", "node-2": "revoked", "node-3": "active"}


def test_check_revocation_margins() -> None:
    fleet_nodes = make_fleet_roster(5)
    assert check_revocation(fleet_nodes, 3, "node-1", force=False) is None  # 4 left of t=3
    two_left = check_revocation(fleet_nodes[1:], 3, "node-2", force=False)
    assert two_left is not None and "can lose no node" in two_left  # 3 left of t=3
    with pytest.raises(BelowThreshold, match="leaves 2 active node"):
        check_revocation(fleet_nodes[2:], 3, "node-3", force=False)
    forced = check_revocation(fleet_nodes[2:], 3, "node-3", force=True)
    assert forced is not None and "fewer than the threshold 3" in forced


def make_fleet_roster(n: int) -> list[tuple[str, str]]:
    return [(f"node-{i}", "active") for i in range(1, n + 1)]
