"""``flashgate dev demo`` and ``dev nats-config``, and what the CLI says about its home:
an unreachable NATS (one line) and a config.json others can read (a warning).

In process (tests.support.cli.run_cli), except what needs a process of its own: the printed
lines run by /bin/sh, nats-server checking a config, and a real ``flashgate`` process whose
stderr must hold one line. NATS tests point at a loopback port where nothing listens.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from flashgate.cli.home import HomeConfig, RoleLogin, save_config
from flashgate.cli.passphrase import DEV_PASSPHRASE
from flashgate.devcluster.nats_server import find_nats_server, free_port
from flashgate.runnable import flashgate_command
from tests.support.cli import UNSET, Fleet, Result, run_cli, run_cli_process

USER_PASSPHRASE = "a-passphrase-the-user-chose"


def _shell_env(**extra: str) -> dict[str, str]:
    """A new shell: no FLASHGATE_* variable, no `flashgate` on PATH."""
    path = [
        d
        for d in os.environ.get("PATH", "").split(os.pathsep)
        if d and not (Path(d) / "flashgate").exists()
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHGATE_")}
    return {**env, "PATH": os.pathsep.join(path), **extra}


def printed_block(text: str, heading: str) -> list[str]:
    lines = text.splitlines()
    block: list[str] = []
    for line in lines[lines.index(heading) + 1 :]:
        if not line.strip():
            break
        block.append(line.strip())
    return block


def run_in_shell(lines: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["/bin/sh", "-c", "set -e\n" + "\n".join(lines) + "\n"],
        env=_shell_env(**env),
        cwd=cwd,
        capture_output=True,
        timeout=120,
        check=False,
    )


DEMO_ARGS = ("--nodes", "2", "--threshold", "1", "--key-bits", "1024", "--insecure-test-key")


@pytest.mark.processes
def test_demo_try_it_yourself_runs_as_printed(tmp_path: Path) -> None:
    """With the public dev passphrase: the lines export it, and run in a new shell."""
    first = run_cli(
        "dev", "demo", "--home", "demo-home", *DEMO_ARGS, passphrase=UNSET, cwd=tmp_path
    )
    assert first.returncode == 0, str(first)
    assert "sealing the new fleet with the public dev passphrase" in first.err
    again = run_cli("dev", "demo", "--home", "demo-home", passphrase=UNSET, cwd=tmp_path)
    assert again.returncode == 0, str(again)
    assert "opening the existing bundles with the public dev passphrase" in again.err
    assert "sealing" not in again.err
    lines = printed_block(again.stdout.decode(), "try it yourself:")
    assert lines[0] == f"export FLASHGATE_PASSPHRASE={DEV_PASSPHRASE}", lines
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = run_in_shell(lines, elsewhere)
    assert result.returncode == 0, (lines, result.stderr.decode(errors="replace"))
    assert result.stdout == b"hello"


@pytest.mark.processes
def test_demo_never_prints_a_passphrase_the_user_set(tmp_path: Path) -> None:
    result = run_cli(
        "dev", "demo", "--home", "demo-home", *DEMO_ARGS, passphrase=USER_PASSPHRASE, cwd=tmp_path
    )
    assert result.returncode == 0, str(result)
    assert USER_PASSPHRASE.encode() not in result.stdout + result.stderr
    assert "warning" not in result.err
    lines = printed_block(result.stdout.decode(), "try it yourself:")
    assert lines[0].startswith("# export FLASHGATE_PASSPHRASE"), lines
    # With the passphrase exported, as the line says, the rest runs as printed.
    ran = run_in_shell(lines, tmp_path, FLASHGATE_PASSPHRASE=USER_PASSPHRASE)
    assert ran.returncode == 0, (lines, ran.stderr.decode(errors="replace"))
    assert ran.stdout == b"hello"


# --- nats-config ------------------------------------------------------------------------


@pytest.mark.processes
def test_nats_config_binds_monitoring_to_loopback_by_default(tmp_path: Path, demo: Fleet) -> None:
    default = run_cli("dev", "nats-config", "--fleet", "demo")
    assert default.returncode == 0, str(default)
    assert 'http: "127.0.0.1:8222"' in default.stdout.decode()
    assert "0.0.0.0:8222" not in default.stdout.decode()
    chosen = run_cli("dev", "nats-config", "--fleet", "demo", "--monitor-address", "0.0.0.0:8223")
    assert chosen.returncode == 0, str(chosen)
    assert 'http: "0.0.0.0:8223"' in chosen.stdout.decode()
    # nats-server accepts it, with the users it includes (one NKey user per node)
    users = run_cli("dev", "nats-config", "--fleet", "demo", "--authorization", demo.dir)
    assert users.returncode == 0, str(users)
    assert users.stdout.decode().count('"nkey": "U') == 5
    (tmp_path / "auth").mkdir()
    (tmp_path / "auth" / "authorization.conf").write_bytes(users.stdout)
    path = tmp_path / "nats.conf"
    path.write_bytes(default.stdout)
    env = {**os.environ, **{f"FG_{r}_PASSWORD": "x" for r in ("ADMIN", "BACKEND")}}
    check = subprocess.run(
        [str(find_nats_server().path), "-t", "-c", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_nats_config_authorization_refuses_another_fleets_directory(other: Fleet) -> None:
    result = run_cli("dev", "nats-config", "--fleet", "demo", "--authorization", other.dir)
    assert result.returncode == 1, str(result)
    assert "another fleet" in result.err


def test_nats_config_refuses_a_bad_monitor_address() -> None:
    result = run_cli("dev", "nats-config", "--fleet", "demo", "--monitor-address", "nowhere")
    assert result.returncode == 2, str(result)
    assert "--monitor-address" in result.err and "HOST:PORT" in result.err


# --- a home whose NATS is down ----------------------------------------------------------


def _dead_port() -> int:
    """A loopback port where nothing listens (checked)."""
    port = free_port()
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0
    return port


@pytest.fixture
def dead_home(tmp_path: Path, other: Fleet) -> tuple[Path, str]:
    home = tmp_path / "home"
    shutil.copytree(other.dir, home / "fleet")
    url = f"nats://127.0.0.1:{_dead_port()}"
    save_config(home, HomeConfig(nats=[url], logins={"admin": RoleLogin(user="a", password="p")}))
    return home, url


def _one_line(result: Result, url: str, home: Path) -> None:
    lines = result.err.splitlines()
    assert result.returncode == 1, str(result)
    assert lines == [
        f"flashgate: error: cannot reach NATS at {url} (connection refused); "
        f"is the cluster up? (start it with: {flashgate_command()} dev up --home {home})"
    ], str(result)


@pytest.mark.processes
def test_unreachable_nats_is_one_line(dead_home: tuple[Path, str]) -> None:
    """In a process of its own: what the NATS client or logging might print ends on its
    stderr too."""
    home, url = dead_home
    _one_line(run_cli_process("fleet", "status", "--home", home), url, home)


def test_unreachable_nats_with_wait_is_one_line(dead_home: tuple[Path, str]) -> None:
    home, url = dead_home
    _one_line(run_cli("fleet", "status", "--wait", "--timeout", "1", "--home", home), url, home)


def test_config_readable_by_others_draws_one_warning(dead_home: tuple[Path, str]) -> None:
    home, _ = dead_home
    config = home / "config.json"
    config.chmod(0o644)
    result = run_cli("fleet", "status", "--home", home)
    lines = result.err.splitlines()
    assert lines[0] == (
        f"warning: {config} is readable by other users and holds NATS passwords: chmod 600 {config}"
    ), str(result)
    assert len(lines) == 2 and "cannot reach NATS" in lines[1], str(result)
    config.chmod(0o600)
    assert "warning" not in run_cli("fleet", "status", "--home", home).err


@pytest.mark.processes
def test_missing_config_names_the_runnable_dev_up(tmp_path: Path, other: Fleet) -> None:
    """In a process of its own: the command it names is the one this interpreter runs."""
    home = tmp_path / "home"
    shutil.copytree(other.dir, home / "fleet")
    result = run_cli_process("fleet", "status", "--home", home, env={"FLASHGATE_NATS_URL": None})
    assert result.returncode == 1
    assert result.err.splitlines() == [
        f"flashgate: error: {home / 'config.json'} does not exist: start the system with "
        f"`{flashgate_command()} dev up --home {home}` or set FLASHGATE_NATS_URL"
    ]
