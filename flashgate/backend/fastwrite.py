"""The fast path of the write path: a new secret or the next version of one, in one step.

Nearly every command a backend applies is ``secret.put`` of a new secret (version 1) or
``secret.rotate`` to the next version of a live one. The general path
(:meth:`CommandProcessor._apply <flashgate.backend.commands.CommandProcessor._apply>`)
applies them with about eight database round trips, each an await on the event loop. A
:class:`FastWriter` applies that common case in one step instead:

* PostgreSQL (:mod:`flashgate.backend.pgwrite`): one statement of data-modifying CTEs;
* SQLite (:mod:`flashgate.backend.sqlitewrite`): one short transaction run in a thread of
  its own, on a connection of its own.

Both write nothing unless every condition of the common case holds: the fleet's epochs are
those this backend holds, the command id was never processed, and the secret is new (put)
or live, of the command's kind and at the version before (rotate). Then they write exactly
the rows the general path would (tests compare the two on both databases). Otherwise the
writer reports that nothing was written, and the general path decides, with the words of
its refusals.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class SecretWrite:
    """Everything a fast write stores, computed (and the envelope checked) beforehand."""

    fleet_id: int
    epoch: int  # the fleet's current epoch, as this backend holds it
    rotating_to: int | None  # ... and the epoch it is rotating to
    command_id: str
    command_type: str
    outcome_msg_id: str
    repository_id: int
    name: str
    kind: str
    version: int
    envelope_epoch: int
    jwe: str
    at: datetime
    outbox: Sequence[dict[str, Any]]  # in order: subject, msg_id, operation, payload
    fleet: str
    actor: str
    target: str


class FastWriter(Protocol):
    async def write_secret(self, write: SecretWrite, *, rotate: bool) -> bool:
        """Apply ``write``: True if applied; False if nothing was written (not the common
        case after all). Raises on a database failure, having written nothing."""
        ...

    async def close(self) -> None: ...
