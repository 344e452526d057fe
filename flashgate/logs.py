"""Logging setup for the services: structlog, JSON lines or a console view, to stderr.

Log calls pass identifiers (fleet, secret key, version, command id, node id, reason codes)
and never values: no plaintext, partial decryption, share, passphrase or envelope body.
Behind that rule (and the canary tests that check it), :func:`refuse_secrets` is a second
line of defence: a value of a secret-holding type anywhere in an event (a plaintext buffer,
a key share, a private key, a secret's value, a bundle...) is replaced by
``"<refused: TYPE>"`` before any renderer sees it, and the event names the fields it
refused in ``secrets_refused``. Context such as the node's name is bound once through
:mod:`structlog.contextvars` (``bind_contextvars``), not passed to every call.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa, x448, x25519

#: Classes of ours whose instances hold secrets (by module and name, so that this module
#: imports none of their packages); a subclass counts too. tests/test_logs.py checks that
#: every name still names a class.
SECRET_TYPE_NAMES = frozenset(
    {
        "flashgate.crypto.threshold.keys.KeyShare",
        "flashgate.crypto.threshold.dealing.Dealing",
        "flashgate.crypto.decrypt.OpenedSecret",
        "flashgate.events.values._Value",  # a secret's typed value (credentials)
        "flashgate.events.share.ShareResults",  # partial decryptions
        "flashgate.fleet.ceremony.Ceremony",
        "flashgate.fleet.bundle.NodeBundle",
        "flashgate.fleet.epoch_dealing.EpochKey",
        "flashgate.fleet.recovery.Recovered",
        "flashgate.bridge.vault.Vault",
        "flashgate.bridge.vault._Slot",
        "flashgate.bridge.keyring.EpochSlot",
        "flashgate.bridge.partials.PartialCache",
        "flashgate.bridge.partial_engine.PartialEngine",
        "flashgate.bridge.fastpath.FastPath",  # ring term keys and content keys
        "flashgate.bridge.fastpath._HeldKey",  # a content key
        "flashgate.cli.home.RoleLogin",
        "flashgate.cli.secret.ValueInput",
    }
)
#: Key material of ``cryptography``, and the buffers plaintexts are held and lent in.
SECRET_BASES: tuple[type, ...] = (
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
    x25519.X25519PrivateKey,
    x448.X448PrivateKey,
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    bytearray,
    memoryview,
)
_NESTING = 4  # containers deeper than this are refused whole


def _is_secret(value: object) -> bool:
    if isinstance(value, SECRET_BASES):
        return True
    return any(f"{c.__module__}.{c.__qualname__}" in SECRET_TYPE_NAMES for c in type(value).__mro__)


def _refuse(value: Any, depth: int = 0) -> tuple[Any, bool]:
    """``value`` with every secret inside it replaced; True if anything was."""
    if isinstance(value, str | int | float | bool | bytes | None):
        return value, False
    if _is_secret(value):
        return f"<refused: {type(value).__name__}>", True
    if isinstance(value, Mapping | list | tuple | set | frozenset):
        if depth >= _NESTING:
            return f"<refused: {type(value).__name__} nested too deep>", True
        if isinstance(value, Mapping):
            pairs = [(k, _refuse(v, depth + 1)) for k, v in value.items()]
            if any(hit for _, (_, hit) in pairs):
                return {k: v for k, (v, _) in pairs}, True
            return value, False
        items = [_refuse(v, depth + 1) for v in value]
        if any(hit for _, hit in items):
            return [v for v, _ in items], True
    return value, False


def refuse_secrets(
    _logger: object, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A structlog processor: replace values of secret types and name the fields."""
    refused = []
    for key, value in event_dict.items():
        cleaned, hit = _refuse(value)
        if hit:
            event_dict[key] = cleaned
            refused.append(key)
    if refused:
        event_dict["secrets_refused"] = sorted(refused)
    return event_dict


def configure(*, level: str = "info", json: bool | None = None) -> None:
    """Route structlog (and stdlib logging) to stderr. ``json`` defaults to "not a tty"."""
    as_json = (not sys.stderr.isatty()) if json is None else json
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer()
    )
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    logging.basicConfig(
        stream=sys.stderr,
        level=max(numeric, logging.WARNING),
        format="%(name)s %(levelname)s %(message)s",
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            refuse_secrets,  # before anything renders a value
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
