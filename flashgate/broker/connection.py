"""Connecting to NATS: one place that sets roles, reconnect policy, logging and version checks.

Every component connects through :func:`connect`, which adds what a bare
``nats.connect`` does not:

* **A role inbox.** Replies go to ``_INBOX.<role>.…`` (nats-py ``inbox_prefix``), so a
  role's permissions can allow ``_INBOX.<role>.>`` instead of every inbox of the account.
* **Logging, never payloads.** Disconnect, reconnect, error and close are logged through
  structlog (``flashgate.broker``) with the role and connection name bound. Errors are
  logged by type and text; nats-py error texts name subjects, not message data.
* **A version floor.** The server must be nats-server >= 2.10 (2.9 silently ignores
  consumer ``filter_subjects``). An older server is refused right after connecting
  (:class:`~flashgate.errors.UnsupportedServer`); on a reconnect to an older server
  (a mixed-version cluster) it is logged as an error, since a callback cannot raise.
* **A first connection that fails fast.** nats-py retries the *first* connection forever
  when ``max_reconnect_attempts`` is ``-1`` or ``0`` (it only drops a server from its pool
  when that number is positive). So the first connection is made with a small positive
  limit (``connect_retries``), and the caller's reconnect policy is put in place once
  connected. Failures become :class:`~flashgate.errors.BrokerUnavailable` naming the URLs
  without their credentials and why ("cannot reach NATS at nats://h:4222 (connection
  refused)"); the errors of the attempts before it are logged at debug level only, since
  that one exception says what failed.

* **Errors mapped at the boundary.** :func:`broker_errors` turns nats-py exceptions into
  :class:`~flashgate.errors.BrokerUnavailable` (no answer: timeouts, no responders,
  closed or reconnecting connection, JetStream 503; no responders as its subclass
  :class:`~flashgate.errors.NoResponders`, nobody subscribed) or
  :class:`~flashgate.errors.BrokerError` (anything else), so callers above the broker
  package catch flashgate errors only.

``max_reconnect_attempts`` follows the Go client: ``-1`` reconnects forever, ``0`` never
reconnects (the connection closes on the first disconnect), ``n > 0`` tries each server
``n`` times.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg

from flashgate.broker.version import (
    MIN_SERVER_VERSION,
    WHY_MIN_VERSION,
    minimum_version_text,
    parse_version,
)
from flashgate.errors import (
    BrokerError,
    BrokerUnavailable,
    ConfigurationError,
    NoResponders,
    UnsupportedServer,
)
from flashgate.names import validate_name

_logger = structlog.get_logger("flashgate.broker")

INBOX_ROOT = "_INBOX"
_CALLBACK_OPTIONS = (
    "error_cb",
    "disconnected_cb",
    "reconnected_cb",
    "closed_cb",
    "discovered_server_cb",
    "lame_duck_mode_cb",
)
_ERROR_TEXT_LIMIT = 200

Callback = Callable[[], Awaitable[None]]
ErrorCallback = Callable[[Exception], Awaitable[None]]


def inbox_prefix(role: str, identity: str | None = None) -> str:
    """``_INBOX.<role>``: the reply-subject prefix of every connection of ``role``;
    ``_INBOX.<role>.<identity>`` for a connection with an identity of its own (a Bridge
    Node: only its own NATS user may subscribe there)."""
    prefix = f"{INBOX_ROOT}.{validate_name(role, 'role')}"
    return prefix if identity is None else f"{prefix}.{validate_name(identity, 'identity')}"


MsgHandler = Callable[[Msg], Awaitable[None]]


def inbox_replies_only(handler: MsgHandler, what: str) -> MsgHandler:
    """``handler`` for requests, refusing any whose reply subject is not an inbox.

    A responder answers through ``allow_responses``, which lets it publish to whatever reply
    subject the requester chose: a requester could name a bucket key (``$KV.…``) or a
    JetStream API call as its reply, and the honest responder's answer would land there.
    Every flashgate client asks with an ``_INBOX.<role>…`` reply; anything else is dropped
    here, counted in the log (at most a line every ten seconds per ``what``)."""
    last_said = 0.0
    dropped = 0

    async def guarded(msg: Msg) -> None:
        nonlocal last_said, dropped
        reply = msg.reply or ""
        if not reply or reply.startswith(f"{INBOX_ROOT}."):
            await handler(msg)
            return
        dropped += 1
        now = time.monotonic()
        if now - last_said >= 10.0:
            last_said = now
            _logger.warning(
                "request with a reply subject that is not an inbox dropped",
                what=what,
                reply=reply[:_ERROR_TEXT_LIMIT],
                dropped=dropped,
            )

    return guarded


def check_server_version(version: str) -> tuple[int, int, int]:
    """The parsed version, or :class:`UnsupportedServer` if it is older than 2.10."""
    parsed = parse_version(version)
    if parsed < MIN_SERVER_VERSION:
        raise UnsupportedServer(
            f"nats-server {version} is too old; flashgate needs {minimum_version_text()} "
            f"({WHY_MIN_VERSION})"
        )
    return parsed


def redact_url(url: str) -> str:
    """A server URL without user, password or token: safe for messages and logs."""
    try:
        parts = urlsplit(url if "://" in url else f"nats://{url}")
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        return "<unparsable url>"
    return f"{parts.scheme}://{host}{port}"


def _server_list(servers: str | list[str]) -> list[str]:
    listed = [servers] if isinstance(servers, str) else list(servers)
    if not listed:
        raise ConfigurationError("no NATS server URL given")
    return listed


def _error_text(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text[:_ERROR_TEXT_LIMIT]


def _connected_version(nc: Client) -> str:
    version = nc.connected_server_version
    return f"{version.major}.{version.minor}.{version.patch}"


def _connected_url(nc: Client) -> str | None:
    url = nc.connected_url
    return redact_url(url.geturl()) if url is not None else None


@dataclass(slots=True)
class _Errors:
    """What nats-py reported while connecting: its ``NoServersError`` hides the cause.

    A refusal of the credentials is remembered on its own: the server closes the socket
    after it, so the next attempt's error may just be a reset connection.
    """

    last: Exception | None = None
    auth_refused: bool = False
    #: False until the first connection is up: failures before it are not logged as
    #: warnings, since :func:`connect` raises one error that says what failed.
    connected: bool = False


def _logging_callbacks(
    nc: Client, log: Any, user_callbacks: dict[str, Any], errors: _Errors
) -> dict[str, Callback | ErrorCallback]:
    """nats-py callbacks that log, then call the caller's own callback of the same kind."""

    async def chain(kind: str, *args: Any) -> None:
        user = user_callbacks.get(kind)
        if user is not None:
            await user(*args)

    async def on_error(exc: Exception) -> None:
        if isinstance(exc, nats.errors.SlowConsumerError):
            # A subscription's bounded queue is full and the client dropped a message:
            # one per message, so never logged here; the subscriber counts and says why.
            await chain("error_cb", exc)
            return
        errors.last = exc
        errors.auth_refused = errors.auth_refused or _is_auth_failure(exc)
        report = log.warning if errors.connected else log.debug
        report("nats.error", error_type=type(exc).__name__, error=_error_text(exc))
        await chain("error_cb", exc)

    async def on_disconnected() -> None:
        # nats-py calls this on close() too: only an unplanned disconnect is a warning.
        if nc.is_closed:
            log.debug("nats.disconnected", closing=True)
        else:
            log.warning("nats.disconnected")
        await chain("disconnected_cb")

    async def on_reconnected() -> None:
        log.info("nats.reconnected", server=_connected_url(nc))
        try:
            check_server_version(_connected_version(nc))
        except UnsupportedServer as exc:
            log.error("nats.unsupported_server", server=_connected_url(nc), error=exc.message)
        await chain("reconnected_cb")

    async def on_closed() -> None:
        log.info("nats.closed")
        await chain("closed_cb")

    async def on_discovered() -> None:
        log.info("nats.discovered_servers", count=len(nc.discovered_servers))
        await chain("discovered_server_cb")

    async def on_lame_duck() -> None:
        log.warning("nats.lame_duck_mode", server=_connected_url(nc))
        await chain("lame_duck_mode_cb")

    return {
        "error_cb": on_error,
        "disconnected_cb": on_disconnected,
        "reconnected_cb": on_reconnected,
        "closed_cb": on_closed,
        "discovered_server_cb": on_discovered,
        "lame_duck_mode_cb": on_lame_duck,
    }


