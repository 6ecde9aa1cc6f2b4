"""Step helpers that need no process group."""

import torch

from rayline.train.step import make_loss_fn, pad_rows


def test_pad_rows_keeps_the_shape_of_a_full_batch():
    padded = pad_rows(torch.ones(3, 2), 5)
    assert padded.shape == (5, 2)
    assert padded[3:].abs().sum() == 0
    assert pad_rows(torch.ones(5), 5).shape == (5,)


def test_regression_loss_reads_one_output_column():
    loss = make_loss_fn(classification=False)
    assert float(loss(torch.tensor([[1.0], [3.0]]), torch.tensor([1.0, 1.0]))) == 2.0
