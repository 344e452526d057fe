"""``flashgate dev up`` as a real process: how it stops, and what it refuses.

Each cluster here is small (one bridge, t = 1, an INSECURE 1024-bit test key dealt once
per module and copied into each home) and started without FLASHGATE_PASSPHRASE, so it runs
on the public dev passphrase the way ``make up`` does.

* Stopping: whatever ends ``dev up`` (SIGINT, SIGTERM, SIGHUP, SIGKILL, or SIGINT after
  the reader of its stderr went away), no process it started outlives it for long.
* A second ``dev up`` on a running home is refused before it writes anything.
* The commands the banner prints run as printed in a shell.
* An existing fleet is not silently used for other --nodes/--threshold/--key-bits.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

from flashgate.cli.passphrase import DEV_PASSPHRASE
from tests.support.cli import run_cli, without_flashgate_env

pytestmark = [pytest.mark.nats, pytest.mark.processes, pytest.mark.e2e]
ROOT = Path(__file__).resolve().parents[2]
#: Generous bounds: a loaded 2-core machine may be slow; nothing here measures speed.
START_TIMEOUT = 120
STOP_DEADLINE = 30


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHGATE_")}
    return env


def _flashgate(*args: str) -> list[str]:
    return [sys.executable, "-m", "flashgate.cli.main", *args]


@pytest.fixture(scope="module")
def template_fleet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-of-1 fleet 'dev' sealed with the public dev passphrase (one ceremony per module,
    in process: sealed at the test KDF cost, which dev up's bridge then opens quickly)."""
    out = tmp_path_factory.mktemp("template") / "fleet"
    made = run_cli(
        "fleet", "init", "--fleet", "dev", "--nodes", "1", "--threshold", "1",
        "--key-bits", "1024", "--insecure-test-key", "--quiet", "--out", str(out),
        passphrase=DEV_PASSPHRASE, env=without_flashgate_env(),
    )  # fmt: skip
    assert made.returncode == 0, str(made)
    return out


def new_home(base: Path, template: Path) -> Path:
    home = base / "home"
    home.mkdir()
    shutil.copytree(template, home / "fleet")
    return home


