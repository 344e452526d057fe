"""The in-memory vault: decrypted secrets, only in this process, only until it stops.

Each value lives in a ``bytearray`` that is overwritten with zeros when it is replaced,
deleted or purged. Consumers never get a copy they could keep by accident: :meth:`use`
lends a read-only ``memoryview`` for the duration of a ``with`` block, and the view is
released afterwards. (CPython cannot stop code from copying what it was lent; the vault
makes the safe path the easy one.)

Versions only go forward: a version lower than the one held is refused (rollback), the
same version with the same value is a no-op (a re-wrap during a fleet key rotation opens
to the same value), the same version with another value is refused (a version names one
value: nothing replaces it silently), a higher one replaces the value and wipes the old
buffer.
"""

from __future__ import annotations

import contextlib
import hmac
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from flashgate.crypto.api_key_tokens import secrets_match
from flashgate.errors import SecretNotHeld, StaleVersion, VersionConflict
from flashgate.events.envelope import ProvenApiKey
from flashgate.events.subjects import split_secret_key


@dataclass(repr=False, slots=True)
class _Slot:
    version: int
    epoch: int
    kind: str
    data: bytearray
    api_key_id: str | None = None
    source: bytes = b""  # digest of the envelope's wrapped key it was last opened from
    api_key: ProvenApiKey | None = None  # what the admin's statement proves of the key

    def wipe(self) -> None:
        """Overwrite with zeros, then release the memory. While a consumer still holds a
        view lent by :meth:`Vault.use` the buffer cannot be resized: it stays zeroed and
        is freed when the view is released."""
        self.data[:] = bytes(len(self.data))
        with contextlib.suppress(BufferError):
            self.data.clear()

    def __repr__(self) -> str:
        return (
            f"_Slot(version={self.version}, epoch={self.epoch}, kind={self.kind!r}, "
            "data=<redacted>)"
        )


@dataclass(frozen=True)
class HeldSecretInfo:
    key: str
    version: int
    epoch: int
    kind: str


