"""A benchmark-only hook: make one training rank a straggler, to measure how each strategy copes with one.

benchmarks/optim_bench.py sets RAYLINE_BENCH_STRAGGLER=RANK:FACTOR before it starts Ray (workers inherit the
environment); rank RANK then sleeps (FACTOR - 1) times its own forward-backward time after each batch, so its
compute takes FACTOR times as long. Unset (always, outside that benchmark), this is a no-op.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

ENV = "RAYLINE_BENCH_STRAGGLER"


def straggler_delay(rank: int) -> Callable[[float], None] | None:
    """None unless the environment names this rank as the straggler; else what sleeps after each batch."""
    spec = os.environ.get(ENV)
    if not spec:
        return None
    slow_rank, factor = spec.split(":")
    if int(slow_rank) != rank:
        return None
    return lambda seconds: time.sleep((float(factor) - 1.0) * seconds)
