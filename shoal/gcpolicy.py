"""The garbage collector's policy for a process that holds a large, long-lived heap.

A manager keeps every task, node and service in its informer, and a thousand
agent sessions: hundreds of thousands of objects that live as long as the
process. CPython's collector was tuned for short scripts: it runs a young
collection every 700 allocations, and every few of those walks older objects
again, so a busy manager spent about a quarter of its CPU in the collector
while an apply created 10,000 tasks (1.2-1.7 s of 5-6 s in the informer,
orchestrator and scheduler alone), and a full collection held the event loop
for up to a second once the informer held 20,000 tasks (docs/benchmarks.md).

Almost none of that heap is cyclic garbage: the models are frozen and freed by
reference counting the moment the informer drops them. So collections can be
rare: a young one every ``YOUNG`` allocations, older ones rarer still, and what
is alive once the process has started (modules, the first listing of the store,
a fleet's agents) is moved out of the collector's sight for good with
``gc.freeze()`` (the one full collection comes before the start, where it
walks only the modules). Cyclic garbage (asyncio's exceptions and futures) still goes, a
little later.

What is created after the start is not frozen: a full collection, rare as it is
now, still walks every task created since (0.65-2.1 s with 20,000 tasks here,
holding the GIL, so also the lease keeper's thread). The daemons' entry points
(``shoal manager``, ``shoal up``, a sim fleet) call these, never a library class:
the policy is the whole process's, and tests run many managers in one.
"""

from __future__ import annotations

import gc

# Allocations between young collections (CPython's default: 700), and how many young
# (then middle) collections between two of the next generation (defaults 10 and 10).
YOUNG = 50_000
MIDDLE = 20
OLD = 100


def long_lived_heap() -> None:
    """Collect rarely: most objects here live long or die by reference counting.

    Call it before the process starts its work: it collects once first, while there
    is little to walk (the modules), so no garbage cycle of the imports is frozen
    later; a full collection once a store is listed would hold the GIL for seconds,
    as a new leader's lease wants renewing."""
    gc.collect()
    gc.set_threshold(YOUNG, MIDDLE, OLD)


def started() -> None:
    """What exists now lives for the whole process: never walk it again (no collection)."""
    gc.freeze()
