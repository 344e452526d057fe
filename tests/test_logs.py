"""The log pipeline refuses values of secret types (a second line of defence behind the
canary tests: log calls pass identifiers, never values)."""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterator

import pytest
import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from flashgate import logs
from flashgate.bridge.vault import Vault
from flashgate.crypto.decrypt import OpenedSecret
from flashgate.events.values import S3Storage
from tests.support.material import CANARY, dealing


@pytest.fixture
def logged(capsys: pytest.CaptureFixture[str]) -> Iterator[pytest.CaptureFixture[str]]:
    try:
        yield capsys
    finally:
        structlog.contextvars.clear_contextvars()
        structlog.reset_defaults()


def logger() -> structlog.typing.FilteringBoundLogger:
    """The services' pipeline, printing to this test's captured stderr."""
    logs.configure(level="debug", json=True)
    return structlog.get_logger("test")  # type: ignore[no-any-return]


def lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    return [json.loads(line) for line in capsys.readouterr().err.splitlines() if line]


def test_a_plaintext_buffer_is_replaced_and_flagged(
    logged: pytest.CaptureFixture[str],
) -> None:
    vault = Vault()
    vault.put("app.db", 1, 1, "generic", CANARY)
    log = logger()
    with vault.use("app.db") as view:
        log.warning("held", value=view, copy=bytearray(view), key="app.db")
    (line,) = lines(logged)
    assert CANARY.decode() not in json.dumps(line)
    assert line["value"] == "<refused: memoryview>"
    assert line["copy"] == "<refused: bytearray>"
    assert line["key"] == "app.db"  # identifiers pass
    assert line["secrets_refused"] == ["copy", "value"]


def test_key_material_and_values_are_refused_wherever_they_sit(
    logged: pytest.CaptureFixture[str],
) -> None:
    fleet = dealing(3, 2)
    share = fleet.shares[0]
    admin = Ed25519PrivateKey.generate()
    opened = OpenedSecret(plaintext=CANARY, context=None)
    value = S3Storage(
        type="storage",
        bucket="b",
        region="r",
        access_key_id="AKIA",
        secret_access_key=CANARY.decode(),
    )
    structlog.contextvars.bind_contextvars(bound=share)
    logger().info(
        "oops",
        share=share,
        dealing=fleet,
        nested={"keys": [admin, 1], "value": value},
        opened=opened,
    )
    (line,) = lines(logged)
    assert line["share"] == "<refused: KeyShare>"
    assert line["bound"] == "<refused: KeyShare>"
    assert line["dealing"] == "<refused: Dealing>"
    assert line["opened"] == "<refused: OpenedSecret>"
    assert line["nested"] == {
        "keys": ["<refused: Ed25519PrivateKey>", 1],
        "value": "<refused: S3Storage>",
    }
    assert line["secrets_refused"] == ["bound", "dealing", "nested", "opened", "share"]


def test_an_ordinary_event_passes_untouched(logged: pytest.CaptureFixture[str]) -> None:
    logger().info("loaded", key="app.db", version=3, digest=b"\x01")
    (line,) = lines(logged)
    assert line["key"] == "app.db" and line["version"] == 3
    assert "secrets_refused" not in line


def test_every_named_secret_type_exists() -> None:
    """A renamed class must not drop out of the list silently."""
    for name in logs.SECRET_TYPE_NAMES:
        module, _, qualname = name.rpartition(".")
        assert isinstance(getattr(importlib.import_module(module), qualname), type), name
