"""What keeps the serving interpreter from stalling, and what watches for stalls.

Every request waits out anything that holds the GIL; these two keep that visible and short.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable


def freeze_heap() -> None:
    """Collect, then move every object alive into the collector's permanent generation.

    Python's cyclic collector walks every object it tracks in a full collection. After start-up
    that is the whole heap MLflow, pandas and scikit-learn leave behind, and the walk held the
    GIL for 100-200 ms: with 16 wrk clients the p99 was 210 ms while the median was 5 ms.
    Frozen objects are still freed by reference counting; only the cycle search skips them. At
    a model swap the old model's objects are unfrozen and collected first (one pause per swap,
    not one per few thousand requests), so memory stays flat across swaps.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


async def watch_loop_lag(observe: Callable[[float], None], interval: float = 0.01) -> None:
    """How late the event loop wakes from a 10 ms sleep: the stalls every request waits out (a
    collection, a Parquet write, anything else that holds the GIL), passed to ``observe``."""
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        await asyncio.sleep(interval)
        observe(max(0.0, loop.time() - started - interval))