class Vault:
    def __init__(self) -> None:
        self._slots: dict[str, _Slot] = {}
        self._api_keys: dict[str, str] = {}  # key id -> secrets-bucket key
        self._by_repo: dict[str, set[str]] = {}  # repo -> its secrets' keys (API keys aside)
        self._lock = threading.RLock()
        self.rollbacks_refused = 0
        self.conflicts_refused = 0

    def __repr__(self) -> str:
        return f"Vault(<{len(self._slots)} secrets held>)"

    def __len__(self) -> int:
        return len(self._slots)

    def put(
        self,
        key: str,
        version: int,
        epoch: int,
        kind: str,
        plaintext: bytes | bytearray,
        *,
        api_key_id: str | None = None,
        source: bytes = b"",
        api_key: ProvenApiKey | None = None,
    ) -> bool:
        """Hold ``plaintext`` as ``key`` at ``version``, opened from the envelope whose
        wrapped key has digest ``source`` (an API key's secret: with ``api_key``, the key's
        id, scope and access as the admin's statement proves them). Returns False when the
        value is unchanged (the same version, perhaps re-wrapped under another epoch or put
        back: the held epoch and source become the given ones); raises
        :class:`StaleVersion` for a rollback. The caller's buffer is wiped if it is a
        bytearray."""
        if api_key is not None:
            api_key_id = api_key.key_id
        with self._lock:
            current = self._slots.get(key)
            if current is not None and version < current.version:
                self.rollbacks_refused += 1
                _wipe_input(plaintext)
                raise StaleVersion(
                    f"{key}: version {version} is below the held version {current.version}"
                )
            if current is not None and version == current.version:
                same = hmac.compare_digest(current.data, plaintext)  # no copy of either
                _wipe_input(plaintext)
                if not same:
                    self.conflicts_refused += 1
                    raise VersionConflict(
                        f"{key}: version {version} opened to another value than the one held"
                    )
                current.epoch, current.source = epoch, source
                return False
            slot = _Slot(
                version=version,
                epoch=epoch,
                kind=kind,
                data=bytearray(plaintext),
                api_key_id=api_key_id,
                source=source,
                api_key=api_key,
            )
            _wipe_input(plaintext)
            self._slots[key] = slot
            if api_key_id is not None:
                self._api_keys[api_key_id] = key
            else:
                repo = key.partition(".")[0]
                keys = self._by_repo.get(repo)
                if keys is None:
                    keys = self._by_repo[repo] = set()
                keys.add(key)
            if current is not None:
                current.wipe()
            return True

    def delete(self, key: str) -> bool:
        with self._lock:
            slot = self._slots.pop(key, None)
            if slot is None:
                return False
            if slot.api_key_id is not None:
                self._api_keys.pop(slot.api_key_id, None)
            else:
                self._by_repo.get(key.partition(".")[0], set()).discard(key)
            slot.wipe()
            return True

    def purge(self) -> int:
        """Wipe and forget everything. Returns how many secrets were held."""
        with self._lock:
            count = len(self._slots)
            for slot in self._slots.values():
                slot.wipe()
            self._slots.clear()
            self._api_keys.clear()
            self._by_repo.clear()
            return count

    def version_of(self, key: str) -> int | None:
        slot = self._slots.get(key)
        return None if slot is None else slot.version

    def held_as(self, key: str) -> tuple[int, int, bytes] | None:
        """(version, epoch, source) of what is held for ``key``: the fleet key epoch and
        the wrapped-key digest of the envelope it was last opened from."""
        slot = self._slots.get(key)
        return None if slot is None else (slot.version, slot.epoch, slot.source)

    def held(self) -> list[HeldSecretInfo]:
        with self._lock:
            return [
                HeldSecretInfo(k, s.version, s.epoch, s.kind)
                for k, s in sorted(self._slots.items())
            ]

    @contextmanager
    def use(self, key: str) -> Iterator[memoryview]:
        """Lend the value of ``key`` read-only for the ``with`` block."""
        with self._lock:
            slot = self._slots.get(key)
            if slot is None or slot.api_key_id is not None:
                raise SecretNotHeld(f"secret {key} is not held")
            view = memoryview(slot.data).toreadonly()
        try:
            yield view
        finally:
            view.release()

    def names_of(self, repo: str, kind: str) -> list[str]:
        """The names of the secrets of ``kind`` held for ``repo``, sorted."""
        prefix = f"{repo}."
        with self._lock:
            return sorted(
                k[len(prefix) :] for k in self._by_repo.get(repo, ()) if self._slots[k].kind == kind
            )

    def api_key(self, key_id: str) -> tuple[str, ProvenApiKey] | None:
        """(repository, proven id/scope/access) of the live API key ``key_id``, or None
        (unknown, revoked, or held without a statement about it)."""
        with self._lock:
            key = self._api_keys.get(key_id)
            slot = self._slots.get(key) if key is not None else None
            if key is None or slot is None or slot.api_key is None:
                return None
            return split_secret_key(key)[0], slot.api_key

    @contextmanager
    def use_api_key(self, key_id: str) -> Iterator[memoryview]:
        """Lend the secret of the live API key ``key_id`` read-only for the ``with`` block
        (a gateway derives a SigV4 signing key from it)."""
        with self._lock:
            key = self._api_keys.get(key_id)
            slot = self._slots.get(key) if key is not None else None
            if slot is None:
                raise SecretNotHeld(f"API key {key_id} is not held")
            view = memoryview(slot.data).toreadonly()
        try:
            yield view
        finally:
            view.release()

    def verify_api_key(self, key_id: str, presented: bytes) -> bool:
        """Whether ``presented`` is the secret of the live API key ``key_id`` (constant time
        in the secret; an unknown key id is compared against a dummy of the same form)."""
        with self._lock:
            key = self._api_keys.get(key_id)
            slot = self._slots.get(key) if key is not None else None
            held = bytes(slot.data) if slot is not None else b"\x00" * len(presented)
        match = secrets_match(held, presented)
        return match and slot is not None


def _wipe_input(buffer: bytes | bytearray) -> None:
    if isinstance(buffer, bytearray):
        buffer[:] = b"\x00" * len(buffer)
