"""Secret versions at the CLI: the cap (2^31 - 1) in the user's words (issue 14 §4)."""

from __future__ import annotations

from pathlib import Path

import pytest

from flashgate.cli.secret import next_version
from flashgate.errors import VersionLimit
from flashgate.events.queries import SecretInfo
from tests.cli.test_cli import assert_usage_error
from tests.support.cli import Runner


def info(version: int, *, deleted: bool = False) -> SecretInfo:
    return SecretInfo(
        repo="app",
        name="token",
        kind="generic",
        current_version=version,
        deleted=deleted,
        updated_at=0,
        versions=[],
    )


def test_the_next_version_follows_the_current_one_live_or_deleted() -> None:
    assert next_version("app", "token", None) == 1
    assert next_version("app", "token", info(7)) == 8
    assert next_version("app", "token", info(7, deleted=True)) == 8


def test_a_secret_at_the_highest_version_is_refused_in_one_line() -> None:
    with pytest.raises(VersionLimit) as refused:
        next_version("app", "token", info(2**31 - 1))
    message = refused.value.message
    assert "app/token is at version 2147483647" in message and "\n" not in message


def test_encrypt_refuses_a_version_above_the_cap(run: Runner, tmp_path: Path) -> None:
    args = ["encrypt", "--fleet-dir", "f", "--repo", "r", "--name", "n", "--kind", "generic"]
    assert_usage_error(run(*args, "--version", str(2**31), cwd=tmp_path), "--version")
