"""Where each rank's batches come from: its replica's range of the prepared split (held in memory when it is
small, streamed when not), and a one-batch look-ahead."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from rayline.data.prepared import SplitFiles

Batch = dict[str, torch.Tensor]
Piece = tuple[int, int, int, int]
"""(file, row group, first row, end row) of a prepared split."""


class ShardReader:
    """One data-parallel replica's rows of a prepared split, read from its Parquet files with pyarrow.

    The split's row groups, in an order every rank computes alike, are laid end to end and cut into dp_size equal
    ranges (the at most dp_size - 1 rows past the last whole range are left out, as Ray Data's equal split does),
    so every replica takes as many steps as every other, and the ranks of one replica (tensor, pipeline) read the
    same rows in the same order. Every epoch streams the row groups in a new order (and so a new range), read a
    window of `window_bytes` ahead in a background thread, each window's rows shuffled together; except that a
    range of at most `cache_bytes` is kept as it streams by in the first epoch, and later epochs shuffle it in
    memory.
    """

    def __init__(
        self,
        split: SplitFiles,
        *,
        dp_rank: int,
        dp_size: int,
        cache_bytes: int,
        window_bytes: int,
        y_dtype: torch.dtype,
        device: torch.device,
    ):
        self.split, self.dp_rank = split, dp_rank
        self.rows = split.rows // dp_size
        self.window_rows = max(1, window_bytes // split.row_bytes)
        self.in_memory = self.rows * split.row_bytes <= cache_bytes
        self.y_dtype, self.device = y_dtype, device
        self.files = split.open()
        self.cached: Batch | None = None

    def hold_in_memory(self) -> Batch:
        """This range read whole into memory now (each row group written into place), and kept for later epochs."""
        if self.cached is None:
            keep = Keep(self.rows)
            for window in self.windows(self.pieces(order_seed=None)):
                keep.add(*self.read_window(window))
            self.cached = self.tensors(keep.x, keep.y)
        return self.cached

    def progress(self, step: int, steps: int) -> float:
        """How far through the epoch this replica is (for the learning-rate schedule)."""
        return step / steps

    def batches(self, batch_size: int, *, seed: int | None, drop_last: bool = False) -> Iterator[Batch]:
        """seed None keeps the file order (validation); otherwise the rows are shuffled with it."""
        source = self._from_memory(batch_size, seed) if self.cached is not None else self._stream(batch_size, seed)
        for batch in source:
            if not (drop_last and len(batch["y"]) < batch_size):
                yield batch

    def _from_memory(self, batch_size: int, seed: int | None) -> Iterator[Batch]:
        rows = len(self.cached["y"])
        order = torch.arange(rows) if seed is None else torch.randperm(rows, generator=generator(seed))
        order = order.to(self.device)
        for start in range(0, rows, batch_size):
            index = order[start : start + batch_size]
            yield {key: t[index] for key, t in self.cached.items()}

    def _stream(self, batch_size: int, seed: int | None) -> Iterator[Batch]:
        windows = list(self.windows(self.pieces(order_seed=seed)))
        carried: tuple[np.ndarray, np.ndarray] | None = None
        keep = Keep(self.rows) if self.in_memory else None
        with ThreadPoolExecutor(max_workers=1) as pool:
            ahead = pool.submit(self.read_window, windows[0], seed, 0) if windows else None
            for index in range(len(windows)):
                x, y = ahead.result()
                last = index == len(windows) - 1
                if not last:
                    ahead = pool.submit(self.read_window, windows[index + 1], seed, index + 1)
                if keep is not None:
                    keep.add(x, y)
                if carried is not None:  # the last window's short tail goes first, topped up from this one
                    need = batch_size - len(carried[1])
                    x_b, y_b = np.concatenate([carried[0], x[:need]]), np.concatenate([carried[1], y[:need]])
                    x, y = x[need:], y[need:]
                    if len(y_b) == batch_size or last:
                        yield self.tensors(x_b, y_b)
                    carried = None if len(y_b) == batch_size else (x_b, y_b)
                whole = len(y) if last else len(y) - len(y) % batch_size
                for start in range(0, whole, batch_size):
                    yield self.tensors(x[start : start + batch_size], y[start : start + batch_size])
                if whole < len(y):
                    carried = (x[whole:], y[whole:])
        if keep is not None and keep.full():
            self.cached = self.tensors(keep.x, keep.y)

    def pieces(self, *, order_seed: int | None) -> list[Piece]:
        """This replica's pieces: its range of the row groups laid end to end in file order (order_seed None)
        or in an order shuffled with order_seed."""
        groups = [(f, g, n) for f, sizes in enumerate(self.split.row_groups) for g, n in enumerate(sizes)]
        if order_seed is not None:
            groups = [groups[i] for i in np.random.default_rng(order_seed).permutation(len(groups))]
        begin, end = self.dp_rank * self.rows, (self.dp_rank + 1) * self.rows
        pieces, offset = [], 0
        for f, g, n in groups:
            lo, hi = max(begin, offset), min(end, offset + n)
            if lo < hi:
                pieces.append((f, g, lo - offset, hi - offset))
            offset += n
        return pieces

    def windows(self, pieces: list[Piece]) -> Iterator[list[Piece]]:
        window, rows = [], 0
        for piece in pieces:
            window.append(piece)
            rows += piece[3] - piece[2]
            if rows >= self.window_rows:
                yield window
                window, rows = [], 0
        if window:
            yield window

    def read_window(self, pieces: list[Piece], seed: int | None = None, index: int = 0) -> tuple[np.ndarray, ...]:
        """The pieces' rows in one array, in their order or (with a seed) shuffled with (seed, index); each row
        group is written into place as it is read, so a window is never held twice."""
        rows = sum(hi - lo for _, _, lo, hi in pieces)
        place = np.arange(rows) if seed is None else np.random.default_rng([seed, index]).permutation(rows)
        x_out, y_out, offset = np.empty((rows, self.split.num_inputs), np.float32), None, 0
        for f, g, lo, hi in pieces:  # never empty: windows() yields none
            x, y = self.files.read(f, g)
            y_out = np.empty(rows, y.dtype) if y_out is None else y_out
            at = place[offset : offset + hi - lo]
            x_out[at], y_out[at] = x[lo:hi], y[lo:hi]
            offset += hi - lo
        return x_out, y_out

    def tensors(self, x: np.ndarray, y: np.ndarray) -> Batch:
        return {
            "x": torch.from_numpy(np.require(x, np.float32, ["C", "W"])).to(self.device),
            "y": torch.from_numpy(np.require(y, requirements=["C", "W"])).to(self.y_dtype).to(self.device),
        }


class Keep:
    """The rows of a streamed range, copied into one preallocated array as they go by (no second copy at the end)."""

    def __init__(self, rows: int):
        self.rows, self.filled = rows, 0
        self.x: np.ndarray | None = None
        self.y: np.ndarray | None = None

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        if self.x is None:
            self.x, self.y = np.empty((self.rows, x.shape[1]), np.float32), np.empty(self.rows, y.dtype)
        self.x[self.filled : self.filled + len(y)] = x
        self.y[self.filled : self.filled + len(y)] = y
        self.filled += len(y)

    def full(self) -> bool:
        return self.x is not None and self.filled == self.rows


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def flag_last(items: Iterable[Any]) -> Iterator[tuple[Any, bool]]:
    """(item, is_last) pairs, looking one item ahead."""
    iterator = iter(items)
    previous = next(iterator, _END)
    while previous is not _END:
        current = next(iterator, _END)
        yield previous, current is _END
        previous = current


_END = object()
