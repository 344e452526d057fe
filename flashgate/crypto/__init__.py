"""Pure cryptography: no asyncio, no NATS, no database.

Encrypt side (public key only; the backend may import these and nothing else here):
``publickey``, ``context``, ``jwe``, ``encrypt``.
Share/combine side (nodes, recovery, the ceremony): ``threshold``, ``oaep``, ``decrypt``.
Files at rest: ``seal``.
"""