def _state(pid: int) -> str | None:
    """The process state letter, or None when no such process exists."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def alive(pid: int) -> bool:
    return _state(pid) not in (None, "Z", "X")


def descendants(root: int) -> set[int]:
    """Every live process below ``root`` (read from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found
        found |= frontier
    return {pid for pid in found if alive(pid)}


def wait_for(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


@dataclass
class DevUp:
    home: Path
    process: subprocess.Popen[bytes]
    log: Path

    def pidfiles(self) -> dict[str, int]:
        return {
            p.stem: int(p.read_text())
            for p in (self.home / "run").glob("*.pid")
            if p.read_text().strip()
        }

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start(home: Path, stderr: int | IO[bytes], log: Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        _flashgate("dev", "up", "--home", str(home), *extra),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        env=_env(),
        cwd=ROOT,
        start_new_session=True,  # its own process group, as a shell job is
    )


def wait_ready(home: Path, process: subprocess.Popen[bytes], what: str) -> None:
    """Every service of a 1-node cluster started, and the fleet answering."""

    def started() -> bool:
        if process.poll() is not None:
            pytest.fail(f"dev up exited with {process.returncode}: {what}")
        run = home / "run"
        return all((run / f"{n}.pid").exists() for n in ("backend", "node-1", "nats-server"))

    wait_for(started, START_TIMEOUT, "dev up to start every service")
    result = run_cli(
        "fleet", "status", "--wait", "--timeout", str(START_TIMEOUT), "--json",
        passphrase=DEV_PASSPHRASE, env=without_flashgate_env(FLASHGATE_HOME=str(home)),
    )  # fmt: skip
    assert result.returncode == 0, str(result)


@pytest.fixture
def dev_up(tmp_path: Path, template_fleet: Path) -> Iterator[DevUp]:
    home = new_home(tmp_path, template_fleet)
    log = tmp_path / "dev-up.log"
    with log.open("wb") as out:
        process = start(home, out, log)
    cluster = DevUp(home, process, log)
    try:
        wait_ready(home, process, cluster.output())
        yield cluster
    finally:
        leftovers = descendants(process.pid) if process.poll() is None else set()
        for pid in leftovers | set(cluster.pidfiles().values()):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        if process.poll() is None:
            process.kill()
        process.wait(10)


@pytest.mark.slow
def test_a_three_server_nats_cluster_survives_a_killed_server(
    tmp_path: Path, template_fleet: Path
) -> None:
    """``dev up --nats-cluster 3``: three servers, the admin given all three URLs; one
    killed, a secret is still written and loaded (dev up then restarts the server)."""
    home = new_home(tmp_path, template_fleet)
    log = tmp_path / "dev-up.log"
    with log.open("wb") as out:
        process = start(home, out, log, "--nats-cluster", "3")
    env = {**_env(), "FLASHGATE_HOME": str(home), "FLASHGATE_PASSPHRASE": DEV_PASSPHRASE}
    pids: list[int] = []
    try:
        wait_ready(home, process, log.read_text(errors="replace"))
        config = json.loads((home / "config.json").read_text())
        assert len(config["nats"]) == 3
        pids = [int(line) for line in (home / "run" / "nats-server.pid").read_text().split()]
        assert len(pids) == 3 and all(alive(pid) for pid in pids)
        os.kill(pids[0], signal.SIGKILL)
        put = subprocess.run(
            _flashgate("secret", "put", "ha/after-kill", "--kind", "generic"),
            input=b"value",
            env=env,
            capture_output=True,
            timeout=START_TIMEOUT,
            check=False,
        )
        assert put.returncode == 0, put.stderr.decode(errors="replace")
        wait_ready(home, process, log.read_text(errors="replace"))
        os.kill(process.pid, signal.SIGTERM)
        assert process.wait(STOP_DEADLINE) == 0, log.read_text(errors="replace")[-3000:]
        assert not any(alive(pid) for pid in pids)
    finally:
        for pid in descendants(process.pid) | set(pids):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        if process.poll() is None:
            process.kill()
            process.wait(10)


def assert_all_stop(children: set[int], what: str) -> None:
    """Every pid in ``children`` is gone within a generous deadline (polled)."""
    wait_for(
        lambda: not any(alive(pid) for pid in children),
        STOP_DEADLINE,
        f"every child to stop after {what}; still running: "
        + ", ".join(str(p) for p in sorted(children) if alive(p)),
    )


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM", "SIGHUP", "SIGKILL"])
def test_every_child_stops_with_dev_up(dev_up: DevUp, how: str) -> None:
    children = set(dev_up.pidfiles().values()) | descendants(dev_up.process.pid)
    names = set(dev_up.pidfiles())
    assert {"backend", "node-1", "nats-server"} <= names, names
    assert len(children) >= 3 and all(alive(pid) for pid in children)
    if how in ("SIGINT", "SIGHUP"):  # a terminal signals the whole foreground group
        os.killpg(dev_up.process.pid, getattr(signal, how))
    else:
        os.kill(dev_up.process.pid, getattr(signal, how))
    assert_all_stop(children, how)
    code = dev_up.process.wait(STOP_DEADLINE)
    if how != "SIGKILL":
        assert code == 0, dev_up.output()[-3000:]
        assert "stopped" in dev_up.output()
        assert not list((dev_up.home / "run").glob("*.pid"))


def test_children_stop_when_the_reader_of_stderr_is_gone(
    tmp_path: Path, template_fleet: Path
) -> None:
    """``make up 2>&1 | tee log``, then Ctrl-C: tee dies first; the cleanup must not."""
    home = new_home(tmp_path, template_fleet)
    read_end, write_end = os.pipe()
    process = start(home, write_end, tmp_path / "unused.log")
    os.close(write_end)
    children: set[int] = set()
    try:
        with os.fdopen(read_end, "rb") as reader:
            seen = b""
            while b"Ctrl-C stops everything" not in seen:
                chunk = reader.read1(4096)
                if not chunk:
                    pytest.fail(f"dev up closed stderr before its banner: {seen[-2000:]!r}")
                seen += chunk
            wait_ready(home, process, seen.decode(errors="replace"))
            children = {int(p.read_text()) for p in (home / "run").glob("*.pid")}
            children |= descendants(process.pid)
            assert len(children) >= 3
        # the reader is gone: the next write to stderr fails with EPIPE
        os.killpg(process.pid, signal.SIGINT)
        assert_all_stop(children, "SIGINT with a closed stderr")
        assert process.wait(STOP_DEADLINE) == 0  # the failed prints did not end the cleanup
        assert not list((home / "run").glob("*.pid"))
    finally:
        for pid in children:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        if process.poll() is None:
            process.kill()
            process.wait(10)


def _shell_env(**extra: str) -> dict[str, str]:
    """The environment of a new shell: no FLASHGATE_* variable, no `flashgate` on PATH."""
    path = [
        d
        for d in os.environ.get("PATH", "").split(os.pathsep)
        if not (Path(d) / "flashgate").exists()
    ]
    return {**_env(), "PATH": os.pathsep.join(path), **extra}


def printed_block(text: str, heading: str) -> list[str]:
    """The indented lines under ``heading`` up to the next blank line."""
    lines = text.splitlines()
    start = lines.index(heading) + 1
    block: list[str] = []
    for line in lines[start:]:
        if not line.strip():
            break
        block.append(line.strip())
    return block


def test_second_dev_up_is_refused_and_touches_nothing(dev_up: DevUp, tmp_path: Path) -> None:
    watched = [
        dev_up.home / "config.json",
        dev_up.home / "nats" / "nats-server.conf",
        dev_up.home / "fleet" / "fleet.json",
        dev_up.home / "run" / "nats-server.pid",
        dev_up.home / "run" / "backend.pid",
    ]
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in watched}
    listing = sorted(str(p) for p in dev_up.home.rglob("*") if "jetstream" not in p.parts)
    second = subprocess.run(
        _flashgate("dev", "up", "--home", str(dev_up.home)),
        env=_env(),
        capture_output=True,
        timeout=START_TIMEOUT,
        check=False,
    )
    err = second.stderr.decode(errors="replace")
    assert second.returncode == 1, err
    assert err.splitlines() == [
        f"flashgate: error: flashgate dev up is already running (pid {dev_up.process.pid}) "
        f"on {dev_up.home}; stop it first (Ctrl-C in its terminal)"
    ], err
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in watched} == before
    assert sorted(str(p) for p in dev_up.home.rglob("*") if "jetstream" not in p.parts) == listing
    assert dev_up.process.poll() is None


