"""Server-side API keys (the in-process API for a future web front end).

The key id and secret are generated here, the secret is encrypted at once under the fleet
key and handed back exactly once; from then on only its envelope exists. The CLI path
(client-side) generates both on the admin's machine, so the backend never sees them.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from flashgate.backend.processor import CommandProcessor
from flashgate.crypto.api_key_tokens import new_key_id, new_key_secret
from flashgate.crypto.context import SecretContext
from flashgate.crypto.encrypt import encrypt_secret
from flashgate.errors import ApiKeyRejected
from flashgate.events.commands import CreateApiKey
from flashgate.events.types import ApiKeyScope


@dataclass(frozen=True)
class IssuedApiKey:
    key_id: str
    secret: bytes  # shown once; never stored in the clear
    repo: str

    def __repr__(self) -> str:
        return f"IssuedApiKey(key_id={self.key_id!r}, repo={self.repo!r}, secret=<redacted>)"


async def issue_api_key(
    processor: CommandProcessor,
    *,
    repo: str,
    scope: ApiKeyScope,
    access: str,
    label: str,
    actor: str,
) -> IssuedApiKey:
    state = processor.state
    epoch = state.rotating_to or state.epoch
    key_id = new_key_id()
    secret = new_key_secret()
    context = SecretContext(
        fleet=state.names.fleet, repo=repo, name=key_id, kind="apikey", version=1
    )
    token = encrypt_secret(state.keys[epoch], context, secret)
    command = CreateApiKey(
        command_id=f"srv-{secrets.token_hex(12)}",
        fleet=state.names.fleet,
        actor=actor,
        issued_at=int(datetime.now(UTC).timestamp() * 1000),
        key_id=key_id,
        repo=repo,
        scope=scope,
        access=access,
        label=label,
        epoch=epoch,
        jwe=token,
    )
    outcome = await processor.process_command(command, trusted=True)
    if outcome.result != "applied":
        raise ApiKeyRejected(f"API key not issued: {outcome.reason}: {outcome.detail}")
    return IssuedApiKey(key_id=key_id, secret=secret, repo=repo)
