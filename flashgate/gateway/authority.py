"""What a gateway may ask of the node that runs it (DESIGN §7).

The gateway decides with values the node opened and verified (provenance, typed values);
it never sees the vault. :class:`Authority` is the seam: the bridge implements it over its
vault, tests may implement it over values of their own. Every lookup is made per request,
so a revoked API key is refused and a rotated credential used from the next request on.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from flashgate.events.types import ApiKeyScope
from flashgate.events.values import AiCredential, StorageValue


@dataclass(frozen=True)
class Grant:
    """A live repository API key, as its admin-signed statement proves it: never its secret."""

    key_id: str
    repo: str
    scope: ApiKeyScope
    access: str  # read|write|admin for storage; the provider's type for ai


class Authority(Protocol):
    def ready(self) -> bool:
        """False while the node has not finished its initial load (answer 503, not 403)."""
        ...

    def grant(self, key_id: str) -> Grant | None:
        """The live API key ``key_id``, or None (unknown, revoked, not loaded)."""
        ...

    def verify(self, key_id: str, presented: bytes) -> Grant | None:
        """The grant if ``presented`` is the secret of the live key ``key_id`` (constant
        time in the secret), else None."""
        ...

    def key_secret(self, key_id: str) -> AbstractContextManager[memoryview]:
        """Lend the secret of the live API key ``key_id`` read-only for a ``with`` block (to
        derive a SigV4 signing key). Raises :class:`~flashgate.errors.SecretNotHeld`."""
        ...

    def storage_names(self, repo: str) -> list[str]:
        """The names of the storage secrets ``repo`` holds (its virtual buckets), sorted."""
        ...

    def storage(self, repo: str, name: str) -> AbstractContextManager[StorageValue]:
        """Lend the typed value of the storage secret ``repo/name`` for a ``with`` block.
        Raises :class:`~flashgate.errors.SecretNotHeld`."""
        ...

    def ai(self, repo: str, provider: str) -> AbstractContextManager[AiCredential]:
        """Lend the typed value of ``repo``'s AI secret for ``provider`` for a ``with``
        block. Raises :class:`~flashgate.errors.SecretNotHeld`."""
        ...
