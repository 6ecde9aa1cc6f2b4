"""Where each rank's batches come from: its Ray Data shard (kept in memory after one pass when it is small),
its replica's share of a stream that several ranks read, and a one-batch look-ahead."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch

Batch = dict[str, torch.Tensor]


class ShardCache:
    """A worker's dataset shard, kept as tensors when it fits in `limit_bytes` so epochs shuffle it in place
    instead of streaming it again: read whole up front when its size is known, else streamed from Ray Data on the
    first pass and kept if it turned out to fit.

    Later passes are deterministic in `seed`, so ranks that read the same stream in the same order (one
    replica under tensor or pipeline parallelism) keep producing identical batches.
    """

    def __init__(
        self,
        shard,
        *,
        limit_bytes: int,
        dtypes: dict[str, torch.dtype],
        device: torch.device,
        size_bytes: int | None = None,
    ):
        """`size_bytes`: the shard's size when it is known without reading it (materialized_size)."""
        self.shard, self.limit_bytes, self.dtypes, self.device = shard, limit_bytes, dtypes, device
        self.size_bytes = size_bytes
        self.cached: Batch | None = None

    def batches(self, batch_size: int, *, seed: int | None, drop_last: bool = False) -> Iterator[Batch]:
        """seed None keeps the order (validation); otherwise the rows are shuffled with it."""
        if self.cached is None and self.size_bytes is not None and 0 < self.size_bytes <= self.limit_bytes:
            self.cached = self._load()
        source = self._from_memory(batch_size, seed) if self.cached is not None else self._stream(batch_size, seed)
        for batch in source:
            if not (drop_last and len(batch["y"]) < batch_size):
                yield batch

    def _load(self) -> Batch | None:
        """A shard known to fit, read in one pass of whole blocks: the first epoch then shuffles in memory like
        every later one, instead of streaming through Ray Data's local shuffle buffer at a fraction of the speed."""
        parts = list(self.shard.iter_torch_batches(batch_size=None, dtypes=self.dtypes, device=self.device))
        parts = [p for p in parts if len(p["y"])]
        return {key: torch.cat([p[key] for p in parts]) for key in parts[0]} if parts else None

    def _stream(self, batch_size: int, seed: int | None) -> Iterator[Batch]:
        shuffle = {} if seed is None else {"local_shuffle_buffer_size": batch_size * 8, "local_shuffle_seed": seed}
        kept: list[Batch] | None = [] if self.limit_bytes > 0 else None
        size = 0
        batches = self.shard.iter_torch_batches(
            batch_size=batch_size, dtypes=self.dtypes, device=self.device, **shuffle
        )
        for batch in batches:
            if kept is not None:
                size += sum(t.nbytes for t in batch.values())
                if size <= self.limit_bytes:
                    kept.append(batch)
                else:
                    kept = None  # too big to keep: every epoch streams
            yield batch
        if kept:
            self.cached = {key: torch.cat([b[key] for b in kept]) for key in kept[0]}

    def _from_memory(self, batch_size: int, seed: int | None) -> Iterator[Batch]:
        rows = len(self.cached["y"])
        if seed is None:
            order = torch.arange(rows)
        else:
            order = torch.randperm(rows, generator=torch.Generator().manual_seed(seed))
        order = order.to(self.cached["y"].device)
        for start in range(0, rows, batch_size):
            index = order[start : start + batch_size]
            yield {key: t[index] for key, t in self.cached.items()}


def materialized_size(shard) -> int | None:
    """The shard's size in bytes when its blocks are in the object store already (known from their metadata,
    nothing read); None for a dataset that would have to run to tell."""
    from ray.data.dataset import MaterializedDataset

    return shard.size_bytes() if isinstance(shard, MaterializedDataset) else None


def replica_batches(
    batches: Iterable[Any], dp_rank: int, dp_size: int, *, fill_last: bool
) -> Iterator[tuple[Any, bool]]:
    """This replica's share of a stream that every rank reads in the same order: one batch of every dp_size.

    Yields (batch, counts). Every replica gets the same number of batches, since their collectives must pair
    up: a short last round is dropped, or with fill_last its missing slots repeat a batch that does not count.
    """
    round_: list[Any] = []
    for batch in batches:
        round_.append(batch)
        if len(round_) == dp_size:
            yield round_[dp_rank], True
            round_ = []
    if round_ and fill_last:
        yield (round_[dp_rank], True) if dp_rank < len(round_) else (round_[0], False)


def flag_last(items: Iterable[Any]) -> Iterator[tuple[Any, bool]]:
    """(item, is_last) pairs, looking one item ahead."""
    iterator = iter(items)
    previous = next(iterator, _END)
    while previous is not _END:
        current = next(iterator, _END)
        yield previous, current is _END
        previous = current


_END = object()
