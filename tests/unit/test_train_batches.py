"""Where a rank's batches come from: replica shares of a common stream, look-ahead, the in-memory shard cache."""

import torch

from rayline.train.batches import ShardCache, flag_last, replica_batches


def test_replicas_take_turns_in_whole_rounds():
    batches = list(range(7))
    shares = [list(replica_batches(batches, rank, 3, fill_last=False)) for rank in range(3)]
    assert shares == [[(0, True), (3, True)], [(1, True), (4, True)], [(2, True), (5, True)]]


def test_evaluation_fills_the_last_round_with_batches_that_do_not_count():
    shares = [list(replica_batches(range(7), rank, 3, fill_last=True)) for rank in range(3)]
    assert shares[0][-1] == (6, True)
    assert shares[1][-1] == (6, False) and shares[2][-1] == (6, False)
    assert {len(s) for s in shares} == {3}, "every replica runs as many forward passes"


def test_one_replica_takes_everything():
    assert [b for b, _ in replica_batches(range(5), 0, 1, fill_last=False)] == list(range(5))


def test_flag_last_looks_one_ahead():
    assert list(flag_last("abc")) == [("a", False), ("b", False), ("c", True)]
    assert list(flag_last([])) == []


class FakeShard:
    """Stands in for a Ray Data shard: counts how often it is streamed."""

    def __init__(self, rows: int):
        self.x = torch.arange(rows, dtype=torch.float32).unsqueeze(1)
        self.y = torch.arange(rows)
        self.streams = 0

    def iter_torch_batches(self, *, batch_size, dtypes, device, **shuffle):
        self.streams += 1
        self.shuffled = bool(shuffle)
        batch_size = batch_size or len(self.y)  # None: whole blocks, here one
        for start in range(0, len(self.y), batch_size):
            yield {"x": self.x[start : start + batch_size], "y": self.y[start : start + batch_size]}


def rows_of(batches) -> list[int]:
    return [int(v) for b in batches for v in b["y"]]


def cache(shard: FakeShard, limit_bytes: int) -> ShardCache:
    return ShardCache(shard, limit_bytes=limit_bytes, dtypes={}, device=torch.device("cpu"))


def test_a_small_shard_is_streamed_once_then_reshuffled_in_memory():
    shard = FakeShard(10)
    data = cache(shard, limit_bytes=2**20)
    assert rows_of(data.batches(4, seed=0)) == list(range(10))
    second, third = rows_of(data.batches(4, seed=1)), rows_of(data.batches(4, seed=2))
    assert shard.streams == 1, "later epochs read the cached tensors"
    assert sorted(second) == sorted(third) == list(range(10)), "every row once per epoch"
    assert second != third, "each epoch's seed gives its own order"
    assert rows_of(data.batches(4, seed=1)) == second, "same seed, same order on every rank"


def test_validation_keeps_the_order():
    data = cache(FakeShard(10), limit_bytes=2**20)
    list(data.batches(3, seed=None))
    assert rows_of(data.batches(3, seed=None)) == list(range(10))


def test_a_shard_over_the_limit_streams_every_epoch():
    shard = FakeShard(100)
    data = cache(shard, limit_bytes=64)
    for epoch in range(3):
        assert sorted(rows_of(data.batches(8, seed=epoch))) == list(range(100))
    assert shard.streams == 3


def test_a_zero_limit_never_keeps_anything():
    shard = FakeShard(4)
    data = cache(shard, limit_bytes=0)
    list(data.batches(2, seed=0))
    list(data.batches(2, seed=1))
    assert shard.streams == 2


def test_drop_last_leaves_out_a_short_batch_from_memory_too():
    data = cache(FakeShard(10), limit_bytes=2**20)
    assert [len(b["y"]) for b in data.batches(4, seed=0, drop_last=True)] == [4, 4]
    assert [len(b["y"]) for b in data.batches(4, seed=1, drop_last=True)] == [4, 4]


def test_a_shard_of_known_size_that_fits_is_read_whole_and_shuffled_in_memory_from_the_first_epoch():
    shard = FakeShard(10)
    data = ShardCache(shard, limit_bytes=2**20, dtypes={}, device=torch.device("cpu"), size_bytes=160)
    first = rows_of(data.batches(4, seed=0))
    assert sorted(first) == list(range(10)) and first != list(range(10)), "epoch 0 is shuffled like the others"
    assert not shard.shuffled, "no shuffle buffer on the way in"
    assert rows_of(data.batches(4, seed=0)) == first and shard.streams == 1
    assert rows_of(data.batches(4, seed=None)) == list(range(10)), "validation keeps the order"


def test_a_shard_of_known_size_over_the_limit_streams_every_epoch():
    shard = FakeShard(10)
    data = ShardCache(shard, limit_bytes=100, dtypes={}, device=torch.device("cpu"), size_bytes=160)
    assert rows_of(data.batches(4, seed=0)) == list(range(10))
    rows_of(data.batches(4, seed=1))
    assert shard.streams == 2
