"""Every NATS subject, stream and bucket name of a fleet (DESIGN §3), in one place.

| what              | where                                  |
|-------------------|----------------------------------------|
| envelopes         | KV bucket ``fg-<f>-secrets``, key ``<repo>.<name>`` |
| fleet documents   | KV bucket ``fg-<f>-fleet``: ``descriptor.<epoch>``, ``roster``, ``epoch`` |
| ring terms        | KV bucket ``fg-<f>-ring``, key ``term.<id>`` (the fast path, DESIGN §6) |
| fast wraps        | KV bucket ``fg-<f>-wraps``, key ``<repo>.<name>`` |
| wraps snapshots   | KV bucket ``fg-<f>-snapshots``, keys ``head``, ``part.<id>.<n>`` |
| rotations         | KV bucket ``fg-<f>-fleet``, keys ``rotation.<epoch>``, ``retired.<epoch>`` |
| admin commands    | stream ``fg-<f>-cmd`` on ``fg.<f>.cmd.>`` |
| domain events     | stream ``fg-<f>-evt`` on ``fg.<f>.evt.>`` |
| share requests    | core NATS ``fg.<f>.share.<node>`` (request/reply) |
| liveness, status  | ``fg.<f>.node.<node>.heartbeat``, ``fg.<f>.node.<node>.status`` |
| node reports      | ``fg.<f>.node.<node>.report`` (node-signed events, relayed by the backend) |
| metadata queries  | ``fg.<f>.query.<what>`` (request/reply, answered by the backend) |
| re-wrap requests  | ``fg.<f>.rewrap`` (node-signed request/reply, answered by the backend) |

Every name part is validated (``[a-z0-9_-]{1,64}``) before a subject is built, so a name
can never add a token or a wildcard to a subject.
"""

from __future__ import annotations

from dataclasses import dataclass

from flashgate.errors import InvalidName
from flashgate.names import validate_name

PREFIX = "fg"
_TYPE_TOKEN = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-.")


def _type_tokens(value: str, what: str) -> str:
    """A dotted type such as ``secret.put``: each token a name."""
    if not value or set(value) - _TYPE_TOKEN:
        raise InvalidName(f"invalid {what} {value[:40]!r}")
    for token in value.split("."):
        validate_name(token, what)
    return value


def _epoch(epoch: int) -> int:
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
        raise InvalidName("epoch must be an integer >= 1")
    return epoch


