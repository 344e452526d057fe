"""The exception tree: every class in flashgate/errors.py, each where a caller expects it."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import flashgate
from flashgate import errors


def _flashgate_modules() -> list[str]:
    return [
        info.name
        for info in pkgutil.walk_packages(flashgate.__path__, "flashgate.")
        if ".migrations." not in info.name
    ]


def test_every_exception_class_is_declared_in_errors() -> None:
    """Private control-flow signals (a leading underscore, never raised out of their
    module) are the only exception classes allowed elsewhere."""
    elsewhere = []
    for name in _flashgate_modules():
        module = importlib.import_module(name)
        for attr, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == name
                and name != "flashgate.errors"
                and not attr.startswith("_")
            ):
                elsewhere.append(f"{name}.{attr}")
    assert elsewhere == []


def test_a_kind_change_is_a_conflict_with_the_secret_not_a_configuration_error() -> None:
    assert issubclass(errors.KindChange, errors.ConflictError)
    assert not issubclass(errors.KindChange, errors.ConfigurationError)
    assert errors.KindChange.code == "kind_change"


def test_a_failed_query_is_not_a_rejected_command() -> None:
    failed = errors.QueryFailed("invalid_name", "repo 'Not.Valid'")
    assert not isinstance(failed, errors.CommandRejected)
    assert (failed.code, failed.reason) == ("query_failed", "invalid_name")
    assert "invalid_name" in failed.message and "Not.Valid" in failed.message
    rejected = errors.CommandRejected("stale_version", "expected version 2")
    assert (rejected.code, rejected.reason) == ("command_rejected", "stale_version")
    assert rejected.message == "rejected (stale_version): expected version 2"
