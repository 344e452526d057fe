"""Database URLs: bare schemes get their async driver; a malformed URL is refused without
echoing it (it may carry a password)."""

from __future__ import annotations

import pytest

from flashgate.backend.db import normalize_url
from flashgate.errors import ConfigurationError


def test_bare_schemes_get_their_async_driver() -> None:
    assert normalize_url("sqlite:///x.db").startswith("sqlite+aiosqlite:///")
    assert normalize_url("postgresql://u:p@h/db").startswith("postgresql+asyncpg://")


@pytest.mark.parametrize("url", ["postgres ql://user:hunter2@h/db", "hunter2", "::hunter2::"])
def test_a_malformed_url_is_refused_without_echoing_it(url: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        normalize_url(url)
    assert "hunter2" not in str(raised.value)
    assert str(raised.value).startswith("not a database URL")


def test_an_unsupported_database_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="unsupported database"):
        normalize_url("mysql://u:hunter2@h/db")
