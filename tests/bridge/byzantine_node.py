"""A byzantine Bridge Node for tests: it answers share requests with wrong partials.

Run like ``flashgate bridge``: ``python -m tests.bridge.byzantine_node --bundle ... --nats ...``.
Its partials are multiplied by 2 mod N; its proofs (made honestly for the wrong values)
cannot verify. Honest nodes must still load everything and name this node.
"""

from __future__ import annotations

from collections.abc import Sequence

from flashgate.bridge import partials as partials_module
from flashgate.cli.bridge import bridge

_honest = partials_module.PartialCache.partials


async def _lying(self: partials_module.PartialCache, cs: Sequence[int]) -> list[int]:
    values = await _honest(self, cs)
    n = self.public.modulus
    return [x * 2 % n for x in values]


partials_module.PartialCache.partials = _lying  # type: ignore[method-assign]

if __name__ == "__main__":
    bridge()
