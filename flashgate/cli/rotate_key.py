"""``flashgate fleet rotate-key``: deal epoch k+1, have the bridges re-wrap, retire epoch k.

1. Deal: a fresh t-of-m key for the roster's active nodes (their identity keys stay), each
   share sealed to its node's X25519 key, sent in the admin-signed ``fleet.rotation.start``
   command. The home's ``fleet.json`` then names epoch k+1, so new secrets are written
   under it at once (the backend accepts k and k+1 while the rotation runs).
2. Re-wrap: the bridges re-wrap every content key from k to k+1 and the backend publishes
   the new envelopes; this command shows the progress from the backend's ``rotation``
   query. With fewer than t nodes online nothing moves: it waits and says so.
3. Verify and retire: once no live envelope uses k and every online node of the new epoch
   (at least t) holds every secret under k+1, it sends ``fleet.rotation.finish``: the
   nodes drop their epoch-k shares and re-seal their bundles.

Interrupted anywhere, running it again resumes: the rotation's state is in the backend.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path

import click
import rich.progress
from nats.js.errors import KeyNotFoundError

from flashgate.broker.connection import broker_errors
from flashgate.cli.hardening import harden_process
from flashgate.cli.home import fleet_dir, load_home_roster, resolve_home
from flashgate.cli.options import home_option, json_option
from flashgate.cli.session import AdminSession, run
from flashgate.cli.terminal import spinner, stderr_console
from flashgate.errors import (
    CommandRejected,
    ConfigurationError,
    Interrupted,
    RotationStalled,
)
from flashgate.events import commands as cmd
from flashgate.events.fleet import FleetDescriptor, decode_descriptor, encode_descriptor
from flashgate.events.queries import RotationInfo
from flashgate.fleet.descriptor import fleet_public_key, verify_descriptor
from flashgate.fleet.epoch_dealing import deal_next_epoch
from flashgate.fleet.files import DESCRIPTOR_FILE, write_atomic
from flashgate.runnable import command

POLL_S = 0.5
STATUS_EVERY_S = 2.0


@dataclass
class Progress:
    """Re-wrap progress: envelopes re-wrapped from the old epoch (``done``) and those still
    under it. Envelopes written under the new epoch meanwhile are not part of it."""

    from_epoch: int
    to_epoch: int
    total: int
    remaining: int

    @property
    def done(self) -> int:
        return self.total - self.remaining


def _progress(info: RotationInfo) -> Progress:
    assert info.rotating_to is not None
    remaining = info.envelopes.get(info.epoch, 0)
    return Progress(
        from_epoch=info.epoch,
        to_epoch=info.rotating_to,
        total=info.rewrapped + remaining,
        remaining=remaining,
    )


class Display:
    """A progress bar on a terminal's stderr (rich's); plain lines otherwise (unless --json)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.console = stderr_console()
        self.tty = self.console.is_terminal
        self._last_note = ""
        self._last_bar = ""
        self._live: rich.progress.Progress | None = None
        self._task: rich.progress.TaskID | None = None

    def bar(self, p: Progress) -> None:
        if self.quiet:
            return
        text = f"re-wrapping epoch {p.from_epoch} -> {p.to_epoch}"
        if self.tty:
            if self._live is None or self._task is None:
                self._live = rich.progress.Progress(
                    rich.progress.TextColumn("{task.description}"),
                    rich.progress.BarColumn(),
                    rich.progress.MofNCompleteColumn(),
                    console=self.console,
                )
                self._task = self._live.add_task(text, total=p.total, completed=p.done)
                self._live.start()
            else:
                self._live.update(self._task, description=text, total=p.total, completed=p.done)
            return
        width = 30
        filled = width if p.total == 0 else int(width * p.done / p.total)
        line = f"{text} [{'#' * filled}{'.' * (width - filled)}] {p.done}/{p.total}"
        if line != self._last_bar and (p.remaining == 0 or p.done % 100 == 0):
            click.echo(line, err=True)
        self._last_bar = line

    def note(self, text: str) -> None:
        """A line of its own, above the bar while the bar is drawn."""
        if self.quiet or text == self._last_note:
            return
        self._last_note = text
        if self._live is not None:
            self._live.console.print(text)
        else:
            click.echo(text, err=True)

    def close(self) -> None:
        """Stop drawing the bar: its last state stays as a whole line."""
        if self._live is not None:
            self._live.stop()
            self._live = self._task = None


