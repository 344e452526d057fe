"""A passphrase per holder, and hardening first (issue 14 §5).

* ``fleet init`` seals admin.key with ``FLASHGATE_ADMIN_PASSPHRASE`` and each node's bundle
  with that node's own variable (``FLASHGATE_PASSPHRASE_NODE_1`` for node-1): each
  passphrase opens its own file and nothing else. ``FLASHGATE_PASSPHRASE`` alone still
  works (every file sealed with it), with a warning that it is the weak setting.
* ``flashgate bridge`` reads ``FLASHGATE_NODE_PASSPHRASE`` (never the admin's).
* Every process that will hold a key or a share hardens itself before it unseals
  anything or deals: the ceremony, the bridge, ``reseal``, ``recover``, and the admin
  tooling before it opens admin.key.

In process (click's runner around ``main``), sealing at the test KDF cost; ``harden`` is
replaced by a recorder, so this test process is not hardened itself.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from flashgate.bridge import hardening
from flashgate.bridge.hardening import HardeningReport
from flashgate.cli.main import main
from flashgate.crypto import seal as seal_module
from flashgate.crypto.seal import DEFAULT_KDF
from flashgate.errors import UnsealError
from flashgate.fleet import directory
from flashgate.fleet.bundle import open_admin_key
from flashgate.fleet.directory import read_bundle
from flashgate.fleet.files import load_descriptor
from tests.support.cli import this_process_not_hardened
from tests.support.material import FAST_KDF

ADMIN = "the-admin-key-passphrase"
OWN = {f"node-{i}": f"node-{i}-own-passphrase" for i in (1, 2, 3)}
LEGACY = "one-passphrase-for-everything"
FAST_INIT = ("--insecure-test-key", "--key-bits", "1024")


def per_node_env() -> dict[str, str | None]:
    return {
        "FLASHGATE_ADMIN_PASSPHRASE": ADMIN,
        **{f"FLASHGATE_PASSPHRASE_{n.upper().replace('-', '_')}": p for n, p in OWN.items()},
    }


def run(*args: str | Path, env: dict[str, str | None], input: bytes = b"") -> tuple[int, str]:
    """``flashgate ARGS`` in this process; every FLASHGATE_* variable of this process unset,
    then ``env``. Returns (status, stderr)."""
    import os

    overrides: dict[str, str | None] = {k: None for k in os.environ if k.startswith("FLASHGATE_")}
    overrides |= env
    with (
        this_process_not_hardened(),
        CliRunner().isolation(input=input, env=overrides) as (
            _,
            err,
            _x,
        ),
    ):
        try:
            status = main([str(a) for a in args])
        finally:
            sys.stderr.flush()
        return status, err.getvalue().decode("utf-8", "replace")


def seal_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the commands seal at the default Argon2 cost is sealed at FAST_KDF."""
    real = seal_module.seal

    def seal(data: bytes, passphrase: str, purpose: str, **kwargs: Any) -> bytes:
        if kwargs.get("params", DEFAULT_KDF) == DEFAULT_KDF:
            kwargs["params"] = FAST_KDF
        return real(data, passphrase, purpose, **kwargs)

    monkeypatch.setattr(seal_module, "seal", seal)


