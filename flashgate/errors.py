"""The project's exceptions: one root, one typed child per kind of bad input.

Every exception carries a stable machine-readable ``code`` (used as the reason in
``command rejected`` events and in refusal counters) and a one-line message for humans.
Messages never contain secret material: no plaintext, key share, partial decryption,
passphrase or content key. They may name public things (a fleet, an epoch, a share index).

This module imports nothing from the project, so every layer (the pure crypto core
included) can use it without import cycles.
"""

from __future__ import annotations


class FlashgateError(Exception):
    """Root of every error the project raises on purpose."""

    code: str = "error"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.__doc__ or self.code)

    @property
    def message(self) -> str:
        return str(self.args[0])


# --- configuration and names --------------------------------------------------------------


class ConfigurationError(FlashgateError):
    """Invalid configuration or parameters."""

    code = "bad_configuration"


class AlreadyRunning(FlashgateError):
    """Another process already runs on this resource (``flashgate dev up`` on a home)."""

    code = "already_running"


class InvalidName(ConfigurationError):
    """A name (fleet, repository, secret, node) outside ``[a-z0-9_-]{1,64}``."""

    code = "invalid_name"


class HomeFileError(ConfigurationError):
    """A file of the admin home (``HOME/config.json``, ``HOME/fleet/fleet.json``,
    ``roster.json``, ``admin.key``) is missing or unusable; the message names the file and
    what to do."""

    code = "home_file"


class InvalidJwe(ConfigurationError):
    """A --jwe file that the fleet would not accept for this secret."""

    code = "invalid_jwe"


class BelowThreshold(ConfigurationError):
    """An action that would leave fewer active nodes than the fleet's threshold t."""

    code = "below_threshold"


class Interrupted(FlashgateError):
    """The operator interrupted a command (Ctrl-C); the message says how to go on. Exit
    status 130, as for SIGINT."""

    code = "interrupted"
    exit_code = 130


class OversizedInput(FlashgateError):
    """An input larger than its limit; refused before it is parsed."""

    code = "oversized"


# --- cryptography -------------------------------------------------------------------------


class CryptoError(FlashgateError):
    """A cryptographic operation failed."""

    code = "crypto_error"


class InvalidKey(CryptoError):
    """A public key, verification key or key share that is malformed or out of range."""

    code = "invalid_key"


class InvalidCiphertext(CryptoError):
    """An RSA ciphertext outside 1 < c < N or not a unit mod N."""

    code = "invalid_ciphertext"


class NotEnoughShares(CryptoError):
    """Fewer partial decryptions (or bundles) than the threshold."""

    code = "not_enough_shares"


class DuplicateShares(CryptoError):
    """The same share index was supplied more than once."""

    code = "duplicate_shares"


class CombineCheckFailed(CryptoError):
    """The combined value y does not satisfy y^e = c: at least one partial is wrong."""

    code = "combine_check_failed"


class InvalidProof(CryptoError):
    """A proof of correct partial decryption does not verify."""

    code = "invalid_proof"


class FaultyShares(CryptoError):
    """Some partial decryptions were proven wrong; ``indices`` names their share indices."""

    code = "faulty_shares"

    def __init__(self, indices: list[int], message: str | None = None) -> None:
        self.indices = sorted(indices)
        super().__init__(
            message or f"faulty partial decryption from share index(es) {self.indices}"
        )


class DecryptionError(CryptoError):
    """Decryption failed (OAEP decoding or the authentication tag). Deliberately opaque."""

    code = "decryption_failed"


# --- envelopes (JWE) ----------------------------------------------------------------------


class MalformedEnvelope(CryptoError):
    """The JWE is not a well-formed compact serialization of the accepted profile."""

    code = "malformed_envelope"


class UnsupportedAlgorithm(MalformedEnvelope):
    """The JWE names an ``alg`` or ``enc`` other than RSA-OAEP-256 / A256GCM."""

    code = "unsupported_algorithm"


class UnsupportedHeader(MalformedEnvelope):
    """The JWE header uses a feature the fleet refuses (``zip``, ``crit``, unknown fields)."""

    code = "unsupported_header"


class ContextMismatch(CryptoError):
    """The envelope's bound context does not match where it was found."""

    code = "context_mismatch"


class Unproven(FlashgateError):
    """An envelope without valid provenance: no admin statement, a statement that does not
    verify or does not match the envelope, or a re-wrap by a node that is not active."""

    code = "unproven"


class SnapshotRefused(FlashgateError):
    """A snapshot of the wraps bucket that is not used (the node reads the whole bucket):
    ``reason`` says why (unsigned, a writer not active, a part missing or damaged, ...)."""

    code = "snapshot_refused"

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Tombstoned(FlashgateError):
    """An envelope of a secret the admin deleted, or of an API key the admin revoked, stated
    before that deletion (the admin-signed tombstone a node keeps for good): never loaded,
    never answered for."""

    code = "deleted"


class EnvelopeReleased(FlashgateError):
    """A node asked a loaded store entry for the envelope it let go (it keeps what it reads
    again, and reads the whole envelope from the bucket when it needs it)."""

    code = "envelope_released"


class MissingContext(ContextMismatch):
    """The envelope has no flashgate context, and the caller requires one."""

    code = "missing_context"


# --- sealing, signatures, fleet files -----------------------------------------------------


class UnsealError(CryptoError):
    """A sealed file could not be opened: wrong passphrase, or the file was altered."""

    code = "unseal_failed"


class MalformedSealedFile(UnsealError):
    """The file is not a flashgate sealed file of the expected kind, or is truncated."""

    code = "malformed_sealed_file"


class SignatureInvalid(CryptoError):
    """An admin or node signature does not verify."""

    code = "bad_signature"


