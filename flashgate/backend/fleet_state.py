"""What a backend pins and tracks for its fleet, in memory: the admin key, the epochs and
their fleet public keys, the roster serial and the ids of known repositories."""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from flashgate.backend.models import Fleet, FleetEpoch
from flashgate.crypto.publickey import FleetPublicKey
from flashgate.events.fleet import decode_descriptor
from flashgate.events.subjects import FleetNames
from flashgate.fleet.descriptor import fleet_public_key
from flashgate.fleet.identity_keys import load_ed25519_public


@dataclass
class FleetState:
    """What the backend pins and tracks for its fleet."""

    names: FleetNames
    fleet_id: int
    admin_key: str
    epoch: int
    keys: dict[int, FleetPublicKey]  # epoch -> fleet public key
    roster_serial: int = 0
    rotating_to: int | None = None
    #: Repository name -> id, read from committed rows (repositories are never deleted).
    repository_ids: dict[str, int] = field(default_factory=dict, repr=False)
    _admin: Ed25519PublicKey | None = field(default=None, repr=False)

    @property
    def admin(self) -> Ed25519PublicKey:
        if self._admin is None:
            self._admin = load_ed25519_public(self.admin_key, "admin key")
        return self._admin

    def writable_epochs(self) -> set[int]:
        """New envelopes may be under the current epoch or, during a rotation, the next."""
        return {self.epoch} | ({self.rotating_to} if self.rotating_to else set())

    async def refresh(self, session: AsyncSession) -> None:
        """Re-read the epochs from the database: with several replicas, another one may have
        started or finished a rotation since this one last looked."""
        fleet = await session.get(Fleet, self.fleet_id, populate_existing=True)
        assert fleet is not None
        rows = (
            await session.scalars(
                select(FleetEpoch).where(
                    FleetEpoch.fleet_id == fleet.id, FleetEpoch.retired_at.is_(None)
                )
            )
        ).all()
        self.keys = {
            r.epoch: fleet_public_key(decode_descriptor(r.descriptor.encode())) for r in rows
        }
        self.epoch, self.rotating_to = fleet.epoch, fleet.rotating_to
        self.roster_serial = fleet.roster_serial
