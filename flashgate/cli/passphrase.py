"""Where the sealing passphrase comes from: ``FLASHGATE_PASSPHRASE``, else a prompt."""

from __future__ import annotations

import getpass
import os
import sys

from flashgate.errors import ConfigurationError

PASSPHRASE_ENV = "FLASHGATE_PASSPHRASE"  # noqa: S105 - a variable name, not a password


def get_passphrase(*, confirm: bool) -> str:
    value = os.environ.get(PASSPHRASE_ENV)
    if value:
        return value
    if value == "":
        raise ConfigurationError(f"{PASSPHRASE_ENV} is set but empty")
    if not sys.stdin.isatty():
        raise ConfigurationError(
            f"no passphrase: set {PASSPHRASE_ENV} (stdin is not a terminal to prompt on)"
        )
    first = getpass.getpass("bundle passphrase: ")
    if confirm and getpass.getpass("again: ") != first:
        raise ConfigurationError("the passphrases do not match")
    if not first:
        raise ConfigurationError("empty passphrase")
    return first
