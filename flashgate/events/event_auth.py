"""Who may publish which domain event, and the check every consumer makes.

Only the backend's login may publish into the event stream; a node's signed events (its
``node.misbehaved`` reports) reach it through the backend, which checks them and relays
them verbatim (:mod:`flashgate.backend.node_reports`). The broker can still write
anything, so an event is believed only when:

- it was read from its own type's subject (:func:`flashgate.events.domain.decode_event`);
- its ``source`` is ``flashgate/<fleet>/backend`` and it verifies under the backend's
  event key (``backend.json``, admin-signed; :mod:`flashgate.fleet.backend_key`), or
- it is a node-signed type (:func:`node_signer`: ``node.misbehaved``, signed by its
  ``reporter``; ``gateway.usage``, signed by the node whose gateway served), its
  ``source`` is ``flashgate/<fleet>/bridge/<node>`` for that node, and it verifies
  under that node's key while the node is active in the roster.

Outcomes of commands come from the backend only (``from_backend=True``): a node's report
never answers a command. The signature is Ed25519 over the canonical bytes of the whole
event (domain ``event``), carried in the ``signature`` extension attribute.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from flashgate.errors import SignatureInvalid
from flashgate.events.domain import (
    DomainEvent,
    EventData,
    GatewayUsage,
    NodeMisbehaved,
    decode_event,
)
from flashgate.events.signing import sign, verify
from flashgate.events.subjects import FleetNames

NodeKeys = Callable[[str], Ed25519PublicKey | None]
"""node_key(node_id): the node's Ed25519 key while it is active in the roster, else None."""


def backend_source(fleet: str) -> str:
    return f"flashgate/{fleet}/backend"


def bridge_source(fleet: str, node_id: str) -> str:
    return f"flashgate/{fleet}/bridge/{node_id}"


def node_signer(data: EventData) -> str | None:
    """The node that must sign an event with this payload, or None for an event only the
    backend publishes. A new node-signed event type adds its case here: the backend's
    relay (:mod:`flashgate.backend.node_reports`) and every consumer then follow it."""
    if isinstance(data, NodeMisbehaved):
        return data.reporter
    if isinstance(data, GatewayUsage):
        return data.node_id
    return None


def sign_event(event: DomainEvent, key: Ed25519PrivateKey) -> DomainEvent:
    """A copy of ``event`` signed with ``key`` (the backend's, or the reporting node's)."""
    return sign(event, key)


@dataclass(frozen=True)
class EventAuthority:
    names: FleetNames
    backend_key: Ed25519PublicKey
    node_key: NodeKeys

    def open(self, subject: str, raw: bytes, *, from_backend: bool = False) -> DomainEvent:
        """The event read from ``subject``, if its signer may publish it there; else
        :class:`MalformedMessage` or :class:`SignatureInvalid`."""
        if not subject.startswith(self.names.event_subjects[:-1]):
            raise SignatureInvalid(f"{subject[:140]!r} is not this fleet's event subject")
        event = decode_event(raw, subject=subject)
        fleet = self.names.fleet
        if event.source == backend_source(fleet):
            verify(event, self.backend_key)
            return event
        data = event.data
        if from_backend:
            raise SignatureInvalid(f"an outcome from {event.source[:80]!r}, not the backend")
        signer = node_signer(data)
        if signer is None or event.source != bridge_source(fleet, signer):
            raise SignatureInvalid(
                f"a {event.short_type} event from {event.source[:80]!r} is not one it may publish"
            )
        key = self.node_key(signer)
        if key is None:
            raise SignatureInvalid(f"{signer} is not an active node of the roster")
        verify(event, key)
        return event
