"""The gateway's :class:`~flashgate.gateway.authority.Authority` over this node's vault.

Every answer is read from the vault at the moment it is asked: a revoked API key (its
envelope deleted, so purged from the vault) is unknown from the next request on, and a
rotated credential (a higher version replaces the held one) is the one lent next. A key's
repository, scope and access are those the admin's signed statement proves (the loader
hands them to the vault with the key's secret); its label is not used.

Typed values (:mod:`flashgate.events.values`) are decoded from the bytes the vault lends,
inside the ``with`` block: the decoded value is handed on for that block only (Python
strings cannot be wiped; the consumer must not keep it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import TypeVar

import msgspec

from flashgate.bridge.vault import Vault
from flashgate.errors import SecretNotHeld
from flashgate.events.subjects import secret_key
from flashgate.events.values import AiCredential, StorageValue
from flashgate.gateway.authority import Grant

T = TypeVar("T")
_STORAGE: msgspec.json.Decoder[StorageValue] = msgspec.json.Decoder(StorageValue)
_AI: msgspec.json.Decoder[AiCredential] = msgspec.json.Decoder(AiCredential)


@dataclass
class VaultAuthority:
    vault: Vault
    #: The node's initial load is done (its buckets bound and their values loaded).
    is_ready: Callable[[], bool]

    def ready(self) -> bool:
        return self.is_ready()

    def grant(self, key_id: str) -> Grant | None:
        found = self.vault.api_key(key_id)
        if found is None:
            return None
        repo, proven = found
        return Grant(key_id=proven.key_id, repo=repo, scope=proven.scope, access=proven.access)

    def verify(self, key_id: str, presented: bytes) -> Grant | None:
        ok = self.vault.verify_api_key(key_id, presented)  # constant time, known or not
        grant = self.grant(key_id)
        return grant if ok and grant is not None else None

    def key_secret(self, key_id: str) -> AbstractContextManager[memoryview]:
        return self.vault.use_api_key(key_id)

    def storage_names(self, repo: str) -> list[str]:
        return self.vault.names_of(repo, "storage")

    @contextmanager
    def storage(self, repo: str, name: str) -> Iterator[StorageValue]:
        key = secret_key(repo, name)
        if name not in self.vault.names_of(repo, "storage"):
            raise SecretNotHeld(f"storage secret {key} is not held")
        with self.vault.use(key) as view:
            value = _decode(_STORAGE, view, key)
        try:
            yield value
        finally:
            del value

    @contextmanager
    def ai(self, repo: str, provider: str) -> Iterator[AiCredential]:
        """The first (by name) of ``repo``'s AI secrets whose provider is ``provider``."""
        for name in self.vault.names_of(repo, "ai"):
            key = secret_key(repo, name)
            try:
                with self.vault.use(key) as view:
                    value = _decode(_AI, view, key)
            except SecretNotHeld:
                continue  # deleted meanwhile
            if value.provider != provider:
                del value
                continue
            try:
                yield value
            finally:
                del value
            return
        raise SecretNotHeld(f"repository {repo} holds no AI secret for {provider}")


def _decode(decoder: msgspec.json.Decoder[T], view: memoryview, key: str) -> T:
    try:
        return decoder.decode(view)
    except msgspec.DecodeError:  # the loader checked it; never held otherwise
        raise SecretNotHeld(f"secret {key} does not hold a value of its kind") from None
