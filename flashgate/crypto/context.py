"""The secret context bound into every envelope: fleet, repository, name, kind, version.

It travels in the JWE protected header as the private parameter ``flashgate``, and so is
part of the AES-GCM additional data: an envelope moved to another secret, repository, kind
or version no longer opens. Decryptors compare it with where they found the envelope.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from flashgate.errors import ContextMismatch, FlashgateError, MalformedEnvelope, MissingContext
from flashgate.names import validate_name

HEADER_PARAM = "flashgate"
CONTEXT_FORMAT = 1
#: The highest secret version, in a JWE's context and on the wire (``events.types.Version``).
#: Each write is the current version + 1, so no secret gets near it; a higher cap would let
#: one write pin a secret where it can never be rotated again (issue 14 §4).
MAX_VERSION = 2**31 - 1


@dataclass(frozen=True, slots=True)
class SecretContext:
    fleet: str
    repo: str
    name: str
    kind: str
    version: int

    def __post_init__(self) -> None:
        validate_name(self.fleet, "fleet name")
        validate_name(self.repo, "repository name")
        validate_name(self.name, "secret name")
        validate_name(self.kind, "secret kind")
        if type(self.version) is not int or not 1 <= self.version <= MAX_VERSION:
            raise ContextMismatch(f"secret version must be an integer from 1 to {MAX_VERSION}")

    @property
    def key(self) -> str:
        """The secret's key in the secrets bucket: ``<repo>.<name>``."""
        return f"{self.repo}.{self.name}"

    def to_header(self) -> dict[str, Any]:
        return {
            "v": CONTEXT_FORMAT,
            "fleet": self.fleet,
            "repo": self.repo,
            "name": self.name,
            "kind": self.kind,
            "version": self.version,
        }

    @classmethod
    def from_header(cls, value: object) -> SecretContext:
        if not isinstance(value, dict):
            raise MalformedEnvelope(f"the {HEADER_PARAM!r} header parameter must be an object")
        expected = {"v", "fleet", "repo", "name", "kind", "version"}
        if set(value) != expected:
            raise MalformedEnvelope(
                f"the {HEADER_PARAM!r} header parameter must have exactly {sorted(expected)}"
            )
        if value["v"] != CONTEXT_FORMAT or type(value["v"]) is not int:
            raise MalformedEnvelope(f"unsupported {HEADER_PARAM!r} context format")
        try:
            return cls(
                fleet=value["fleet"],
                repo=value["repo"],
                name=value["name"],
                kind=value["kind"],
                version=value["version"],
            )
        except FlashgateError as exc:
            raise MalformedEnvelope(f"invalid secret context: {exc}") from exc

    def describe(self) -> str:
        return f"{self.fleet}/{self.repo}/{self.name} ({self.kind}) v{self.version}"


class ContextFields(Protocol):
    """A context's five fields: a :class:`SecretContext`, or an envelope record's own
    (compared field by field, no context built for it)."""

    @property
    def fleet(self) -> str: ...
    @property
    def repo(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def version(self) -> int: ...


def check_context(actual: SecretContext | None, expected: ContextFields) -> None:
    """Raise :class:`ContextMismatch` naming the first field that differs."""
    if actual is None:
        raise MissingContext("the envelope carries no flashgate context")
    if (actual.fleet, actual.repo, actual.name, actual.kind, actual.version) == (
        expected.fleet,
        expected.repo,
        expected.name,
        expected.kind,
        expected.version,
    ):
        return  # (checked for every envelope opened: the loop below names a difference)
    for field in ("fleet", "repo", "name", "kind", "version"):
        if getattr(actual, field) != getattr(expected, field):
            raise ContextMismatch(
                f"envelope {field} {getattr(actual, field)!r} does not match "
                f"expected {getattr(expected, field)!r}"
            )