@pytest.fixture(autouse=True)
def fast_seal(monkeypatch: pytest.MonkeyPatch) -> None:
    seal_fast(monkeypatch)


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What happened, in order: ``harden`` (recorded, not done) and what each test adds."""
    seen: list[str] = []
    record_harden(monkeypatch, seen)
    return seen


def record_harden(monkeypatch: pytest.MonkeyPatch, seen: list[str]) -> None:

    def harden(*, lock_memory: bool = True) -> HardeningReport:
        seen.append("harden")
        return HardeningReport(
            core_dumps_disabled=True, not_dumpable=True, memory_locked=False, notes=()
        )

    monkeypatch.setattr(hardening, "harden", harden)


def record(monkeypatch: pytest.MonkeyPatch, events: list[str], owner: object, name: str) -> None:
    real = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        events.append(name)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)


def init(out: Path, env: dict[str, str | None], *extra: str) -> tuple[int, str]:
    return run(
        "fleet", "init", "--fleet", "roles", "--nodes", "3", "--threshold", "2",
        *FAST_INIT, *extra, "--out", out, env=env,
    )  # fmt: skip


@pytest.fixture(scope="module")
def split_fleet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("split") / "fleet"
    with pytest.MonkeyPatch.context() as mp:
        seal_fast(mp)
        record_harden(mp, [])
        status, err = init(out, per_node_env(), "--quiet")
    assert status == 0, err
    assert err == ""
    return out


def test_each_passphrase_opens_its_own_file_only(split_fleet: Path) -> None:
    descriptor = load_descriptor(split_fleet)
    admin_blob = (split_fleet / "admin.key").read_bytes()
    open_admin_key(admin_blob, ADMIN, descriptor)
    for node_id, own in OWN.items():
        bundle = split_fleet / "nodes" / f"{node_id}.bundle"
        assert read_bundle(bundle, own).node_id == node_id
        for other in {ADMIN, *OWN.values()} - {own}:
            with pytest.raises(UnsealError):
                read_bundle(bundle, other)
        with pytest.raises(UnsealError):
            open_admin_key(admin_blob, own, descriptor)


def test_a_missing_node_passphrase_is_refused_before_the_ceremony(
    tmp_path: Path, events: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from flashgate.cli import main as main_module

    record(monkeypatch, events, main_module, "search_primes")
    env = per_node_env() | {"FLASHGATE_PASSPHRASE_NODE_2": None}
    status, err = init(tmp_path / "fleet", env, "--quiet")
    assert status == 1
    assert "FLASHGATE_PASSPHRASE_NODE_2" in err and "node-2" in err
    assert "search_primes" not in events
    assert not (tmp_path / "fleet" / "admin.key").exists()


def test_one_passphrase_for_everything_still_works_with_a_warning(tmp_path: Path) -> None:
    status, err = init(tmp_path / "fleet", {"FLASHGATE_PASSPHRASE": LEGACY})
    assert status == 0, err
    assert "weak" in err and "FLASHGATE_ADMIN_PASSPHRASE" in err
    assert LEGACY not in err
    descriptor = load_descriptor(tmp_path / "fleet")
    open_admin_key((tmp_path / "fleet" / "admin.key").read_bytes(), LEGACY, descriptor)
    assert read_bundle(tmp_path / "fleet" / "nodes" / "node-3.bundle", LEGACY).node_id == "node-3"


def test_the_ceremony_process_is_hardened_first(
    tmp_path: Path, events: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from flashgate.cli import main as main_module

    record(monkeypatch, events, main_module, "search_primes")
    record(monkeypatch, events, main_module, "write_fleet_dir")
    status, err = init(tmp_path / "fleet", per_node_env(), "--quiet")
    assert status == 0, err
    assert events == ["harden", "search_primes", "write_fleet_dir"]


# --- the bridge ---------------------------------------------------------------------------


@contextlib.contextmanager
def stopped_at_unseal(monkeypatch: pytest.MonkeyPatch, events: list[str]) -> Iterator[list[str]]:
    """The bridge command runs until it unseals its bundle: the passphrase it used is
    recorded, and the unseal refused (so no node starts)."""
    used: list[str] = []

    def read(path: Path, passphrase: str) -> object:
        events.append("unseal")
        used.append(passphrase)
        raise UnsealError("stopped by the test")

    monkeypatch.setattr(directory, "read_bundle", read)
    yield used


def test_the_bridge_hardens_before_it_unseals_its_bundle(
    split_fleet: Path, events: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with stopped_at_unseal(monkeypatch, events) as used:
        status, err = run(
            "bridge", "--bundle", split_fleet / "nodes" / "node-1.bundle",
            env={"FLASHGATE_NODE_PASSPHRASE": OWN["node-1"]},
        )  # fmt: skip
    assert status == 1, err
    assert events == ["harden", "unseal"]
    assert used == [OWN["node-1"]]


def test_the_bridge_takes_its_own_passphrase_never_the_admins(
    split_fleet: Path, events: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = split_fleet / "nodes" / "node-2.bundle"
    with stopped_at_unseal(monkeypatch, events) as used:
        # its own variable wins over the shared one
        run("bridge", "--bundle", bundle, env={
            "FLASHGATE_NODE_PASSPHRASE": OWN["node-2"], "FLASHGATE_PASSPHRASE": LEGACY,
        })  # fmt: skip
        assert used == [OWN["node-2"]]
        # the admin's variable is not a bridge's
        status, err = run("bridge", "--bundle", bundle, env={"FLASHGATE_ADMIN_PASSPHRASE": ADMIN})
    assert status == 1
    assert "FLASHGATE_NODE_PASSPHRASE" in err
    assert used == [OWN["node-2"]]
    assert ADMIN not in err


def test_the_bridge_opens_its_bundle_with_its_own_passphrase(split_fleet: Path) -> None:
    from flashgate.cli.passphrase import node_passphrase

    bundle = split_fleet / "nodes" / "node-3.bundle"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FLASHGATE_NODE_PASSPHRASE", OWN["node-3"])
        mp.delenv("FLASHGATE_PASSPHRASE", raising=False)
        assert read_bundle(bundle, node_passphrase(bundle)).node_id == "node-3"


# --- the other commands that open a sealed file ---------------------------------------------


def test_reseal_hardens_before_it_opens_the_file(
    split_fleet: Path, tmp_path: Path, events: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from flashgate.cli import reseal as reseal_module

    copy = tmp_path / "node-1.bundle"
    copy.write_bytes((split_fleet / "nodes" / "node-1.bundle").read_bytes())
    record(monkeypatch, events, reseal_module, "reseal")
    status, err = run(
        "fleet", "reseal", copy, "--old-passphrase-env", "OLD", "--new-passphrase-env", "NEW",
        env={"OLD": OWN["node-1"], "NEW": "a-new-node-1-passphrase"},
    )  # fmt: skip
    assert status == 0, err
    assert events == ["harden", "reseal"]


def test_recover_hardens_before_it_opens_a_bundle(
    split_fleet: Path, events: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from flashgate.cli import main as main_module

    record(monkeypatch, events, main_module, "read_bundle")
    status, err = run(
        "recover", "--fleet-dir", split_fleet,
        "--bundle", split_fleet / "nodes" / "node-1.bundle",
        "--bundle", split_fleet / "nodes" / "node-2.bundle",
        "--passphrase-env", "node-1=P1", "--passphrase-env", "node-2=P2",
        env={"P1": OWN["node-1"], "P2": OWN["node-2"]},
        input=b"not a jwe",
    )  # fmt: skip
    assert status == 1, err  # the input is no JWE: it stops there
    assert events[0] == "harden"


def test_the_admin_tooling_hardens_before_it_opens_the_admin_key(
    split_fleet: Path, tmp_path: Path, events: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from flashgate.cli import session as session_module
    from flashgate.cli.session import AdminSession

    home = tmp_path / "home"
    shutil.copytree(split_fleet, home / "fleet")
    record(monkeypatch, events, session_module, "open_admin_key")
    monkeypatch.setenv("FLASHGATE_NATS_URL", "nats://127.0.0.1:1")
    monkeypatch.delenv("FLASHGATE_PASSPHRASE", raising=False)
    monkeypatch.setenv("FLASHGATE_ADMIN_PASSPHRASE", ADMIN)
    session = AdminSession(home)
    assert events == []
    assert session.admin_key is not None
    assert events == ["harden", "open_admin_key"]
    # an admin home with one passphrase for everything still opens
    monkeypatch.delenv("FLASHGATE_ADMIN_PASSPHRASE")
    monkeypatch.setenv("FLASHGATE_PASSPHRASE", ADMIN)
    assert AdminSession(home).admin_key is not None


@pytest.mark.processes
def test_the_ceremony_process_is_hardened_as_a_process(tmp_path: Path) -> None:
    """`fleet init` as a process of its own, stopped (failpoint ``ceremony.dealt``) while it
    holds every share: the kernel shows no core dumps for it, and locked memory where this
    user may lock memory (root here; an unprivileged RLIMIT_MEMLOCK is usually too small)."""
    import os
    import signal
    import subprocess
    import time

    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHGATE_")}
    env |= {k: v for k, v in per_node_env().items() if v is not None}
    env["FLASHGATE_FAILPOINTS"] = "ceremony.dealt=stop"
    process = subprocess.Popen(
        [sys.executable, "-m", "flashgate.cli.main", "fleet", "init", "--fleet", "roles",
         "--nodes", "2", "--threshold", "1", *FAST_INIT, "--quiet", "--out", str(tmp_path / "f")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )  # fmt: skip
    proc = Path(f"/proc/{process.pid}")
    try:
        deadline = time.monotonic() + 120
        while (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
            assert process.poll() is None, "fleet init ran to the end without stopping"
            assert time.monotonic() < deadline, "fleet init never reached the failpoint"
            time.sleep(0.05)
        limits = (proc / "limits").read_text().splitlines()
        core = next(line for line in limits if line.startswith("Max core file size"))
        assert core.split()[4:6] == ["0", "0"], core
        if os.geteuid() == 0:
            status = (proc / "status").read_text().splitlines()
            locked = next(line for line in status if line.startswith("VmLck:"))
            assert int(locked.split()[1]) > 0, locked
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        assert process.stderr is not None
        process.stderr.close()


def test_node_ids_that_would_share_a_variable_are_refused(tmp_path: Path) -> None:
    status, err = run(
        "fleet", "init", "--fleet", "roles", "--nodes", "2", "--threshold", "1",
        "--node-ids", "edge-1,edge_1", *FAST_INIT, "--quiet", "--out", tmp_path / "f",
        env={"FLASHGATE_ADMIN_PASSPHRASE": ADMIN, "FLASHGATE_PASSPHRASE_EDGE_1": LEGACY},
    )  # fmt: skip
    assert status == 1
    assert "FLASHGATE_PASSPHRASE_EDGE_1" in err and "edge_1" in err
    assert not (tmp_path / "f").exists()


def test_reseal_takes_the_files_own_variable_and_an_explicit_one_strictly(
    split_fleet: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "admin.key"
    copy.write_bytes((split_fleet / "admin.key").read_bytes())
    # admin.key: FLASHGATE_ADMIN_PASSPHRASE by default (not the node's variable)
    status, err = run(
        "fleet", "reseal", copy, "--new-passphrase-env", "NEW",
        env={"FLASHGATE_ADMIN_PASSPHRASE": ADMIN, "FLASHGATE_NODE_PASSPHRASE": OWN["node-1"],
             "NEW": "a-new-admin-passphrase"},
    )  # fmt: skip
    assert status == 0, err
    # an explicit --old-passphrase-env that is unset never falls back
    status, err = run(
        "fleet", "reseal", copy, "--old-passphrase-env", "UNSET_VAR",
        "--new-passphrase-env", "NEW",
        env={"FLASHGATE_PASSPHRASE": "a-new-admin-passphrase", "NEW": "another-passphrase"},
    )  # fmt: skip
    assert status == 1
    assert "UNSET_VAR" in err and "not set" in err
