"""``flashgate dev up`` hands each process only the passphrase it needs (issue 14 §5).

A real ``dev up`` on a 1-of-2 fleet whose admin key and bundles are sealed with passphrases
of their own, given to ``dev up`` as ``FLASHGATE_ADMIN_PASSPHRASE`` and
``FLASHGATE_PASSPHRASE_NODE_<N>``: read from ``/proc/<pid>/environ``, the backend holds no
passphrase at all, and each bridge holds its own (as ``FLASHGATE_NODE_PASSPHRASE``) and
no other. The fleet is sealed at the test KDF cost (the test is not about the KDF).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flashgate.fleet.ceremony import run_ceremony
from flashgate.fleet.directory import write_fleet_dir
from flashgate.fleet.files import write_atomic
from tests.support.material import FAST_KDF, TEST_BITS, fixed_primes

pytestmark = [pytest.mark.nats, pytest.mark.e2e]
ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 120
ADMIN = "admin-passphrase-of-this-test"
OWN = {"node-1": "node-1-passphrase-of-this-test", "node-2": "node-2-passphrase-of-this-test"}
SECRETS = (ADMIN, *OWN.values())


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (item.partition(b"=") for item in raw.split(b"\0") if item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, _, v in pairs}


def test_dev_up_gives_each_bridge_its_own_passphrase_and_the_backend_none(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    ceremony = run_ceremony(
        fleet="dev",
        node_ids=list(OWN),
        threshold=1,
        bits=TEST_BITS,
        primes=fixed_primes(),
        allow_insecure=True,
    )
    write_fleet_dir(home / "fleet", ceremony, ADMIN, params=FAST_KDF)
    for bundle in ceremony.bundles:  # each node's own passphrase
        path = home / "fleet" / "nodes" / f"{bundle.node_id}.bundle"
        write_atomic(path, bundle.seal(OWN[bundle.node_id], params=FAST_KDF), 0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHGATE_")}
    env["FLASHGATE_ADMIN_PASSPHRASE"] = ADMIN
    env |= {f"FLASHGATE_PASSPHRASE_{n.upper().replace('-', '_')}": p for n, p in OWN.items()}
    log = tmp_path / "dev-up.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "flashgate.cli.main", "dev", "up", "--home", str(home)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=out,
            env=env,
            cwd=ROOT,
            start_new_session=True,
        )
    run = home / "run"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        names = ("backend", *OWN)
        while not all((run / f"{n}.pid").exists() for n in names):
            assert process.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.2)
        pids = {n: int((run / f"{n}.pid").read_text()) for n in names}
        backend = environ(pids["backend"])
        assert [k for k in backend if "PASSPHRASE" in k] == []
        assert not [v for v in backend.values() if any(s in v for s in SECRETS)]
        for node_id, own in OWN.items():
            bridge = environ(pids[node_id])
            assert [k for k in bridge if "PASSPHRASE" in k] == ["FLASHGATE_NODE_PASSPHRASE"]
            assert bridge["FLASHGATE_NODE_PASSPHRASE"] == own
            others = [s for s in SECRETS if s != own]
            assert not [v for v in bridge.values() if any(s in v for s in others)], node_id
        # and the bridges open their bundles with it: both report ready
        status = subprocess.run(
            [sys.executable, "-m", "flashgate.cli.main", "fleet", "status", "--wait",
             "--timeout", str(START_TIMEOUT)],
            env={**env, "FLASHGATE_HOME": str(home)},
            capture_output=True,
            timeout=START_TIMEOUT + 30,
            check=False,
        )  # fmt: skip
        assert status.returncode == 0, status.stderr.decode(errors="replace")
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
