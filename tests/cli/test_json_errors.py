"""Under ``--json`` every failing command prints one JSON error document on stdout, with
the exit status it has without ``--json`` (and the same line on stderr)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.cli import run_cli

CASES = [
    # (args, stdin, exit status, error code, words in the message)
    (["secret", "put", "app/db", "--kind", "generic"], b"", 1, "bad_configuration", "empty"),
    (["secret", "put", "App/db", "--kind", "generic"], b"v", 1, "invalid_name", "repository"),
    (["apikey", "revoke", "nope"], b"", 1, "bad_configuration", "api key id"),
    (["node", "revoke", "node-1"], b"", 1, "home_file", "fleet.json"),
    (["fleet", "status"], b"", 1, "home_file", "fleet.json"),
    (["fleet", "rotate-key"], b"", 1, "home_file", "fleet.json"),
    (["secret", "list"], b"", 1, "home_file", "fleet.json"),
    (["secret", "put", "--kind", "generic"], b"", 2, "usage_error", "REPO/NAME"),
    (["fleet", "rotate-key", "--timeout", "soon"], b"", 2, "usage_error", "--timeout"),
    (["fleet", "status", "--no-such-option"], b"", 2, "usage_error", "--no-such-option"),
]


@pytest.mark.parametrize(("args", "stdin", "status", "code", "words"), CASES)
def test_json_error_document(
    tmp_path: Path, args: list[str], stdin: bytes, status: int, code: str, words: str
) -> None:
    home = ["--home", str(tmp_path / "no-home")]
    plain = run_cli(*args, *home, input=stdin)
    assert plain.returncode == status, str(plain)
    assert plain.stdout == b"", str(plain)

    result = run_cli(*args, *home, "--json", input=stdin)
    assert result.returncode == status, str(result)
    assert "Traceback" not in result.err
    assert result.err == plain.err  # the human line is still there
    lines = result.stdout.decode().splitlines()
    assert len(lines) == 1, str(result)
    doc = json.loads(lines[0])
    assert set(doc) == {"error"}
    assert doc["error"]["code"] == code, str(result)
    assert words.lower() in doc["error"]["message"].lower(), str(result)


def test_json_before_the_command_path_is_not_json_mode(tmp_path: Path) -> None:
    """Only the invoked command's own --json counts (the group has none: a usage error)."""
    result = run_cli("--json", "fleet", "status", "--home", tmp_path)
    assert result.returncode == 2
    assert result.stdout == b""
