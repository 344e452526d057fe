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
from flashgate.crypto.threshold.combine import combine, combine_robust
from flashgate.crypto.threshold.partial import partial_decrypt, prove
from flashgate.errors import CombineCheckFailed, DuplicateShares, FleetMismatch, NotEnoughShares
from flashgate.events.fleet import FleetDescriptor
from flashgate.fleet.bundle import NodeBundle


@dataclass(frozen=True)
class Recovered:
    secret: OpenedSecret
    faulty_nodes: list[str] = field(default_factory=list)

    @property
    def has_context(self) -> bool:
        return self.secret.context is not None


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


def recover(
    descriptor: FleetDescriptor,
    bundles: Sequence[NodeBundle],
    token: str | bytes,
    *,
    expected: SecretContext | None = None,
    labels: Sequence[str] | None = None,
) -> Recovered:
    check_bundles(descriptor, bundles, labels)
    public = bundles[0].public
    parsed = jwe.parse(token)
    if parsed.context is not None and parsed.context.fleet != descriptor.fleet:
        raise FleetMismatch(
            f"envelope is for fleet {parsed.context.fleet!r}, not {descriptor.fleet!r}"
        )
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
