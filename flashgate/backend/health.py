"""The backend's health, for supervisors (compose's health check).

With ``--health-file PATH`` (``FLASHGATE_HEALTH_FILE``) the running backend checks itself
every :data:`CHECK_INTERVAL_S` seconds and rewrites PATH with the result:

- connected to NATS (a client that is reconnecting is not);
- the database answers (one read, bounded by :data:`DB_TIMEOUT_S`);
- its long-running tasks (command consumer, outbox relay) are still running;
- it can fetch commands (its durable consumer exists: one that someone deleted is
  recreated, and the gap is reported until then);
- the outbox relay is not stuck: no committed message has waited more than
  :data:`RELAY_STUCK_AFTER_S` seconds to be published. This is read from the database,
  so it holds for every replica whichever one holds the relay lease.

``flashgate backend health`` reads the file: healthy only if it says so and was written
less than ``--max-age`` seconds ago, so a hung or dead backend is unhealthy too (it stops
rewriting the file; a backend that stops removes it). The file holds no secret.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import func, select

from flashgate.backend.models import OutboxMessage
from flashgate.fleet.files import write_atomic

if TYPE_CHECKING:
    from flashgate.backend.service import Backend

CHECK_INTERVAL_S = 5.0
DB_TIMEOUT_S = 5.0
RELAY_STUCK_AFTER_S = 60.0
#: Default for ``flashgate backend health --max-age``: a few missed checks.
MAX_AGE_S = 30.0


async def _oldest_pending_age(backend: Backend) -> float | None:
    """Seconds the oldest unpublished outbox message has waited, or None if none waits."""
    assert backend.sessions is not None
    async with backend.sessions() as session:
        oldest = await session.scalar(
            select(func.min(OutboxMessage.created_at)).where(OutboxMessage.published_at.is_(None))
        )
    if oldest is None:
        return None
    if oldest.tzinfo is None:  # SQLite keeps no zone; the backend writes UTC
        oldest = oldest.replace(tzinfo=UTC)
    return (datetime.now(UTC) - oldest).total_seconds()


async def check(backend: Backend, *, stuck_after: float = RELAY_STUCK_AFTER_S) -> list[str]:
    """What is wrong with ``backend`` now (an empty list: healthy)."""
    problems = []
    if backend.nc is None or not backend.nc.is_connected:
        problems.append("not connected to NATS")
    for task in backend.tasks:
        if task.done() and not task.cancelled():
            problems.append(f"its {task.get_name()} task has ended")
    if backend.consumer_problem is not None:
        problems.append(backend.consumer_problem)
    try:
        age = await asyncio.wait_for(_oldest_pending_age(backend), DB_TIMEOUT_S)
    except TimeoutError:
        problems.append(f"the database did not answer within {DB_TIMEOUT_S:.0f}s")
    except Exception as exc:  # any failure to read is the finding
        problems.append(f"the database does not answer ({type(exc).__name__})")
    else:
        if age is not None and age > stuck_after:
            problems.append(f"outbox relay stuck: a message has waited {age:.0f}s to be published")
    return problems


def write(path: Path, problems: list[str]) -> None:
    body = {"healthy": not problems, "problems": problems, "checked_at": time.time()}
    write_atomic(path, json.dumps(body).encode(), 0o644)


async def run(
    backend: Backend,
    path: Path,
    *,
    interval: float = CHECK_INTERVAL_S,
    stuck_after: float = RELAY_STUCK_AFTER_S,
) -> None:
    """Rewrite ``path`` every ``interval`` seconds until cancelled; then remove it."""
    try:
        while True:
            write(path, await check(backend, stuck_after=stuck_after))
            await asyncio.sleep(interval)
    finally:
        path.unlink(missing_ok=True)


def read(path: Path, *, max_age: float = MAX_AGE_S) -> list[str]:
    """The problems a health file reports (an empty list: healthy)."""
    try:
        body = json.loads(path.read_bytes())
        checked_at = float(body["checked_at"])
        problems = [str(p) for p in body["problems"]]
        healthy = body["healthy"] is True
    except FileNotFoundError:
        return [f"no health file at {path} (the backend is not running, or not yet started)"]
    except (OSError, ValueError, KeyError, TypeError):
        return [f"unreadable health file at {path}"]
    age = time.time() - checked_at
    if age > max_age:
        return [f"the backend has not checked its health for {age:.0f}s (hung or stopped?)"]
    if not healthy and not problems:
        return ["the backend reports itself unhealthy"]
    return problems
