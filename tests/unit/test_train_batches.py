"""Where a rank's batches come from: its replica's range of a prepared split's Parquet files, in memory or
streamed in shuffled windows, and the one-batch look-ahead; or, for parameter-server workers that share the split,
units of it claimed by whichever worker is ready."""

import itertools

import numpy as np
import pytest
import torch

from rayline.data import prepared
from rayline.data.prepared import SplitFiles, write_split_file
from rayline.train.batches import ShardReader, flag_last
from rayline.train.shared_batches import SharedReader, UnitCounter


@pytest.fixture
def split(tmp_path, monkeypatch) -> SplitFiles:
    """103 rows (row i has x = i, y = i) in three files of row groups of 10 rows."""
    monkeypatch.setattr(prepared, "ROW_GROUP_BYTES", 12 * 10)  # 10 rows of one float32 input and an int64 label
    paths, groups = [], []
    for name, rows in (("a", range(0, 45)), ("b", range(45, 80)), ("c", range(80, 103))):
        values = np.asarray(rows)
        path = f"parts-x/train/{name}.parquet"
        groups.append(write_split_file(values[:, None].astype(np.float32), values, str(tmp_path), path))
        paths.append(path)
    return SplitFiles(str(tmp_path), paths, groups, num_inputs=1)


def reader(split: SplitFiles, *, dp_rank=0, dp_size=1, cache_bytes=2**20, window_rows=25) -> ShardReader:
    return ShardReader(
        split,
        dp_rank=dp_rank,
        dp_size=dp_size,
        cache_bytes=cache_bytes,
        window_bytes=window_rows * split.row_bytes,
        y_dtype=torch.int64,
        device=torch.device("cpu"),
    )


def rows_of(batches) -> list[int]:
    rows = []
    for b in batches:
        assert b["x"][:, 0].long().tolist() == b["y"].tolist(), "inputs stay with their labels"
        rows += b["y"].tolist()
    return rows


def test_the_files_hold_the_row_groups_they_report(split):
    assert split.row_groups == [[10, 10, 10, 10, 5], [10, 10, 10, 5], [10, 10, 3]]
    assert split.rows == 103
    assert [int(v) for _, y in split.iter_arrays(batch_size=7) for v in y] == list(range(103))


@pytest.mark.parametrize("cache_bytes", [2**20, 0], ids=["in memory", "streamed"])
def test_replicas_get_equal_disjoint_ranges(split, cache_bytes):
    readers = [reader(split, dp_rank=r, dp_size=3, cache_bytes=cache_bytes) for r in range(3)]
    shares = [rows_of(r.batches(8, seed=5)) for r in readers]
    assert [len(s) for s in shares] == [34, 34, 34], "equal rows, so equal steps: the collectives pair up"
    together = set().union(*map(set, shares))
    assert len(together) == 102 and together <= set(range(103)), "disjoint; one row past the last whole range left out"


@pytest.mark.parametrize("cache_bytes", [2**20, 0], ids=["in memory", "streamed"])
def test_every_epoch_has_every_row_once_in_its_own_order(split, cache_bytes):
    data = reader(split, cache_bytes=cache_bytes)
    epochs = [rows_of(data.batches(8, seed=epoch)) for epoch in range(3)]
    assert all(sorted(e) == list(range(103)) for e in epochs)
    assert len({tuple(e) for e in epochs}) == 3, "each epoch's seed gives its own order"
    assert rows_of(data.batches(8, seed=1)) == epochs[1], "same seed, same order"


@pytest.mark.parametrize("cache_bytes", [2**20, 0], ids=["in memory", "streamed"])
def test_ranks_of_one_replica_read_identical_batches(split, cache_bytes):
    first, second = (reader(split, dp_rank=1, dp_size=2, cache_bytes=cache_bytes) for _ in range(2))
    for epoch in range(2):
        a, b = list(first.batches(8, seed=epoch)), list(second.batches(8, seed=epoch))
        assert [t["y"].tolist() for t in a] == [t["y"].tolist() for t in b]