def test_banner_commands_run_as_printed(dev_up: DevUp, tmp_path: Path) -> None:
    """Pasted into a new shell (no FLASHGATE_* set, no `flashgate` on PATH), elsewhere."""
    output = dev_up.output()
    assert "opening the existing bundles with the public dev passphrase" in output
    assert "sealing" not in output
    commands = printed_block(output, "try (in another shell):")
    assert any(c.startswith("export FLASHGATE_ADMIN_PASSPHRASE=") for c in commands), commands
    script = "set -e\n" + "\n".join(commands) + "\n"
    result = subprocess.run(
        ["/bin/sh", "-c", script],
        env=_shell_env(),
        cwd=tmp_path,
        capture_output=True,
        timeout=START_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, (commands, result.stderr.decode(errors="replace"))
    assert b"demo" in result.stdout and b"db-password" in result.stdout


def test_other_fleet_parameters_on_an_existing_home_are_refused(
    tmp_path: Path, template_fleet: Path
) -> None:
    home = new_home(tmp_path, template_fleet)
    result = subprocess.run(
        _flashgate(
            "dev", "up", "--home", str(home), "--nodes", "5", "--threshold", "3",
            "--key-bits", "2048",
        ),
        env=_env(),
        capture_output=True,
        timeout=60,
        check=False,
    )  # fmt: skip
    err = result.stderr.decode(errors="replace")
    assert result.returncode == 1, err
    assert err.splitlines() == [
        "flashgate: error: --key-bits 2048, --nodes 5, --threshold 3: fleet 'dev' in "
        f"{home} is 1-of-1 with a 1024-bit key; use another --home or remove "
        f"{home / 'fleet'} for a new one"
    ], err
    assert sorted(p.name for p in home.iterdir()) == ["fleet", "run"]
    # The same values as the fleet's, given explicitly, are not a conflict.
    same = subprocess.run(
        _flashgate(
            "dev", "up", "--home", str(home), "--nodes", "1", "--threshold", "1",
            "--key-bits", "1024", "--threshold", "2",
        ),
        env=_env(),
        capture_output=True,
        timeout=60,
        check=False,
    )  # fmt: skip
    assert same.returncode == 1 and "--threshold 2: fleet 'dev'" in same.stderr.decode()
