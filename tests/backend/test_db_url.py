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


NASTY_PASSWORDS = ["p@ss/w:rd", "100%sure", "a b?c#d&e=f", "quo'te\"s\\", "ünï€"]


@pytest.mark.parametrize("password", NASTY_PASSWORDS)
def test_a_separate_password_reaches_the_driver_unchanged(password: str) -> None:
    from sqlalchemy.engine import make_url
    from sqlalchemy.ext.asyncio import create_async_engine

    from flashgate.backend.db import with_password

    url = normalize_url(with_password("postgresql://flashgate@db.example:5432/fg", password))
    parsed = make_url(url)
    assert (parsed.host, parsed.port, parsed.database) == ("db.example", 5432, "fg")
    assert parsed.username == "flashgate"
    assert parsed.password == password
    engine = create_async_engine(url)
    _, kwargs = engine.dialect.create_connect_args(parsed)
    assert kwargs["password"] == password  # what asyncpg gets
    assert kwargs["host"] == "db.example"


def test_no_separate_password_leaves_the_url_alone() -> None:
    from flashgate.backend.db import with_password

    assert with_password("postgresql://u:p@h/db", None) == "postgresql://u:p@h/db"
    assert with_password("sqlite:///x.db", None) == "sqlite:///x.db"


def test_a_password_twice_or_for_sqlite_is_refused_without_echoing_it() -> None:
    from flashgate.backend.db import with_password

    with pytest.raises(ConfigurationError) as raised:
        with_password("postgresql://u:hunter2@h/db", "hunter3")
    assert "--db-password" in str(raised.value)
    assert "hunter" not in str(raised.value)
    with pytest.raises(ConfigurationError, match="--db-password") as raised:
        with_password("sqlite:///x.db", "hunter3")
    assert "hunter" not in str(raised.value)