@pytest.mark.parametrize("cache_bytes", [2**20, 0], ids=["in memory", "streamed"])
def test_validation_keeps_the_file_order(split, cache_bytes):
    assert rows_of(reader(split, cache_bytes=cache_bytes).batches(8, seed=None)) == list(range(103))
    assert rows_of(reader(split, dp_rank=1, dp_size=2, cache_bytes=cache_bytes).batches(8, seed=None)) == list(
        range(51, 102)
    )


def test_a_small_range_is_read_once(split, monkeypatch):
    data = reader(split)
    reads = []
    original = data.files.read
    monkeypatch.setattr(data.files, "read", lambda f, g: reads.append((f, g)) or original(f, g))
    for epoch in range(3):
        rows_of(data.batches(8, seed=epoch))
    assert len(reads) == 12, "each row group read once, in the first epoch"


def test_a_streamed_range_is_read_every_epoch_a_window_at_a_time(split, monkeypatch):
    data = reader(split, cache_bytes=0, window_rows=25)
    assert not data.in_memory
    reads = []
    original = data.files.read
    monkeypatch.setattr(data.files, "read", lambda f, g: reads.append((f, g)) or original(f, g))
    batches = list(data.batches(8, seed=0))
    assert len(reads) == 12 and [len(b["y"]) for b in batches] == [8] * 12 + [7], "full batches, a short last one"
    rows_of(data.batches(8, seed=1))
    assert len(reads) == 24


def test_streamed_windows_mix_rows_of_several_row_groups(split):
    first = rows_of(reader(split, cache_bytes=0, window_rows=30).batches(30, seed=0))[:30]
    groups = {row // 10 for row in first if row < 100}
    assert len(groups) >= 3, "a window's rows come from several row groups, shuffled together"
    assert first != sorted(first)


def test_drop_last_leaves_out_the_short_batch(split):
    for cache_bytes in (2**20, 0):
        sizes = [len(b["y"]) for b in reader(split, cache_bytes=cache_bytes).batches(10, seed=0, drop_last=True)]
        assert sizes == [10] * 10


def test_flag_last_looks_one_ahead():
    assert list(flag_last("abc")) == [("a", False), ("b", False), ("c", True)]
    assert list(flag_last([])) == []


def test_windows_smaller_than_a_batch_still_give_full_batches(split):
    data = reader(split, cache_bytes=0, window_rows=3)
    batches = list(data.batches(8, seed=0))
    assert [len(b["y"]) for b in batches] == [8] * 12 + [7]
    assert sorted(rows_of(batches)) == list(range(103))


@pytest.mark.parametrize("cache_bytes", [2**20, 0], ids=["in memory", "streamed"])
def test_workers_sharing_a_split_train_each_row_once_and_the_faster_takes_more(split, cache_bytes):
    """Streamed, a unit is a window (of one row group here); in memory, UNIT_BATCHES batches."""
    counter = UnitCounter()
    fast, slow = (SharedReader(reader(split, cache_bytes=cache_bytes, window_rows=10), counter.claim) for _ in "ab")
    for epoch in range(2):
        taken: dict[str, list[int]] = {"fast": [], "slow": []}
        going = {"fast": fast.batches(2, seed=epoch), "slow": slow.batches(2, seed=epoch)}
        for turn in itertools.count():  # the fast worker asks for three batches for each of the slow one's
            worker = "slow" if turn % 4 == 3 else "fast"
            if worker in going and (batch := next(going[worker], None)) is not None:
                taken[worker] += rows_of([batch])
            elif worker in going:
                del going[worker]
            if not going:
                break
        assert sorted(taken["fast"] + taken["slow"]) == list(range(103)), "every row once, by one worker"
        assert len(taken["fast"]) > 1.5 * len(taken["slow"]), taken  # 3:1 pace, less the units claimed ahead
        assert fast.progress(0, 1) > 0.5


def test_a_shared_split_is_shuffled_anew_each_epoch(split):
    counter = UnitCounter()
    shared = SharedReader(reader(split), counter.claim)
    first, second = rows_of(shared.batches(8, seed=1)), rows_of(shared.batches(8, seed=2))
    assert sorted(first) == sorted(second) == list(range(103))
    assert first != second and first != list(range(103))
