"""Events are believed only from the right subject, with the right signer (issue 14 §3).

Outcomes and every other backend event are signed by the backend's key (pinned by the
admin's ``backend.json``); a ``node.misbehaved`` report from a bridge is signed by the
reporting node, active in the roster. The broker (or a rogue holding a bridge login) can
publish into the event stream: nothing it forges is believed.
"""

from __future__ import annotations

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from flashgate.errors import FlashgateError, MalformedMessage
from flashgate.events import domain as ev
from flashgate.events.event_auth import EventAuthority, sign_event
from flashgate.events.subjects import FleetNames
from flashgate.fleet.identity_keys import new_ed25519

NAMES = FleetNames("acme")
BACKEND = new_ed25519()
NODES = {"node-1": new_ed25519(), "node-2": new_ed25519()}
REVOKED = {"node-3": new_ed25519()}
SOURCE = "flashgate/acme/backend"


def node_key(node_id: str) -> Ed25519PublicKey | None:
    key = NODES.get(node_id)
    return key.public_key() if key is not None else None


AUTHORITY = EventAuthority(NAMES, BACKEND.public_key(), node_key)


def rejected(command_id: str = "cli-000000000000001", *, source: str = SOURCE) -> ev.DomainEvent:
    return ev.make_event(
        ev.CommandRejected(
            command_id=command_id, command_type="secret.put", reason="bad_signature"
        ),
        event_id="e-1",
        source=source,
    )


def misbehaved(reporter: str, accused: str = "node-2") -> ev.DomainEvent:
    return ev.make_event(
        ev.NodeMisbehaved(node_id=accused, reporter=reporter, reason="bad_proof"),
        event_id=f"{reporter}.{accused}.1",
        source=f"flashgate/acme/bridge/{reporter}",
        subject=accused,
    )


def wire(event: ev.DomainEvent) -> bytes:
    return ev.encode_event(event)


def test_an_event_on_the_subject_of_another_type_is_refused() -> None:
    raw = wire(sign_event(rejected(), BACKEND))
    assert ev.decode_event(raw, subject=NAMES.event_subject("command.rejected")).data
    with pytest.raises(MalformedMessage, match="subject"):
        ev.decode_event(raw, subject=NAMES.event_subject("node.misbehaved"))


def test_a_backend_signed_outcome_is_believed() -> None:
    event = AUTHORITY.open(
        NAMES.event_subject("command.rejected"), wire(sign_event(rejected(), BACKEND))
    )
    assert event.data == rejected().data


@pytest.mark.parametrize(
    ("subject_type", "event"),
    [
        # unsigned, on the one event subject a bridge login may publish to (the drill)
        ("node.misbehaved", rejected()),
        ("command.rejected", rejected()),
        # signed, but not by the backend
        ("command.rejected", sign_event(rejected(), new_ed25519())),
        ("command.rejected", sign_event(rejected(), NODES["node-1"])),
        # a genuine outcome moved to another subject
        ("node.misbehaved", sign_event(rejected(), BACKEND)),
        # a genuine outcome, altered
        (
            "command.rejected",
            msgspec.structs.replace(
                sign_event(rejected(), BACKEND),
                data=ev.CommandRejected(
                    command_id="cli-000000000000002", command_type=None, reason="x"
                ),
            ),
        ),
        # an outcome claimed by a bridge
        (
            "command.rejected",
            sign_event(rejected(source="flashgate/acme/bridge/node-1"), NODES["node-1"]),
        ),
    ],
)
def test_a_forged_outcome_is_not_believed(subject_type: str, event: ev.DomainEvent) -> None:
    with pytest.raises(FlashgateError):
        AUTHORITY.open(NAMES.event_subject(subject_type), wire(event))


def test_a_misbehaviour_report_signed_by_its_reporter_is_believed() -> None:
    raw = wire(sign_event(misbehaved("node-1"), NODES["node-1"]))
    event = AUTHORITY.open(NAMES.event_subject("node.misbehaved"), raw)
    assert isinstance(event.data, ev.NodeMisbehaved) and event.data.reporter == "node-1"


@pytest.mark.parametrize(
    "event",
    [
        misbehaved("node-1"),  # unsigned
        sign_event(misbehaved("node-1"), NODES["node-2"]),  # node-2 speaking for node-1
        sign_event(misbehaved("node-1"), new_ed25519()),
        sign_event(misbehaved("node-3"), REVOKED["node-3"]),  # not active in the roster
        sign_event(misbehaved("intruder"), new_ed25519()),  # not in the roster
    ],
)
def test_a_forged_misbehaviour_report_is_not_believed(event: ev.DomainEvent) -> None:
    with pytest.raises(FlashgateError):
        AUTHORITY.open(NAMES.event_subject("node.misbehaved"), wire(event))


def test_only_the_backend_may_report_outcomes() -> None:
    """A bridge's own signed report is a report, never an outcome: ``from_backend``."""
    raw = wire(sign_event(misbehaved("node-1"), NODES["node-1"]))
    with pytest.raises(FlashgateError):
        AUTHORITY.open(NAMES.event_subject("node.misbehaved"), raw, from_backend=True)


def usage(node_id: str, *, source_node: str | None = None) -> ev.DomainEvent:
    return ev.make_event(
        ev.GatewayUsage(
            node_id=node_id,
            repo="payments",
            key_id="fgk_abcdefghijklmnopqrstuvwx",
            api="openai",
            window_start=1,
            window_end=2,
            requests=3,
            errors=0,
            upstream_errors=0,
            bytes_in=10,
            bytes_out=20,
        ),
        event_id=f"{node_id}.usage.1",
        source=f"flashgate/acme/bridge/{source_node or node_id}",
    )


def test_a_usage_summary_signed_by_its_node_is_believed() -> None:
    raw = wire(sign_event(usage("node-1"), NODES["node-1"]))
    event = AUTHORITY.open(NAMES.event_subject("gateway.usage"), raw)
    assert isinstance(event.data, ev.GatewayUsage) and event.data.requests == 3
    with pytest.raises(FlashgateError):  # a node's summary is never an outcome
        AUTHORITY.open(NAMES.event_subject("gateway.usage"), raw, from_backend=True)


@pytest.mark.parametrize(
    "event",
    [
        usage("node-1"),  # unsigned
        sign_event(usage("node-1"), NODES["node-2"]),  # node-2 speaking for node-1
        sign_event(usage("node-1", source_node="node-2"), NODES["node-2"]),  # another source
        sign_event(usage("node-3"), REVOKED["node-3"]),  # not active in the roster
        sign_event(usage("node-1"), BACKEND),
    ],
)
def test_a_forged_usage_summary_is_not_believed(event: ev.DomainEvent) -> None:
    with pytest.raises(FlashgateError):
        AUTHORITY.open(NAMES.event_subject("gateway.usage"), wire(event))
