"""JSON Schemas (2020-12) generated from the wire Structs; ``schemas/`` holds the output.

``flashgate schemas export`` writes them; ``flashgate schemas export --check`` (and a test)
fails when the committed files differ from what the Structs generate. Each schema has an
``$id`` of the form ``urn:flashgate:schema:<name>:<version>``. A version changes only when
a type changes incompatibly (msgspec's schema-evolution rules: new fields get defaults,
a field never changes type); such a change adds a new file and keeps the old one.
"""

from __future__ import annotations

import inspect
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from flashgate.events.commands import AnyCommand
from flashgate.events.domain import EVENT_DATA_TYPES, CloudEventAttributes, data_schema_name
from flashgate.events.envelope import SecretEnvelope
from flashgate.events.fleet import BackendKey, FleetDescriptor, Roster
from flashgate.events.node_status import (
    ApiKeyCheck,
    ApiKeyCheckResult,
    Heartbeat,
    StatusRequest,
    StatusResponse,
)
from flashgate.events.ring import FastWrap, StoredTerm, WrapSnapshot, WrapSnapshotPart
from flashgate.events.rotation import RewrapReply, RewrapRequest
from flashgate.events.share import ShareRequest, ShareResponse, ShareResults
from flashgate.events.values import VALUE_TYPES

DIALECT = "https://json-schema.org/draft/2020-12/schema"
MSGPACK_NOTE = (
    "Wire encoding is MessagePack; this schema describes the equivalent JSON form "
    "(byte strings as base64)."
)


@dataclass(frozen=True)
class SchemaSpec:
    name: str
    type: Any
    version: int = 1
    title: str = ""
    msgpack: bool = False

    @property
    def id(self) -> str:
        return f"urn:flashgate:schema:{self.name}:{self.version}"

    @property
    def filename(self) -> str:
        return f"{self.name}.v{self.version}.json"


SPECS: tuple[SchemaSpec, ...] = (
    SchemaSpec("secret-envelope", SecretEnvelope, title="Secret envelope (secrets bucket value)"),
    SchemaSpec("fleet-descriptor", FleetDescriptor, title="Fleet descriptor (admin-signed)"),
    SchemaSpec("roster", Roster, title="Roster (admin-signed)"),
    SchemaSpec("backend-key", BackendKey, title="Backend event-signing key (admin-signed)"),
    SchemaSpec("command", AnyCommand, title="Admin command (admin-signed)"),
    SchemaSpec("domain-event", CloudEventAttributes, title="Domain event (CloudEvents 1.0)"),
    *(
        SchemaSpec(data_schema_name(t), t, title=f"Domain event data: {t.event_type}")
        for t in EVENT_DATA_TYPES
    ),
    SchemaSpec("share-request", ShareRequest, title="Share request", msgpack=True),
    SchemaSpec("share-response", ShareResponse, title="Share response", msgpack=True),
    SchemaSpec("share-results", ShareResults, title="Sealed share results", msgpack=True),
    SchemaSpec("heartbeat", Heartbeat, title="Node heartbeat", msgpack=True),
    SchemaSpec("status-request", StatusRequest, title="Status request (admin-signed)"),
    SchemaSpec("status-response", StatusResponse, title="Node status", msgpack=True),
    SchemaSpec(
        "rewrap-request", RewrapRequest, title="Re-wrap request (node-signed)", msgpack=True
    ),
    SchemaSpec("rewrap-reply", RewrapReply, title="Re-wrap reply", msgpack=True),
    SchemaSpec("ring-term", StoredTerm, title="Ring term (ring bucket value, node-signed)"),
    SchemaSpec(
        "fast-wrap", FastWrap, title="Fast wrap (wraps bucket value, node-signed)", msgpack=True
    ),
    SchemaSpec(
        "wrap-snapshot",
        WrapSnapshot,
        title="Wraps snapshot head (snapshots bucket, node-signed)",
        msgpack=True,
    ),
    SchemaSpec(
        "wrap-snapshot-part",
        WrapSnapshotPart,
        title="Wraps snapshot part (snapshots bucket, named by its head's digest)",
        msgpack=True,
    ),
    SchemaSpec("apikey-check", ApiKeyCheck, title="API key check (admin-signed)"),
    SchemaSpec(
        "apikey-check-result", ApiKeyCheckResult, title="API key check result", msgpack=True
    ),
    *(
        SchemaSpec(f"secret-value-{kind}", t, title=f"Secret value of kind {kind} (plaintext)")
        for kind, t in VALUE_TYPES.items()
    ),
)


def normalize_description(text: str) -> str:
    """A docstring as prose: paragraphs of single-spaced words, whatever the indentation.

    msgspec copies docstrings into ``description`` verbatim in some releases and dedented in
    others (0.23 dedents), and Python 3.13 strips docstring indentation at compile time. The
    committed schemas must not depend on either, so every description is reduced to its
    words: paragraphs (blank-line separated) are kept, line breaks and runs of spaces inside
    a paragraph become one space.
    """
    paragraphs = re.split(r"\n\s*\n", inspect.cleandoc(text))
    return "\n\n".join(" ".join(p.split()) for p in paragraphs if p.strip())


def _normalized(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            key: normalize_description(value)
            if key == "description" and isinstance(value, str)
            else _normalized(value)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_normalized(item) for item in node]
    return node


def render(spec: SchemaSpec) -> dict[str, Any]:
    body: dict[str, Any] = _normalized(msgspec.json.schema(spec.type))
    if spec.name == "domain-event":  # ``data`` is raw in the attributes Struct
        body["$defs"]["CloudEventAttributes"]["properties"]["data"] = {
            "description": "the payload; its schema is named by dataschema",
            "type": "object",
        }
    head: dict[str, Any] = {"$schema": DIALECT, "$id": spec.id, "title": spec.title}
    if spec.msgpack:
        head["$comment"] = MSGPACK_NOTE
    return head | body


def render_text(spec: SchemaSpec) -> str:
    return json.dumps(render(spec), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def export(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for spec in SPECS:
        path = out / spec.filename
        path.write_text(render_text(spec))
        written.append(path)
    return written


def drift(out: Path) -> list[str]:
    """Names of schema files that are missing, stale, or not generated by any type."""
    problems = []
    expected = {spec.filename: render_text(spec) for spec in SPECS}
    for filename, text in expected.items():
        path = out / filename
        if not path.exists():
            problems.append(f"{filename}: missing")
        elif path.read_text() != text:
            problems.append(f"{filename}: differs from the Structs")
    for path in sorted(out.glob("*.json")):
        if path.name not in expected:
            problems.append(f"{path.name}: no wire type generates it")
    return problems