@dataclass(frozen=True, slots=True)
class FleetNames:
    """All names of one fleet. Construct once; the fleet name is validated here."""

    fleet: str

    def __post_init__(self) -> None:
        validate_name(self.fleet, "fleet name")

    # --- key-value buckets ---------------------------------------------------------------
    @property
    def secrets_bucket(self) -> str:
        return f"{PREFIX}-{self.fleet}-secrets"

    @property
    def fleet_bucket(self) -> str:
        return f"{PREFIX}-{self.fleet}-fleet"

    @property
    def ring_bucket(self) -> str:
        """Ring terms of the fast path (node-signed; DESIGN §6)."""
        return f"{PREFIX}-{self.fleet}-ring"

    @property
    def wraps_bucket(self) -> str:
        """Fast wraps: one per envelope, the content key under a ring term."""
        return f"{PREFIX}-{self.fleet}-wraps"

    @property
    def snapshots_bucket(self) -> str:
        """Snapshots of the wraps bucket (node-signed), read by a starting node instead
        of one message per wrap."""
        return f"{PREFIX}-{self.fleet}-snapshots"

    def descriptor_key(self, epoch: int) -> str:
        return f"descriptor.{_epoch(epoch)}"

    def rotation_key(self, epoch: int) -> str:
        """The admin-signed ``fleet.rotation.start`` command that deals ``epoch``."""
        return f"rotation.{_epoch(epoch)}"

    def retirement_key(self, epoch: int) -> str:
        """The admin-signed ``fleet.rotation.finish`` command that retires ``epoch``."""
        return f"retired.{_epoch(epoch)}"

    #: Fleet-bucket keys of the admin-signed tombstones (the ``secret.delete`` and
    #: ``apikey.revoke`` commands as signed) that nodes keep for good.
    TOMBSTONE_PREFIX = "tombstone."

    def secret_tombstone_key(self, repo: str, name: str) -> str:
        return f"{self.TOMBSTONE_PREFIX}secret.{secret_key(repo, name)}"

    def api_key_tombstone_key(self, key_id: str) -> str:
        return f"{self.TOMBSTONE_PREFIX}apikey.{validate_name(key_id, 'API key id')}"

    #: The backend's durable consumer on the command stream (its replicas share it).
    COMMAND_CONSUMER = "backend"

    ROSTER_KEY = "roster"
    CURRENT_EPOCH_KEY = "epoch"

    # --- streams ---------------------------------------------------------------------------
    @property
    def command_stream(self) -> str:
        return f"{PREFIX}-{self.fleet}-cmd"

    @property
    def event_stream(self) -> str:
        return f"{PREFIX}-{self.fleet}-evt"

    @property
    def command_subjects(self) -> str:
        return f"{PREFIX}.{self.fleet}.cmd.>"

    @property
    def event_subjects(self) -> str:
        return f"{PREFIX}.{self.fleet}.evt.>"

    def command_subject(self, command_type: str) -> str:
        return f"{PREFIX}.{self.fleet}.cmd.{_type_tokens(command_type, 'command type')}"

    def event_subject(self, event_type: str) -> str:
        return f"{PREFIX}.{self.fleet}.evt.{_type_tokens(event_type, 'event type')}"

    # --- core NATS request/reply ------------------------------------------------------------
    def share_subject(self, node_id: str) -> str:
        return f"{PREFIX}.{self.fleet}.share.{validate_name(node_id, 'node id')}"

    def heartbeat_subject(self, node_id: str) -> str:
        return f"{PREFIX}.{self.fleet}.node.{validate_name(node_id, 'node id')}.heartbeat"

    def status_subject(self, node_id: str) -> str:
        return f"{PREFIX}.{self.fleet}.node.{validate_name(node_id, 'node id')}.status"

    def apikey_check_subject(self, node_id: str) -> str:
        """Admin-signed API key checks against one node's vault (request/reply)."""
        return f"{PREFIX}.{self.fleet}.node.{validate_name(node_id, 'node id')}.apikey"

    def node_report_subject(self, node_id: str) -> str:
        """Where a node publishes the events it signs (core NATS, its own subject only):
        the backend checks them and relays them into the event stream
        (:mod:`flashgate.backend.node_reports`); a node cannot publish into that stream."""
        return f"{PREFIX}.{self.fleet}.node.{validate_name(node_id, 'node id')}.report"

    @property
    def node_report_wildcard(self) -> str:
        return f"{PREFIX}.{self.fleet}.node.*.report"

    @property
    def heartbeat_wildcard(self) -> str:
        return f"{PREFIX}.{self.fleet}.node.*.heartbeat"

    @property
    def rewrap_subject(self) -> str:
        """Node-signed re-wrap requests during a fleet key rotation (answered by the backend)."""
        return f"{PREFIX}.{self.fleet}.rewrap"

    def query_subject(self, what: str) -> str:
        return f"{PREFIX}.{self.fleet}.query.{_type_tokens(what, 'query')}"


def secret_key(repo: str, name: str) -> str:
    """The secrets-bucket key of a secret: ``<repo>.<name>``."""
    return f"{validate_name(repo, 'repository name')}.{validate_name(name, 'secret name')}"


def split_secret_key(key: str) -> tuple[str, str]:
    """Inverse of :func:`secret_key`; raises :class:`InvalidName` on anything else."""
    parts = key.split(".")
    if len(parts) != 2:
        raise InvalidName(f"invalid secret key {key[:140]!r}: expected <repo>.<name>")
    return validate_name(parts[0], "repository name"), validate_name(parts[1], "secret name")
