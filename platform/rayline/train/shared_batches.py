"""Batches for parameter-server workers that do not wait for each other (modes async and bounded): rather than an
equal range each, the workers share one queue of the epoch's training rows, and each takes the next unit of it when
it is ready for more. A fast worker trains on more rows than a slow one, so no worker sits idle at the end of an
epoch while a straggler finishes its equal share (the workers of Dean et al.'s Downpour SGD take work likewise).

The epoch's rows, in an order every rank computes alike from the epoch's seed, are cut into units; ranks claim
units from a counter actor (`UnitCounter`, one call per unit, made one unit ahead in a background thread) until
none are left, so every row of the split is trained on once per epoch, by one worker or the other. A split that
fits train.cache_shard_mb is read whole into memory before the first epoch, and a unit is UNIT_BATCHES batches of
a new permutation of all rows each epoch; a larger one is streamed, a unit being one window of row groups
(train.shuffle_window_mb) whose rows are shuffled together, as ShardReader streams a range.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from rayline.train.batches import Batch, ShardReader, generator

UNIT_BATCHES = 4
"""Batches per claimed unit of an in-memory split: one counter call per four steps, and at an epoch's end a slow
worker holds at most two units (the one it trains on and the one claimed ahead)."""

Claim = Callable[[int, int], "int | None"]
"""claim(epoch key, units in the epoch): the next unclaimed unit's index, or None once all are taken."""


class UnitCounter:
    """Hands out each epoch's unit indices, each once, to whichever worker asks first (a Ray actor, one call at a
    time). Keyed by the epoch's shuffle seed, so a worker asking for the next epoch starts a fresh count."""

    def __init__(self) -> None:
        self.claimed: dict[int, int] = {}

    def claim(self, key: int, units: int) -> int | None:
        index = self.claimed.get(key, 0)
        if index >= units:
            return None
        self.claimed[key] = index + 1
        return index


class SharedReader:
    """The whole training split, handed out a unit at a time through `claim` (see the module's docstring)."""

    def __init__(self, whole: ShardReader, claim: Claim):
        """`whole`: a ShardReader of the split as one range (dp_rank 0, dp_size 1)."""
        self.whole, self.claim = whole, claim
        self.device = whole.device
        self.units, self.unit = 1, 0

    def progress(self, step: int, steps: int) -> float:
        """How far through the epoch's rows the workers together are (for the learning-rate schedule)."""
        return self.unit / self.units

    def batches(self, batch_size: int, *, seed: int | None, drop_last: bool = False) -> Iterator[Batch]:
        assert seed is not None, "a shared split is a training split: its epochs are shuffled"
        if self.whole.in_memory:
            return self._from_memory(self.whole.hold_in_memory(), batch_size, seed)
        return self._stream(batch_size, seed)

    def _from_memory(self, cached: Batch, batch_size: int, seed: int) -> Iterator[Batch]:
        rows = len(cached["y"])
        order = torch.randperm(rows, generator=generator(seed)).to(self.device)
        unit_rows = batch_size * UNIT_BATCHES
        for index in self._claimed(seed, -(-rows // unit_rows)):
            unit = order[index * unit_rows : (index + 1) * unit_rows]
            for start in range(0, len(unit), batch_size):
                rows_b = unit[start : start + batch_size]
                yield {key: t[rows_b] for key, t in cached.items()}

    def _stream(self, batch_size: int, seed: int) -> Iterator[Batch]:
        windows = list(self.whole.windows(self.whole.pieces(order_seed=seed)))

        def read(index: int) -> tuple[np.ndarray, np.ndarray]:
            return self.whole.read_window(windows[index], seed, index)

        for x, y in self._claimed(seed, len(windows), read):
            for start in range(0, len(y), batch_size):
                yield self.whole.tensors(x[start : start + batch_size], y[start : start + batch_size])

    def _claimed(self, key: int, units: int, load: Callable = lambda index: index) -> Iterator:
        """load(unit) of each unit this worker claims, the next one claimed and loaded while this one is trained on."""
        self.units, self.unit = max(1, units), 0

        def claim_next():
            index = self.claim(key, units)
            return None if index is None else (index, load(index))

        with ThreadPoolExecutor(max_workers=1) as pool:
            ahead = pool.submit(claim_next)
            while (claimed := ahead.result()) is not None:
                ahead = pool.submit(claim_next)
                self.unit, loaded = claimed
                yield loaded
