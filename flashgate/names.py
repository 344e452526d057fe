"""Names of fleets, repositories, secrets and nodes: ``[a-z0-9_-]{1,64}``.

They appear in NATS subjects, KV keys, file names and JWE headers, so they are validated
before they reach any of those (a dot or a wildcard in a name would change a subject).
"""

from __future__ import annotations

import re

from flashgate.errors import InvalidName

NAME_PATTERN = r"^[a-z0-9_-]{1,64}$"
_NAME_RE = re.compile(NAME_PATTERN)
#: Names already found valid (a node checks the same fleet, repository and kind names in
#: every envelope it reads: eight checks per envelope). Only exact ``str`` values are kept
#: (a subclass could compare equal to a kept name); cleared when full.
_VALID: set[str] = set()
_VALID_MAX = 4096


def validate_name(value: object, what: str = "name") -> str:
    """Return ``value`` if it is a valid name, else raise :class:`InvalidName`."""
    if type(value) is str and value in _VALID:
        return value
    if not isinstance(value, str) or _NAME_RE.fullmatch(value) is None:
        shown = repr(value)[:80] if isinstance(value, str) else type(value).__name__
        raise InvalidName(f"invalid {what} {shown}: names are 1 to 64 of [a-z0-9_-]")
    if type(value) is str:
        if len(_VALID) >= _VALID_MAX:
            _VALID.clear()
        _VALID.add(value)
    return value