class FleetMismatch(FlashgateError):
    """A bundle, descriptor or envelope belongs to another fleet or epoch."""

    code = "fleet_mismatch"


# --- messages and the broker --------------------------------------------------------------


class MalformedMessage(FlashgateError):
    """A wire message that does not decode to its type (the message says where)."""

    code = "malformed_message"


class MalformedDocument(MalformedMessage):
    """A fleet document (descriptor, roster, bundle contents) is not valid."""

    code = "malformed_document"


class BrokerError(FlashgateError):
    """A NATS / JetStream operation failed."""

    code = "broker_error"


class UnsupportedServer(BrokerError):
    """The NATS server is missing or older than the supported minimum (2.10)."""

    code = "unsupported_server"


class BrokerUnavailable(BrokerError):
    """The NATS server cannot be reached."""

    code = "broker_unavailable"


class NoResponders(BrokerUnavailable):
    """A request found no subscriber on its subject (e.g. a peer that has not started)."""

    code = "no_responders"


# --- commands against the current state ----------------------------------------------------


class ConflictError(FlashgateError):
    """A well-formed command that does not fit the current state."""

    code = "conflict"


class StaleVersion(ConflictError):
    """A secret version that is not exactly the current version + 1 (versions never go
    backwards or skip)."""

    code = "stale_version"


class VersionConflict(ConflictError):
    """A secret version that exists already with another value: a version names one value,
    for good (the backend refuses the write; a node keeps the value it holds)."""

    code = "version_conflict"


class VersionLimit(ConflictError):
    """A secret at the highest version there is (:data:`flashgate.crypto.context.MAX_VERSION`):
    it cannot be rotated again."""

    code = "version_limit"


class AlreadyExists(ConflictError):
    """The thing to create exists already."""

    code = "already_exists"


class NotFound(ConflictError):
    """The secret, API key or node named does not exist (or is deleted or revoked)."""

    code = "not_found"


class StaleEpoch(ConflictError):
    """An envelope or descriptor for a fleet key epoch that is not the one expected."""

    code = "stale_epoch"


class StaleRoster(ConflictError):
    """A roster whose serial is not higher than the one held."""

    code = "stale_roster"


class NotARewrap(ConflictError):
    """A re-wrapped envelope that differs from the original in more than its wrapped key."""

    code = "not_a_rewrap"


class RewrapDisputed(ConflictError):
    """A re-wrap from a node whose earlier re-wrap of the same envelope was disputed (a
    node could not open it) and reverted: another node must re-wrap it."""

    code = "rewrap_disputed"


class KindChange(ConflictError):
    """A rotation that would change a secret's kind (a secret keeps the kind it was put
    with)."""

    code = "kind_change"


class UnknownNode(FlashgateError):
    """A node-signed message from a node that is not active in the roster."""

    code = "unknown_node"


class InvalidSecretValue(ConfigurationError):
    """A secret value that does not match its kind (a storage value without its bucket,
    an unknown provider, ...). The message names the flags, never the value."""

    code = "invalid_value"


# --- the admin client and the backend --------------------------------------------------------


class CommandRejected(FlashgateError):
    """The backend rejected the command; the message carries its reason."""

    code = "command_rejected"

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        super().__init__(f"rejected ({reason}): {detail}")


class QueryFailed(FlashgateError):
    """The backend answered a query with an error; the message carries its reason."""

    code = "query_failed"

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        super().__init__(f"query failed ({reason}): {detail}")


class NoOutcome(FlashgateError):
    """No outcome arrived in time (is the backend running?)."""

    code = "no_outcome"


class NotReady(FlashgateError):
    """``--wait`` ran out of time."""

    code = "not_ready"


class RotationStalled(FlashgateError):
    """The rotation did not complete within the timeout (it can be resumed)."""

    code = "rotation_stalled"


class ApiKeyRefused(FlashgateError):
    """A node did not accept the presented API key secret."""

    code = "apikey_refused"


# --- Bridge Nodes ------------------------------------------------------------------------------


class Refused(FlashgateError):
    """A signed request (share request, admin RPC) or a share response refused; ``reason``
    is the counted reason code (:mod:`flashgate.bridge.screening`)."""

    code = "share_refused"

    def __init__(self, reason: str, message: str | None = None) -> None:
        self.reason = reason
        super().__init__(message or reason)


class SecretNotHeld(FlashgateError):
    """The vault does not hold that secret (not loaded yet, deleted, or unknown)."""

    code = "not_held"


# --- the gateway ---------------------------------------------------------------------------------


class S3Refused(FlashgateError):
    """An S3 gateway request refused: ``s3_code`` is the S3 error code the client gets
    (``SignatureDoesNotMatch``, ``AccessDenied``...), ``status`` the HTTP status. The message
    never names a credential, a real bucket or an endpoint."""

    code = "s3_refused"

    def __init__(self, s3_code: str, status: int, message: str) -> None:
        self.s3_code = s3_code
        self.status = status
        super().__init__(message)


class KeyBusy(FlashgateError):
    """An API key already has as many gateway requests in flight as it may
    (``GatewayLimits.key_concurrency``). ``grant`` is its authenticated grant (for the log)."""

    code = "key_busy"

    def __init__(self, key_id: str, limit: int, grant: object = None) -> None:
        self.grant = grant
        super().__init__(f"API key {key_id} already has {limit} requests in flight")


# --- outside the tree on purpose -------------------------------------------------------------


class FailpointError(RuntimeError):
    """Raised by a ``raise`` failpoint (tests only, :mod:`flashgate.failpoints`): it stands
    for an unexpected crash, so it is not a :class:`FlashgateError` that callers handle."""
