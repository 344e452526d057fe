"""``flashgate bridge --gateway-listen HOST:PORT``: parsed before anything is opened."""

from __future__ import annotations

import click
import pytest

from flashgate.cli.bridge import _listen_address
from tests.support.cli import run_cli


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("10.0.0.1:0", ("10.0.0.1", 0)),
        ("[::1]:9000", ("::1", 9000)),
        ("gateway.internal:443", ("gateway.internal", 443)),
    ],
)
def test_listen_addresses(value: str | None, expected: tuple[str, int] | None) -> None:
    assert _listen_address(value) == expected


@pytest.mark.parametrize("value", ["8080", "host:", ":8080", "host:http", "host:70000"])
def test_bad_listen_addresses_name_the_form(value: str) -> None:
    with pytest.raises(click.BadParameter, match="HOST:PORT"):
        _listen_address(value)


def test_the_option_is_checked_before_the_bundle_is_opened() -> None:
    result = run_cli("bridge", "--bundle", "/nonexistent.bundle", "--gateway-listen", "nope")
    assert result.returncode == 2
    assert b"HOST:PORT" in result.stderr