async def _fleet_descriptor(session: AdminSession, epoch: int) -> FleetDescriptor:
    """Descriptor ``epoch`` from the fleet bucket, checked against the pinned admin key."""
    assert session.nc is not None
    with broker_errors("reading the fleet bucket"):
        kv = await session.nc.jetstream().key_value(session.names.fleet_bucket)
        try:
            entry = await kv.get(session.names.descriptor_key(epoch))
        except KeyNotFoundError as exc:
            raise ConfigurationError(
                f"the fleet bucket has no descriptor for epoch {epoch}"
            ) from exc
    assert entry.value is not None
    descriptor = decode_descriptor(entry.value)
    verify_descriptor(descriptor, session.descriptor.admin_key)
    return descriptor


async def _start(session: AdminSession, root: Path, info: RotationInfo, display: Display) -> None:
    current = session.descriptor
    if current.epoch != info.epoch:
        current = await _fleet_descriptor(session, info.epoch)
    roster = await session.synced_roster()  # never deal to a node revoked elsewhere
    admin = session.admin_key
    # The new epoch keeps the key size; a fleet made with --insecure-test-key stays a test one.
    insecure = not fleet_public_key(current).is_secure_size
    if insecure:
        display.note("warning: this fleet uses an insecure test key size; the new epoch too")
    with spinner(f"dealing epoch {current.epoch + 1}", not display.quiet):
        dealt = await asyncio.to_thread(
            deal_next_epoch, current=current, roster=roster, admin=admin, allow_insecure=insecure
        )
    await session.send(
        cmd.StartKeyRotation(
            **session.base(),
            from_epoch=current.epoch,
            descriptor=dealt.descriptor,
            shares=list(dealt.shares),
        ),
        show=not display.quiet,
    )
    _pin(root, dealt.descriptor)
    display.note(
        f"epoch {dealt.descriptor.epoch} dealt to {len(dealt.shares)} node(s) "
        f"(threshold {dealt.descriptor.threshold}); the bridges are re-wrapping"
    )


def _revoked(root: Path, session: AdminSession) -> set[str]:
    roster = load_home_roster(root, session.descriptor)
    return {n.id for n in roster.nodes if n.status != "active"}


def _pin(root: Path, descriptor: FleetDescriptor) -> None:
    """The home's fleet.json names the new epoch: new secrets are written under it."""
    write_atomic(fleet_dir(root) / DESCRIPTOR_FILE, encode_descriptor(descriptor), 0o644)


async def _node_check(
    session: AdminSession, descriptor: FleetDescriptor, total: int, revoked: set[str]
) -> tuple[list[str], list[str]]:
    """(online members of the new epoch, those of them holding every secret under it).
    A member revoked since the dealing is not asked: its peers refuse it, so it never
    holds everything (and a second rotation must follow to take its share away)."""
    members = [n.id for n in descriptor.nodes if n.id not in revoked]
    statuses = await asyncio.gather(*(session.status(m, include_secrets=True) for m in members))
    online, verified = [], []
    for node_id, status in zip(members, statuses, strict=True):
        if status is None:
            continue
        online.append(node_id)
        at_new = [s for s in status.secrets if s.epoch == descriptor.epoch]
        if len(at_new) == len(status.secrets) == total and not status.pending:
            verified.append(node_id)
    return online, verified


async def rotate(root: Path, *, timeout: float, quiet: bool) -> dict[str, object]:
    display = Display(quiet)
    try:
        return await _rotate(root, display, timeout=timeout, quiet=quiet)
    finally:
        display.close()  # however it ends, the terminal's cursor is on a fresh line


