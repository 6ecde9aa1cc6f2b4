"""A benchmark-only hook: make one training rank a straggler, to measure how each strategy copes with one.

benchmarks/optim_bench.py sets RAYLINE_BENCH_STRAGGLER=RANK:SECONDS before it starts Ray (workers inherit the
environment); rank RANK then sleeps SECONDS after each batch's forward-backward. The benchmark sets SECONDS from the
model's own forward-backward time, measured once outside any strategy, so every strategy's straggler sleeps alike
(timing each run's own step instead would count ddp's all-reduce as compute and slow its straggler more).
Unset (always, outside that benchmark), this is a no-op.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

ENV = "RAYLINE_BENCH_STRAGGLER"


def straggler_delay(rank: int) -> Callable[[], None] | None:
    """None unless the environment names this rank as the straggler; else what sleeps after each batch."""
    spec = os.environ.get(ENV)
    if not spec:
        return None
    slow_rank, seconds = spec.split(":")
    if int(slow_rank) != rank:
        return None
    return lambda: time.sleep(float(seconds))