def _is_auth_failure(exc: BaseException) -> bool:
    # nats-py raises a plain Error("nats: 'Authorization Violation'") during the handshake.
    return isinstance(exc, nats.errors.AuthorizationError) or (
        "authorization violation" in str(exc).lower()
    )


def _connect_failure(urls: list[str], exc: BaseException, errors: _Errors) -> BrokerError:
    """The flashgate error for a failed first connection, from its real cause."""
    shown = ", ".join(redact_url(url) for url in urls)
    cause: BaseException = exc
    if isinstance(exc, nats.errors.NoServersError) and errors.last is not None:
        cause = errors.last
    if errors.auth_refused or _is_auth_failure(cause):
        return BrokerError(f"NATS at {shown} refused the credentials (authorization violation)")
    return BrokerUnavailable(f"cannot reach NATS at {shown} ({_why_unreachable(cause)})")


def _why_unreachable(cause: BaseException) -> str:
    """A few words on why a connection failed: "connection refused", "timed out", ..."""
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused"
    if isinstance(cause, TimeoutError | nats.errors.TimeoutError):
        return "timed out"
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror.lower()
    return f"{type(cause).__name__}: {_error_text(cause)}"


async def _close_quietly(nc: Client) -> None:
    with contextlib.suppress(nats.errors.Error, OSError):
        await nc.close()


