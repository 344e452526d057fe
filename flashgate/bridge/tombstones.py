"""Deleted secrets and revoked API keys, for good (issue 14; DESIGN §8).

A deletion in the secrets bucket is a marker anyone who writes the bucket can undo by
putting the last envelope back: its admin statement still verifies. So the backend also
writes the admin-signed ``secret.delete`` / ``apikey.revoke`` command, as signed, into the
fleet bucket (``tombstone.secret.<repo>.<name>``, ``tombstone.apikey.<key id>``). A node
checks each tombstone under the pinned admin key, keeps it in a file beside its bundle
(``<bundle>.tombstones``, one signed command per line, checked again when read) and never
forgets it: removing the tombstone from the bucket changes nothing for a node that has
read it.

An envelope is dead when a tombstone of its secret (repository and name), or of its API
key's id, was issued at or after the envelope's own statement (both times are the admin's
clock): a secret deleted and put again later lives, an old envelope written back does not.
A dead envelope is never loaded and no partial is computed for it (the check is part of the
store's proof, :mod:`flashgate.bridge.store`), so a node that has never read a tombstone
(a new node, a lost home) still cannot open a deleted secret unless ``t - 1`` of its peers
have forgotten it too.

The file is not secret and is not sealed: every line is admin-signed, so whoever can write
it can only remove lines, and that needs the node's own disk.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from flashgate.bridge.store import Entry
from flashgate.errors import FlashgateError, FleetMismatch, MalformedDocument, Tombstoned
from flashgate.events import commands as cmd
from flashgate.events.envelope import SecretEnvelope
from flashgate.events.signing import verify
from flashgate.events.subjects import split_secret_key

log = structlog.get_logger("flashgate.bridge")

#: The largest tombstone line read back (a signed command is well under 1 KiB).
MAX_LINE = 4096


@dataclass(frozen=True)
class Tombstone:
    """What a checked tombstone says: ``target`` dead for every statement up to ``issued_at``."""

    target: str  # "secret:<repo>.<name>" or "apikey:<key id>"
    issued_at: int
    command_id: str


def secret_target(repo: str, name: str) -> str:
    return f"secret:{repo}.{name}"


def api_key_target(key_id: str) -> str:
    return f"apikey:{key_id}"


def tombstones_path(bundle_path: Path) -> Path:
    """Where a node keeps its tombstones: beside its bundle."""
    return bundle_path.with_name(bundle_path.name + ".tombstones")


class Tombstones:
    def __init__(self, fleet: str, admin_key: Ed25519PublicKey, path: Path | None = None) -> None:
        self.fleet = fleet
        self.admin_key = admin_key
        self.path = path
        self._latest: dict[str, int] = {}  # target -> the latest issued_at accepted
        self.refused = 0  # tombstones that did not check (forged, foreign, malformed)
        self._unsaved: list[bytes] = []  # accepted, not yet on disk (:meth:`save`)
        self._checked: set[bytes] = set()  # digests of the exact documents checked already

    def __len__(self) -> int:
        return len(self._latest)

    def __repr__(self) -> str:
        return f"Tombstones(<{len(self._latest)} kept>)"

    def parse(self, raw: bytes) -> Tombstone:
        """Check one tombstone: an admin-signed ``secret.delete`` or ``apikey.revoke``
        command of this fleet. Raises the typed error that makes it unusable."""
        if len(raw) > MAX_LINE:
            raise MalformedDocument("a tombstone larger than a signed command can be")
        command = cmd.COMMAND_CODEC.decode(raw)
        if isinstance(command, cmd.DeleteSecret):
            target = secret_target(command.repo, command.name)
        elif isinstance(command, cmd.RevokeApiKey):
            target = api_key_target(command.key_id)
        else:
            raise MalformedDocument(f"a {command.command_type} command is not a tombstone")
        if command.fleet != self.fleet:
            raise FleetMismatch(f"tombstone for fleet {command.fleet!r}")
        verify(command, self.admin_key)
        return Tombstone(target, command.issued_at, command.command_id)

    def accept(self, raw: bytes) -> Tombstone | None:
        """Take a tombstone read from the fleet bucket. Returns it when it is news (a target
        not dead up to its time yet; :meth:`save` then keeps it on disk); None when it
        changes nothing or does not check (counted and logged)."""
        digest = hashlib.sha256(raw).digest()
        if digest in self._checked:  # read back from disk already: no second verify
            return None
        try:
            tombstone = self.parse(raw)
        except FlashgateError as exc:
            self.refused += 1
            log.warning("tombstone refused", reason=exc.code, detail=exc.message[:200])
            return None
        self._checked.add(digest)
        if not self._take(tombstone):
            return None
        self._unsaved.append(raw)
        log.info(
            "tombstone kept",
            target=tombstone.target,
            command_id=tombstone.command_id,
            issued_at=tombstone.issued_at,
        )
        return tombstone

    def save(self) -> None:
        """Append the tombstones accepted since the last save to the file, durably (one
        fsync for all of them: a node's first start may read many). Blocking I/O: run it in
        a thread."""
        lines, self._unsaved = self._unsaved, []
        if self.path is None or not lines:
            return
        try:
            _append_lines(self.path, lines)
        except OSError as exc:
            self._unsaved = lines + self._unsaved  # tried again with the next one
            log.error("could not keep tombstones on disk", path=str(self.path), error=str(exc))

    def load(self) -> int:
        """Read back the tombstones kept before (each checked again). Returns how many."""
        if self.path is None or not self.path.exists():
            return 0
        count = 0
        with self.path.open("rb") as file:
            for number, line in enumerate(file, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    self._take(self.parse(line))
                    self._checked.add(hashlib.sha256(line).digest())
                except FlashgateError as exc:
                    self.refused += 1
                    log.error(
                        "a kept tombstone does not check; ignored",
                        path=str(self.path),
                        line=number,
                        reason=exc.code,
                    )
                    continue
                count += 1
        return count

    def _take(self, tombstone: Tombstone) -> bool:
        held = self._latest.get(tombstone.target)
        if held is not None and held >= tombstone.issued_at:
            return False
        self._latest[tombstone.target] = tombstone.issued_at
        return True

    def check(self, envelope: SecretEnvelope) -> None:
        """Raise :class:`Tombstoned` if ``envelope`` (already proven) was stated no later
        than a tombstone of its secret or its API key."""
        provenance = envelope.provenance
        if provenance is None or not self._latest:
            return
        statement = provenance.statement
        targets = [secret_target(statement.repo, statement.name)]
        if statement.api_key is not None:
            targets.append(api_key_target(statement.api_key.key_id))
        for target in targets:
            deleted_at = self._latest.get(target)
            if deleted_at is not None and statement.issued_at <= deleted_at:
                raise Tombstoned(
                    f"{envelope.key}: stated at {statement.issued_at}, deleted at {deleted_at}"
                )

    def dead(self, envelope: SecretEnvelope) -> bool:
        try:
            self.check(envelope)
        except Tombstoned:
            return True
        return False

    def dead_entry(self, entry: Entry) -> bool:
        """:meth:`dead` for a store entry, from what it keeps of its proof (the envelope
        itself goes once loaded)."""
        if entry.issued_at is None or not self._latest:
            return False
        repo, name = split_secret_key(entry.key)
        targets = [secret_target(repo, name)]
        if entry.api_key_id is not None:
            targets.append(api_key_target(entry.api_key_id))
        for target in targets:
            deleted_at = self._latest.get(target)
            if deleted_at is not None and entry.issued_at <= deleted_at:
                return True
        return False


def _append_lines(path: Path, lines: list[bytes]) -> None:
    data = b"".join(line.replace(b"\n", b"") + b"\n" for line in lines)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
