"""The admin's signed statement over an envelope it writes (DESIGN §8).

Made on the admin's machine beside the command that carries it: the nodes load an
envelope, and answer share requests for it, only with a statement the pinned admin key
signed (or a re-wrap of one by an active node).
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from flashgate.crypto.context import SecretContext
from flashgate.events.envelope import EnvelopeStatement, ProvenApiKey, make_statement
from flashgate.events.signing import sign


def signed_statement(
    admin_key: Ed25519PrivateKey,
    base: dict[str, Any],
    context: SecretContext,
    *,
    epoch: int,
    token: str,
    api_key: ProvenApiKey | None = None,
) -> EnvelopeStatement:
    """The statement over the envelope written by the command whose ``base`` fields
    (:meth:`~flashgate.cli.session.AdminSession.base`) are given, signed."""
    statement = make_statement(
        context,
        epoch=epoch,
        token=token,
        api_key=api_key,
        command_id=base["command_id"],
        issued_at=base["issued_at"],
    )
    return sign(statement, admin_key)