async def connect(
    servers: str | list[str],
    *,
    role: str,
    name: str,
    user: str | None = None,
    password: str | None = None,
    nkey_seed: str | None = None,
    identity: str | None = None,
    connect_timeout: float = 5,
    max_reconnect_attempts: int = -1,
    reconnect_time_wait: float = 0.5,
    connect_retries: int = 1,
    **options: Any,
) -> Client:
    """A connected nats-py client for ``role``; see the module docstring for the policy.

    ``connect_retries`` (>= 1) is how many more times each server is tried when the first
    connection fails; ``options`` go to ``nats.aio.client.Client.connect`` unchanged,
    except ``inbox_prefix`` (set from ``role`` and ``identity``) and the callbacks (logged,
    then called). ``nkey_seed`` logs in with a user NKey (nats-py signs the server's nonce
    with it; the seed never leaves this process) instead of ``user``/``password``.
    """
    urls = _server_list(servers)
    prefix = inbox_prefix(role, identity)
    if nkey_seed is not None and (user is not None or password is not None):
        raise ConfigurationError("give an NKey seed or a user and password, not both")
    if "inbox_prefix" in options:
        raise ConfigurationError("inbox_prefix is derived from the role; do not pass it")
    if connect_retries < 1:
        raise ConfigurationError("connect_retries must be >= 1 (nats-py reads 0 as forever)")
    if max_reconnect_attempts < -1:
        raise ConfigurationError("max_reconnect_attempts must be -1, 0 or positive")
    user_callbacks = {key: options.pop(key) for key in _CALLBACK_OPTIONS if key in options}
    log = _logger.bind(role=role, connection=name)
    nc = Client()
    errors = _Errors()
    kwargs: dict[str, Any] = {
        **options,
        **_logging_callbacks(nc, log, user_callbacks, errors),
        "servers": urls,
        "name": name,
        "user": user,
        "password": password,
        "inbox_prefix": prefix,
        **({"nkeys_seed_str": nkey_seed} if nkey_seed is not None else {}),
        "connect_timeout": connect_timeout,
        "reconnect_time_wait": reconnect_time_wait,
        "allow_reconnect": True,
        "max_reconnect_attempts": connect_retries,
    }
    try:
        await nc.connect(**kwargs)
    except (nats.errors.Error, OSError, TimeoutError) as exc:
        await _close_quietly(nc)
        raise _connect_failure(urls, exc, errors) from exc
    except BaseException:  # cancelled: leave no half-open client behind
        await _close_quietly(nc)
        raise
    # The first connection is up: from now on, the caller's reconnect policy.
    errors.connected = True
    nc.options["allow_reconnect"] = max_reconnect_attempts != 0
    nc.options["max_reconnect_attempts"] = max_reconnect_attempts or -1
    await _require_supported(nc)
    log.info("nats.connected", server=_connected_url(nc), version=_connected_version(nc))
    return nc


async def _require_supported(nc: Client) -> None:
    """Close ``nc`` and raise :class:`UnsupportedServer` if its server is too old."""
    try:
        check_server_version(_connected_version(nc))
    except UnsupportedServer as exc:
        url = _connected_url(nc)
        await _close_quietly(nc)
        raise UnsupportedServer(f"{url}: {exc.message}") from exc


async def flush(nc: Client, timeout: float = 5.0) -> None:
    """Return once the server has processed every command sent on ``nc`` before the call.

    Use it after subscribing, before telling anyone the subscription exists (a responder
    announcing itself, a test about to send a request from another connection). A single
    ``nc.flush()`` is not enough in nats-py 2.16: it writes its PING straight to the socket
    while earlier commands (the SUB) may still wait in the client's pending buffer for the
    flusher task, so the PONG can come back before the server has seen the SUB, and a
    request from another connection meets "no responders". The first flush kicks the
    flusher, which writes the pending commands before any reply can be read; the second
    PING then follows them, and its PONG proves they were processed.
    """
    # nats-py annotates flush(timeout: int) but waits with asyncio.wait_for: floats work.
    with broker_errors("flushing to NATS"):
        await nc.flush(timeout=timeout)  # type: ignore[arg-type]
        await nc.flush(timeout=timeout)  # type: ignore[arg-type]


# --- errors at the boundary -------------------------------------------------------------


@contextlib.contextmanager
def broker_errors(what: str) -> Iterator[None]:
    """Map nats-py errors raised inside the block to flashgate errors about ``what``."""
    try:
        yield
    except nats.errors.NoRespondersError as exc:
        raise NoResponders(f"{what}: nobody listens ({describe_error(exc)})") from exc
    except (
        nats.errors.TimeoutError,
        nats.errors.ConnectionClosedError,
        nats.errors.ConnectionReconnectingError,
        nats.js.errors.ServiceUnavailableError,
        nats.js.errors.NoStreamResponseError,  # a publish while the stream has no leader
    ) as exc:
        raise BrokerUnavailable(f"{what}: NATS did not answer ({describe_error(exc)})") from exc
    except nats.errors.Error as exc:
        raise BrokerError(f"{what}: {describe_error(exc)}") from exc


def describe_error(exc: BaseException) -> str:
    """A short text for a nats-py error: the JetStream description and code if any."""
    if isinstance(exc, nats.js.errors.APIError) and exc.description:
        return f"{exc.description} (code {exc.err_code})"
    return f"{type(exc).__name__}: {exc}"[:200]
