"""Ctrl-C during ``fleet rotate-key`` says that running it again resumes (and elsewhere, under
``--json``, ends as an "aborted" document). A real
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

from flashgate.cli.home import HomeConfig, save_config
from flashgate.events.subjects import FleetNames
from tests.support.fleets import make_fleet
from tests.support.material import TEST_PASSPHRASE

pytestmark = [pytest.mark.nats, pytest.mark.processes]


def _ctrl_c_as_from_a_terminal() -> None:
    """The CLI as a terminal starts it: SIGINT at its default. A suite started with SIGINT
    ignored (``nohup make test &`` from a script) would pass that on, and the CLI, rightly
    ignoring Ctrl-C as a background job does, would wait for its query to time out."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


async def interrupt_while_querying(
    tmp_path: Path, nats_url: str, nc: Client, query: str, *args: str
) -> tuple[int | None, bytes, str]:
    """Run ``flashgate ARGS --home HOME`` against a backend that never answers the query
    ``query``; SIGINT once it has asked. Returns (exit status, stdout, stderr)."""
    fleet = make_fleet(tmp_path / "fleets")
    home = tmp_path / "home"
    shutil.copytree(fleet.dir, home / "fleet")
    save_config(home, HomeConfig(nats=[nats_url]))  # 0600, as the CLI writes it

    asked = asyncio.Event()

    async def silent_backend(msg: Msg) -> None:
        asked.set()  # and never answer

    await nc.subscribe(FleetNames(fleet.name).query_subject(query), cb=silent_backend)
    await nc.flush()
    env = {**os.environ, "FLASHGATE_PASSPHRASE": TEST_PASSPHRASE}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "flashgate.cli.main",
        *args,
        "--home",
        str(home),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        preexec_fn=_ctrl_c_as_from_a_terminal,
    )
    try:
        await asyncio.wait_for(asked.wait(), 60)
        proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
    return proc.returncode, out, err.decode()


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
async def test_ctrl_c_says_how_to_resume(
    tmp_path: Path, nats_url: str, nc: Client, as_json: bool
) -> None:
    args = ["fleet", "rotate-key", *(["--json"] if as_json else [])]
    status, out, text = await interrupt_while_querying(tmp_path, nats_url, nc, "rotation", *args)
    assert status == 130, text
    assert "Traceback" not in text, text
    lines = text.splitlines()
    assert len(lines) == 1, text
    assert "interrupted" in lines[0] and "again to resume" in lines[0], text
    assert "flashgate fleet rotate-key" in lines[0], text
    if as_json:
        assert json.loads(out)["error"]["code"] == "interrupted"
    else:
        assert out == b""


async def test_ctrl_c_elsewhere_is_an_abort_document_under_json(
    tmp_path: Path, nats_url: str, nc: Client
) -> None:
    status, out, text = await interrupt_while_querying(
        tmp_path, nats_url, nc, "secrets", "secret", "list", "--json"
    )
    assert status == 130, text
    assert "Traceback" not in text and "flashgate: aborted" in text, text
    assert json.loads(out) == {"error": {"code": "aborted", "message": "aborted"}}
