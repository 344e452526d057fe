"""Every admin command against a home with one file missing or unusable: exit 1, one line
on stderr naming the file and what to do, no traceback, before any connection is tried.

The home's config.json points at a closed port: a command that got past its files would
fail on the connection instead (and name no home file).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from flashgate.cli.home import HomeConfig, home_file_remedy, save_config
from tests.support.cli import Fleet, Result, run_cli
from tests.support.material import TEST_PASSPHRASE

COMMANDS: dict[str, tuple[list[str], bytes]] = {
    "fleet-status": (["fleet", "status"], b""),
    # fails at once: waiting does not make a file appear (the run times out otherwise)
    "fleet-status-wait": (["fleet", "status", "--wait", "--timeout", "3600"], b""),
    "secret-put": (["secret", "put", "app/db", "--kind", "generic"], b"a value"),
    "secret-delete": (["secret", "delete", "app/db"], b""),
    "apikey-create": (["apikey", "create", "app", "--scope", "storage", "--name", "ci"], b""),
    "node-revoke": (["node", "revoke", "node-1"], b""),
    "rotate-key": (["fleet", "rotate-key"], b""),
}

FILES = {
    "admin.key": Path("fleet/admin.key"),
    "fleet.json": Path("fleet/fleet.json"),
    "roster.json": Path("fleet/roster.json"),
    "config.json": Path("config.json"),
}


def make_home(base: Path, demo: Fleet) -> Path:
    home = base / "home"
    shutil.copytree(demo.dir, home / "fleet")
    save_config(home, HomeConfig(nats=["nats://127.0.0.1:1"]))  # 0600, as the CLI writes it
    return home


def damage(path: Path, how: str) -> None:
    path.unlink()
    if how == "directory":  # unreadable as a file, even for root
        path.mkdir()
    elif how == "garbage":
        path.write_bytes(b"\x00not what it should be\xff")


def assert_names_file(result: Result, path: Path, remedy: str) -> None:
    err = result.err
    assert result.returncode == 1, str(result)
    assert "Traceback" not in err, str(result)
    lines = err.splitlines()
    assert len(lines) == 1, f"not one line:\n{result}"
    assert lines[0].startswith("flashgate: error: "), str(result)
    assert str(path) in lines[0], str(result)
    assert lines[0].endswith(remedy), str(result)
    assert TEST_PASSPHRASE not in err


@pytest.mark.parametrize("how", ["missing", "directory", "garbage"])
@pytest.mark.parametrize("file", list(FILES))
@pytest.mark.parametrize("command", list(COMMANDS))
def test_command_names_the_unusable_home_file(
    demo: Fleet, tmp_path: Path, command: str, file: str, how: str
) -> None:
    home = make_home(tmp_path, demo)
    path = home / FILES[file]
    damage(path, how)
    args, stdin = COMMANDS[command]
    result = run_cli(*args, "--home", home, input=stdin, env={"FLASHGATE_NATS_URL": ""})
    assert_names_file(result, path, home_file_remedy(home, file))


@pytest.mark.parametrize("command", ["fleet-status", "node-revoke"])
def test_json_mode_reports_the_home_file_too(demo: Fleet, tmp_path: Path, command: str) -> None:
    home = make_home(tmp_path, demo)
    (home / "fleet" / "admin.key").unlink()
    args, stdin = COMMANDS[command]
    result = run_cli(*args, "--home", home, "--json", input=stdin)
    assert result.returncode == 1, str(result)
    doc = json.loads(result.stdout)
    assert doc["error"]["code"] == "home_file"
    assert str(home / "fleet" / "admin.key") in doc["error"]["message"]