async def _rotate(
    root: Path, display: Display, *, timeout: float, quiet: bool
) -> dict[str, object]:
    started = time.monotonic()
    phases: dict[str, float] = {}
    async with AdminSession(root) as session:
        info = (await session.query("rotation")).rotation
        assert info is not None
        if info.rotating_to is None:
            await _start(session, root, info, display)
            phases["dealt_s"] = round(time.monotonic() - started, 3)
            info = (await session.query("rotation")).rotation
            assert info is not None and info.rotating_to is not None
        else:
            display.note(f"resuming the rotation from epoch {info.epoch} to {info.rotating_to}")
        new = await _fleet_descriptor(session, info.rotating_to)
        if session.descriptor.epoch != new.epoch:
            _pin(root, new)
        deadline = started + timeout
        last_status = 0.0
        online: list[str] = []
        verified: list[str] = []
        rewrapped = 0  # the backend's count goes with the old epoch: read it before retiring
        while True:
            info = (await session.query("rotation")).rotation
            assert info is not None
            if info.rotating_to is None:  # finished meanwhile (another admin, or resumed)
                break
            progress = _progress(info)
            rewrapped = info.rewrapped
            display.bar(progress)
            if progress.remaining == 0 and "rewrapped_s" not in phases:
                phases["rewrapped_s"] = round(time.monotonic() - started, 3)
            now = time.monotonic()
            every = POLL_S if progress.remaining == 0 else STATUS_EVERY_S
            if now - last_status >= every:
                last_status = now
                online, verified = await _node_check(
                    session, new, sum(info.envelopes.values()), _revoked(root, session)
                )
                if len(online) < new.threshold:
                    display.note(
                        f"waiting: {len(online)} of the new epoch's {len(new.nodes)} nodes "
                        f"online; {new.threshold} are needed to re-wrap"
                    )
                elif progress.remaining == 0:
                    offline = sorted({n.id for n in new.nodes} - set(online))
                    if len(verified) == len(online) and len(verified) >= new.threshold:
                        try:
                            await session.send(
                                cmd.FinishKeyRotation(
                                    **session.base(), retired_epoch=progress.from_epoch
                                ),
                                show=not quiet,
                            )
                        except CommandRejected as exc:
                            if exc.reason != ConfigurationError.code:
                                raise
                            # An envelope went back to the old epoch meanwhile (a disputed
                            # re-wrap): the backend refused to retire it; keep waiting.
                            display.note(f"not retired yet: {exc}")
                            await asyncio.sleep(POLL_S)
                            continue
                        phases["verified_s"] = round(time.monotonic() - started, 3)
                        display.close()
                        display.note(
                            f"epoch {progress.from_epoch} retired; epoch {progress.to_epoch} "
                            "is current"
                            + (
                                f" ({', '.join(offline)} will catch up on return)"
                                if offline
                                else ""
                            )
                        )
                        break
                    display.note(
                        f"re-wrapped; waiting for {len(online) - len(verified)} online node(s) "
                        "to load every secret under the new epoch"
                    )
            if time.monotonic() > deadline:
                resume = command("fleet", "rotate-key", "--home", root)
                raise RotationStalled(
                    f"the rotation to epoch {info.rotating_to} did not complete within "
                    f"{timeout:.0f}s ({progress.remaining} envelope(s) left, "
                    f"{len(online)} node(s) online); run `{resume}` to resume"
                )
            await asyncio.sleep(POLL_S)
        final = (await session.query("rotation")).rotation
        assert final is not None
    return {
        "epoch": final.epoch,
        "retired_epoch": final.epoch - 1,
        "envelopes": sum(final.envelopes.values()),  # live now, under the current epoch
        "rewrapped": rewrapped,  # of them, re-wrapped from the retired epoch by this rotation
        "nodes_verified": verified,
        "seconds": round(time.monotonic() - started, 3),
        "phases": phases,  # seconds from the start: dealt, re-wrapped, verified
    }


@click.command("rotate-key")
@home_option
@json_option
@click.option(
    "--timeout",
    type=float,
    default=3600.0,
    show_default=True,
    help="Give up waiting after this many seconds (run again to resume).",
)
def rotate_key(home: Path | None, as_json: bool, timeout: float) -> None:
    """Deal a new fleet key epoch, have the bridges re-wrap every envelope, retire the old.

    Resumable: run it again after an interruption. Follow every `flashgate node revoke`
    with it: the revoked node gets no share of the new epoch. The process is hardened
    first: it holds the admin key and, while it deals, every share of the new epoch.
    """
    harden_process()
    root = resolve_home(home)
    try:
        result = run(rotate(root, timeout=timeout, quiet=as_json))
    except KeyboardInterrupt:
        raise Interrupted(
            "interrupted; what is done so far is kept in the backend: run "
            f"`{command('fleet', 'rotate-key', '--home', root)}` again to resume the rotation"
        ) from None
    if as_json:
        click.echo(json.dumps(result))
    else:
        click.echo(
            f"fleet key rotated: epoch {result['epoch']} is current, epoch "
            f"{result['retired_epoch']} retired ({result['rewrapped']} envelope(s) re-wrapped, "
            f"{result['seconds']}s)"
        )
