"""The OpenAI-compatible gateway: ``/v1/chat/completions``, ``/v1/embeddings``, ``/v1/models``.

A client presents a repository AI API key as its bearer token, in one string::

    Authorization: Bearer fgk_<24 base32>.fgs_<43 base64url>
                          ^ key id         ^ key secret

(what an OpenAI SDK takes as ``api_key``). The node checks the secret against the live key
in constant time (:meth:`Authority.verify`); the key's access names the provider it may
use (``openai``, ``anthropic``, ``mistral``, ``gemini``, ``azure``) and the node lends the
repository's AI secret for that provider, injects its API key in the provider's header
convention, and relays the answer as it comes (server-sent events included: nothing is
buffered on the way back). What the client sent as credentials never goes upstream, and
the provider key never comes back: upstream headers are relayed from an allow-list, an
upstream refusal of the stored credential (401/403) is answered with an error of the
node's own, and an upstream error body is scrubbed of the key before it is relayed.

Answers of the node's own are OpenAI error JSON (``{"error": {"message", "type",
"code"}}``): 401 for a missing, malformed, unknown, revoked or wrong key (one message: it
does not say which part was wrong), 403 when the key may not use this (another scope, or
no AI secret for its provider in its repository: one message), 503 with ``Retry-After``
while the node is still loading, 502/504 when the upstream cannot be reached or times out.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Final

import aiohttp
import structlog
from aiohttp import web
from multidict import CIMultiDict

from flashgate.errors import SecretNotHeld
from flashgate.events.values import AiCredential
from flashgate.gateway.accounting import BYTES_IN, BYTES_OUT, GRANT, UPSTREAM_ERROR
from flashgate.gateway.authority import Authority, Grant

log = structlog.get_logger("flashgate.gateway.openai")

#: The token separator: neither a key id nor a key secret contains it.
TOKEN_SEPARATOR: Final = "."  # noqa: S105 - a separator, not a password
_MAX_TOKEN_CHARS = 128
#: Where each provider's OpenAI-compatible API lives when the secret has no ``base_url``.
DEFAULT_BASE_URLS: dict[str, str] = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com/v1",
    "mistral": "https://api.mistral.ai/v1",
    "gemini": "https://generativelanguage.googleapis.com/v1beta/openai",
}
ANTHROPIC_VERSION = "2023-06-01"
#: Request headers relayed upstream (everything else, credentials first, is dropped).
#: (Not accept-encoding: answers come back uncompressed, so an error document can be
#: scrubbed of the credential before it is relayed.)
_REQUEST_HEADERS = ("content-type", "accept", "content-encoding", "user-agent")
_REQUEST_PREFIXES = ("openai-beta", "anthropic-beta", "x-stainless-")
#: Response headers relayed to the client.
_RESPONSE_HEADERS = ("content-type", "content-encoding", "cache-control", "retry-after",
                     "x-request-id", "request-id")  # fmt: skip
_RESPONSE_PREFIXES = ("openai-", "x-ratelimit-", "anthropic-ratelimit-")
_ROUTES = {
    ("POST", "/v1/chat/completions"): "/chat/completions",
    ("POST", "/v1/embeddings"): "/embeddings",
    ("GET", "/v1/models"): "/models",
}
#: How long a client is told to wait while the node loads.
RETRY_AFTER_S = 2
#: An answer of known length up to this is relayed whole (a JSON document, not a stream).
_WHOLE_MAX = 256 * 1024


def error(status: int, message: str, kind: str, code: str | None = None,
          headers: dict[str, str] | None = None) -> web.Response:  # fmt: skip
    """An OpenAI error document (``message`` is the node's own words, never a value)."""
    return web.json_response(
        {"error": {"message": message, "type": kind, "param": None, "code": code}},
        status=status,
        headers=headers,
    )


def unauthorized() -> web.Response:
    return error(
        401,
        "Incorrect API key provided. Use a repository AI API key as the bearer token: "
        "<key id>.<key secret> (fgk_....fgs_...).",
        "invalid_request_error",
        "invalid_api_key",
    )


def forbidden() -> web.Response:
    return error(
        403,
        "This API key may not use this: it is not an AI key, or its repository holds no AI "
        "secret for its provider.",
        "permission_error",
        "forbidden",
    )


def parse_token(header: str | None) -> tuple[str, bytes] | None:
    """(key id, secret) from ``Authorization: Bearer <key id>.<secret>``, else None."""
    if header is None or len(header) > _MAX_TOKEN_CHARS + 16:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    key_id, sep, secret = token.strip().partition(TOKEN_SEPARATOR)
    if not sep or not key_id or not secret or not secret.isascii() or not key_id.isascii():
        return None
    return key_id, secret.encode("ascii")


def provider_headers(credential: AiCredential) -> dict[str, str]:
    """The credential, in its provider's header convention."""
    if credential.provider == "anthropic":
        return {"x-api-key": credential.api_key, "anthropic-version": ANTHROPIC_VERSION}
    if credential.provider == "azure":
        return {"api-key": credential.api_key}
    return {"Authorization": f"Bearer {credential.api_key}"}


def upstream_url(credential: AiCredential, suffix: str) -> str:
    base = credential.base_url or DEFAULT_BASE_URLS[credential.provider]
    return base.rstrip("/") + suffix


@dataclass
class OpenAiGateway:
    authority: Authority
    session: aiohttp.ClientSession
    #: The most a request body may be (chat and embedding requests are JSON).
    max_body: int = 16 * 1024 * 1024
    #: How long reading the request body may take.
    body_timeout_s: float = 60.0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if not self.authority.ready():
            return error(
                503,
                "The node is still loading its secrets; retry shortly.",
                "server_error",
                "loading",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        parsed = parse_token(request.headers.get("Authorization"))
        grant = self.authority.verify(*parsed) if parsed is not None else None
        if grant is None:
            return unauthorized()
        request[GRANT] = grant
        path = request.path
        suffix = _ROUTES.get((request.method, path))
        if suffix is None and request.method == "GET" and path.startswith("/v1/models/"):
            suffix = path[len("/v1") :]
        if suffix is None:
            return error(404, f"No route {request.method} {path[:128]} here.",
                         "invalid_request_error", "unknown_route")  # fmt: skip
        if grant.scope != "ai":
            return forbidden()
        body = b""
        if request.method == "POST":
            try:
                async with asyncio.timeout(self.body_timeout_s):
                    body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                return error(413, f"The request body is over {self.max_body} bytes.",
                             "invalid_request_error", "body_too_large")  # fmt: skip
            except TimeoutError:
                return error(408, "The request body took too long.", "invalid_request_error",
                             "timeout")  # fmt: skip
        request[BYTES_IN] = len(body)
        return await self._relay(request, grant, suffix, body)

    async def _relay(
        self, request: web.Request, grant: Grant, suffix: str, body: bytes
    ) -> web.StreamResponse:
        headers = CIMultiDict[str]()
        for name, value in request.headers.items():
            lower = name.lower()
            if lower in _REQUEST_HEADERS or lower.startswith(_REQUEST_PREFIXES):
                headers.add(name, value)
        try:
            # The credential is read per request: a rotation is used from the next one,
            # and a deleted secret refuses at once.
            with self.authority.ai(grant.repo, grant.access) as credential:
                url = upstream_url(credential, suffix)
                headers.update(provider_headers(credential))
                headers["Accept-Encoding"] = "identity"
                secret = credential.api_key.encode()
        except (SecretNotHeld, KeyError):
            return forbidden()
        try:
            upstream_cm = self.session.request(
                request.method,
                url,
                params=request.query or None,
                data=body if request.method == "POST" else None,
                headers=headers,
                allow_redirects=False,
            )
            del headers
            async with upstream_cm as upstream:
                return await self._answer(request, upstream, secret)
        except TimeoutError:
            request[UPSTREAM_ERROR] = True
            return error(504, "The provider did not answer in time.", "server_error",
                         "upstream_timeout")  # fmt: skip
        except aiohttp.ClientError as exc:
            request[UPSTREAM_ERROR] = True
            log.warning("upstream unreachable", repo=grant.repo, error=type(exc).__name__)
            return error(502, "The provider could not be reached.", "server_error",
                         "upstream_unreachable")  # fmt: skip

    async def _answer(
        self, request: web.Request, upstream: aiohttp.ClientResponse, secret: bytes
    ) -> web.StreamResponse:
        if upstream.status in (401, 403, 407):
            request[UPSTREAM_ERROR] = True
            return error(502, "The provider refused the credential this repository holds.",
                         "server_error", "upstream_credential_refused")  # fmt: skip
        headers = CIMultiDict[str]()
        for name, value in upstream.headers.items():
            lower = name.lower()
            if lower in _RESPONSE_HEADERS or lower.startswith(_RESPONSE_PREFIXES):
                headers.add(name, value)
        if upstream.status >= 400:
            # An error document is small: read it whole and scrub the key out of it.
            if upstream.status >= 500:
                request[UPSTREAM_ERROR] = True
            if upstream.headers.get("Content-Encoding", "identity") != "identity":
                # compressed anyway: it cannot be scrubbed, so it is not relayed
                return error(upstream.status, f"The provider answered {upstream.status}.",
                             "server_error", "upstream_error")  # fmt: skip
            data = await upstream.content.read(1024 * 1024)
            data = data.replace(secret, b"<redacted>")
            request[BYTES_OUT] = len(data)
            return web.Response(status=upstream.status, body=data, headers=headers)
        length = upstream.content_length
        if (
            length is not None
            and length <= _WHOLE_MAX
            and "event-stream" not in upstream.content_type
        ):
            # A small answer of known length is no stream: relayed in one write.
            try:
                data = await upstream.content.readexactly(length)
            except asyncio.IncompleteReadError:
                request[UPSTREAM_ERROR] = True
                return error(502, "The provider's answer ended short.", "server_error",
                             "upstream_cut")  # fmt: skip
            request[BYTES_OUT] = len(data)
            return web.Response(status=upstream.status, body=data, headers=headers)
        response = web.StreamResponse(status=upstream.status, headers=headers)
        if length is not None and "content-encoding" not in headers:
            response.content_length = length
        await response.prepare(request)
        sent = 0
        try:
            async for chunk in upstream.content.iter_any():
                try:
                    await response.write(chunk)
                except ConnectionResetError:
                    # The client went away: stop relaying (leaving closes the upstream).
                    log.info("client left during the answer", sent=sent)
                    return response
                sent += len(chunk)
                request[BYTES_OUT] = sent
        except (aiohttp.ClientError, TimeoutError) as exc:
            # Headers are out: the stream ends short and the client sees it cut.
            request[UPSTREAM_ERROR] = True
            log.warning("upstream stream broke", error=type(exc).__name__)
            return response
        await response.write_eof()
        return response
