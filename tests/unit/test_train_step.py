"""The loop's pieces that need no process group: batch sharing between replicas, look-ahead, padding."""

import torch

from rayline.train.loop import flag_last
from rayline.train.step import pad_rows, replica_batches


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


def test_pad_rows_keeps_the_shape_of_a_full_batch():
    padded = pad_rows(torch.ones(3, 2), 5)
    assert padded.shape == (5, 2)
    assert padded[3:].abs().sum() == 0
    assert pad_rows(torch.ones(5), 5).shape == (5,)
