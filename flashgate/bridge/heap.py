"""The cycle collector in a Bridge Node's process: its long-lived heap kept out of it.

A node's heap is mostly long-lived: what it imported and, once loaded, every secret it
holds (its store entry, its plaintext slot, its fast-path key and wrap: several objects
each). CPython's cycle collector walks the young generation every 700 allocations and,
now and then, every tracked object. While a node checks its initial envelopes both grow
with the number of secrets: measured here (``bench/bridge.py --fast-path`` setup, 20k
envelopes checked in one process), checking one took 47 µs with the collector off, and
65 µs with it on, 92 µs once 1.5M objects were live. The collector frees nothing there:
an envelope's objects hold no cycle (the per-secret wire types are even untracked,
``gc=False``).

So the process that runs a node (``flashgate bridge``, which owns its process):

- **at start**, once its bundle is open and before it reads a bucket
  (:func:`before_load`): collects, then *freezes* what is there (:func:`gc.freeze`: moved
  to a permanent generation that collections skip; reference counting still frees an
  object let go), and collects the young generation every :data:`LOAD_THRESHOLD`
  allocations instead of 700;
- **once the initial values are loaded** (:func:`after_load`): collects, freezes the held
  set, and goes back to the thresholds it had. Later collections walk only what changed
  since: a share request does not pay for 100k held secrets.

An object in a reference cycle at a freeze is never collected: each freeze comes right
after a full collection, so only cycles still reachable then are frozen (for the
process's life, like the rest of the start-up heap). Nodes run inside another process
(tests, an embedding program) leave the collector to that process.
"""

from __future__ import annotations

import gc

__all__ = ["LOAD_THRESHOLD", "after_load", "before_load"]

#: Allocations between two young-generation collections while the initial values load.
LOAD_THRESHOLD = 20_000


def before_load() -> tuple[int, int, int]:
    """Freeze the start-up heap and collect seldom; returns the thresholds to restore."""
    thresholds = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(LOAD_THRESHOLD, thresholds[1], thresholds[2])
    return thresholds


def after_load(thresholds: tuple[int, int, int]) -> None:
    """The initial values are loaded: freeze what is held, collect as before."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*thresholds)
