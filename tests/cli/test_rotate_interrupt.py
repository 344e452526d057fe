"""Ctrl-C during ``fleet rotate-key`` says that running it again resumes. A real
nats-server; the test plays a backend that never answers the rotation query, and sends
SIGINT once the command has asked."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from flashgate.events.subjects import FleetNames
from tests.backend.conftest import make_fleet
from tests.helpers import TEST_PASSPHRASE

pytestmark = pytest.mark.nats


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
async def test_ctrl_c_says_how_to_resume(
    tmp_path: Path, nats_url: str, nc: Client, as_json: bool
) -> None:
    fleet = make_fleet(tmp_path / "fleets")
    home = tmp_path / "home"
    shutil.copytree(fleet.dir, home / "fleet")
    (home / "config.json").write_text(json.dumps({"nats": [nats_url]}))

    asked = asyncio.Event()

    async def silent_backend(msg: Msg) -> None:
        asked.set()  # and never answer

    await nc.subscribe(FleetNames(fleet.name).query_subject("rotation"), cb=silent_backend)
    await nc.flush()
    env = {**os.environ, "FLASHGATE_PASSPHRASE": TEST_PASSPHRASE}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "flashgate.cli.main",
        "fleet",
        "rotate-key",
        "--home",
        str(home),
        *(["--json"] if as_json else []),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        await asyncio.wait_for(asked.wait(), 60)
        proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
    text = err.decode()
    assert proc.returncode == 130, text
    assert "Traceback" not in text, text
    lines = text.splitlines()
    assert len(lines) == 1, text
    assert "interrupted" in lines[0] and "again to resume" in lines[0], text
    assert "flashgate fleet rotate-key" in lines[0], text
    if as_json:
        assert json.loads(out)["error"]["code"] == "interrupted"
    else:
        assert out == b""
