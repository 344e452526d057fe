"""Offline (break-glass) recovery: decrypt an envelope from t node bundles, no service.

It runs the same code the nodes run: partial decryptions, the optimistic combine with the
y^e = c check, and on failure proofs from every bundle to name the faulty one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from flashgate.crypto import jwe
from flashgate.crypto.context import SecretContext
from flashgate.crypto.decrypt import OpenedSecret, open_jwe
from flashgate.crypto.publickey import fleet_kid
from flashgate.crypto.threshold.combine import combine, combine_robust
from flashgate.crypto.threshold.keys import ThresholdPublicKey
from flashgate.crypto.threshold.partial import partial_decrypt, prove
from flashgate.errors import (
    CombineCheckFailed,
    DecryptionError,
    DuplicateShares,
    FleetMismatch,
    InvalidCiphertext,
    NotEnoughShares,
    StaleEpoch,
)
from flashgate.events.fleet import FleetDescriptor
from flashgate.fleet.bundle import NodeBundle


@dataclass(frozen=True)
class Recovered:
    secret: OpenedSecret
    faulty_nodes: list[str] = field(default_factory=list)


def check_bundles(
    descriptor: FleetDescriptor,
    bundles: Sequence[NodeBundle],
    labels: Sequence[str] | None = None,
) -> None:
    """Refuse bundles of another fleet or epoch, duplicates, and fewer than t.

    ``labels`` name the bundles in messages (file paths in the CLI; node ids otherwise).
    """
    names = list(labels) if labels is not None else [repr(b.node_id) for b in bundles]
    for bundle, label in zip(bundles, names, strict=True):
        other_admin = bundle.admin_key != descriptor.admin_key
        if other_admin or (bundle.fleet, bundle.epoch) != (descriptor.fleet, descriptor.epoch):
            raise FleetMismatch(
                f"bundle {label} ({bundle.node_id}) belongs to fleet {bundle.fleet!r} epoch "
                f"{bundle.epoch}{' of another admin' if other_admin else ''}, not fleet "
                f"{descriptor.fleet!r} epoch {descriptor.epoch}"
            )
    seen: dict[int, str] = {}
    for bundle, label in zip(bundles, names, strict=True):
        if bundle.index in seen:
            raise DuplicateShares(
                f"bundles {seen[bundle.index]} and {label} hold the same share "
                f"({bundle.node_id}, index {bundle.index})"
            )
        seen[bundle.index] = label
    if len(bundles) < descriptor.threshold:
        raise NotEnoughShares(
            f"{len(bundles)} bundle(s) given; fleet {descriptor.fleet!r} needs "
            f"{descriptor.threshold}"
        )


def _kid_epoch(kid: object, fleet: str) -> int | None:
    """The epoch a ``kid`` of this fleet names (``flashgate:<fleet>:<epoch>``), else None."""
    prefix = fleet_kid(fleet, 0)[:-1]
    if isinstance(kid, str) and kid.startswith(prefix) and kid[len(prefix) :].isdigit():
        return int(kid[len(prefix) :])
    return None


def check_epoch(descriptor: FleetDescriptor, jwe_epoch: int, source: str) -> None:
    """Refuse a JWE of another fleet key epoch than the descriptor's (and the bundles',
    which :func:`check_bundles` holds to it), saying which epoch it needs."""
    have = descriptor.epoch
    if jwe_epoch == have:
        return
    if jwe_epoch < have:
        advice = (
            f"epoch {jwe_epoch} was retired by a key rotation: recover it with the fleet.json "
            f"and bundles of epoch {jwe_epoch} (backups from before the rotation), or take "
            f"the secret's current envelope (re-wrapped under epoch {have})"
        )
    else:
        advice = (
            f"use the fleet.json and bundles of epoch {jwe_epoch} (the admin home's fleet.json "
            "names the current epoch; nodes re-seal their bundles when a rotation completes)"
        )
    raise StaleEpoch(
        f"this JWE is under fleet key epoch {jwe_epoch} ({source}); fleet.json and the "
        f"bundles are for epoch {have}: {advice}"
    )


def recover(
    descriptor: FleetDescriptor,
    bundles: Sequence[NodeBundle],
    token: str | bytes,
    *,
    expected: SecretContext | None = None,
    labels: Sequence[str] | None = None,
    epoch: int | None = None,
) -> Recovered:
    """``epoch``: the JWE's fleet key epoch when known (an envelope's ``epoch``); else the
    JWE's ``kid`` names it, if it has one (a JWE does not otherwise carry its epoch)."""
    check_bundles(descriptor, bundles, labels)
    public = bundles[0].public
    parsed = jwe.parse(token)
    if parsed.context is not None and parsed.context.fleet != descriptor.fleet:
        raise FleetMismatch(
            f"envelope is for fleet {parsed.context.fleet!r}, not {descriptor.fleet!r}"
        )
    kid = parsed.header.get("kid")
    if epoch is not None:
        check_epoch(descriptor, epoch, "the envelope's epoch")
    elif (kid_epoch := _kid_epoch(kid, descriptor.fleet)) is not None:
        check_epoch(descriptor, kid_epoch, f"its kid {kid}")
    try:
        return _decrypt(public, bundles, parsed, expected)
    except (DecryptionError, InvalidCiphertext) as exc:
        if epoch is not None or kid is not None:
            raise
        raise type(exc)(
            f"{exc.message}; fleet.json and the bundles are for fleet key epoch "
            f"{descriptor.epoch}, and this JWE names no epoch: one written under another "
            "epoch needs that epoch's fleet.json and bundles (give the whole envelope, "
            "with its epoch, to have it checked)"
        ) from exc


def _decrypt(
    public: ThresholdPublicKey,
    bundles: Sequence[NodeBundle],
    parsed: jwe.ParsedJWE,
    expected: SecretContext | None,
) -> Recovered:
    c = parsed.wrapped_key(public.key)
    ordered = sorted(bundles, key=lambda b: b.index)
    first = ordered[: public.threshold]
    partials = {b.index: partial_decrypt(b.share, public, c) for b in first}
    faulty: list[str] = []
    try:
        y = combine(public, c, partials)
    except CombineCheckFailed:
        for b in ordered[public.threshold :]:
            partials[b.index] = partial_decrypt(b.share, public, c)
        proofs = {b.index: prove(b.share, public, c, partials[b.index]) for b in ordered}
        by_index = {b.index: b.node_id for b in ordered}
        y, bad = combine_robust(public, c, partials, proofs)
        faulty = [by_index[i] for i in bad]
    opened = open_jwe(parsed, y, public.key, expected, require_context=False)
    return Recovered(secret=opened, faulty_nodes=faulty)
