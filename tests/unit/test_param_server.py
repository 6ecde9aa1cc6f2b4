"""Parameter-server shards without Ray: how parameters are split, and what a shard does with each gradient in
sync, async and bounded mode; and the settings refused before anything starts."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines import digits_config
from rayline.config import OptimizerConfig, ParameterServerConfig, TrainConfig
from rayline.pipeline import format_epoch, parameter_server_note
from rayline.train.driver import TrainOutcome
from rayline.train.param_server import INLINE_BYTES, INLINE_SHARD_BYTES, Layout, ShardCore, split_by_size

SGD = OptimizerConfig(name="sgd", lr=0.1, momentum=0.9, weight_decay=0.01)


def core(mode: str = "async", workers: int = 2, max_staleness: int | None = None, **params) -> ShardCore:
    server = ParameterServerConfig(mode=mode, max_staleness=max_staleness)
    arrays = params or {"w": np.ones((2, 3), np.float32), "b": np.zeros(3, np.float32)}
    return ShardCore(arrays, SGD, server, workers)


def grads(value: float) -> dict[str, np.ndarray]:
    return {"w": np.full((2, 3), value, np.float32), "b": np.full(3, value, np.float32)}


def test_split_balances_shards_by_size_and_keeps_model_order():
    sizes = {"embed": 1000, "l1.w": 600, "l1.b": 10, "l2.w": 500, "l2.b": 10, "head": 90}
    parts = split_by_size(sizes, 2)
    assert sorted(n for p in parts for n in p) == sorted(sizes), "every parameter on exactly one shard"
    loads = [sum(sizes[n] for n in part) for part in parts]
    assert max(loads) - min(loads) <= 100
    for part in parts:
        assert part == [n for n in sizes if n in part], "model order within a shard"
    assert split_by_size(sizes, 2) == parts, "deterministic"
    assert split_by_size(sizes, 1) == [list(sizes)]


def test_more_shards_than_parameters_leaves_some_empty():
    assert split_by_size({"a": 5, "b": 3}, 3) == [["a"], ["b"], []]


def test_sharded_sgd_steps_like_torch_sgd_on_the_whole_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    reference = torch.optim.SGD(model.parameters(), lr=SGD.lr, momentum=SGD.momentum, weight_decay=SGD.weight_decay)
    named = dict(model.named_parameters())
    parts = split_by_size({n: p.numel() for n, p in named.items()}, 2)
    server = ParameterServerConfig(mode="sync")
    shards = [ShardCore({n: named[n].detach().numpy().copy() for n in part}, SGD, server, 1) for part in parts]
    for step in range(3):
        x, y = torch.randn(5, 4), torch.randint(0, 3, (5,))
        torch.nn.functional.cross_entropy(model(x), y).backward()
        for shard, part in zip(shards, parts, strict=True):
            assert shard.receive(0, step, {n: named[n].grad.numpy().copy() for n in part}, SGD.lr) == "applied"
        reference.step()
        reference.zero_grad()
    served = {n: a for shard in shards for n, a in shard.arrays().items()}
    for name, p in named.items():
        np.testing.assert_allclose(served[name], p.detach().numpy(), atol=1e-6)


def test_sync_waits_for_every_worker_and_applies_their_mean():
    shard, plain = core("sync", workers=2), core("sync", workers=1)
    assert shard.receive(1, 0, grads(3.0), 0.1) == "waiting"
    assert shard.version == 0, "nothing applied before the last worker's gradient"
    assert shard.receive(0, 0, grads(1.0), 0.1) == "applied"
    plain.receive(0, 0, grads(2.0), 0.1)
    np.testing.assert_allclose(shard.arrays()["w"], plain.arrays()["w"])
    assert (shard.version, dict(shard.stats.staleness)) == (1, {0: 2})


def test_sync_refuses_a_gradient_of_another_version():
    shard = core("sync", workers=1)
    shard.receive(0, 0, grads(1.0), 0.1)
    with pytest.raises(AssertionError, match="pushed version 0 at 1"):
        shard.receive(0, 0, grads(1.0), 0.1)


def test_async_applies_every_gradient_and_counts_its_staleness():
    shard = core("async")
    outcomes = [shard.receive(w, v, grads(1.0), 0.1) for w, v in [(0, 0), (1, 0), (0, 1), (1, 0)]]
    assert outcomes == ["applied"] * 4
    assert shard.version == 4
    assert dict(shard.stats.staleness) == {0: 1, 1: 2, 3: 1}
    assert shard.stats.refused == 0


def test_bounded_refuses_gradients_staler_than_max_staleness():
    shard = core("bounded", max_staleness=1)
    assert [shard.receive(0, 0, grads(1.0), 0.1) for _ in range(3)] == ["applied", "applied", "refused"]
    before = shard.arrays()["w"].copy()
    assert shard.receive(1, 0, grads(100.0), 0.1) == "refused"
    np.testing.assert_array_equal(shard.arrays()["w"], before)
    assert (shard.version, dict(shard.stats.staleness), shard.stats.refused) == (2, {0: 1, 1: 1}, 2)


def test_a_shard_rebuilt_from_its_state_continues_as_if_never_stopped():
    first, twin = core("async"), core("async")
    for shard in (first, twin):
        shard.receive(0, 0, grads(1.0), 0.1)
    resumed = ShardCore(first.arrays(), SGD, ParameterServerConfig(mode="async"), 2, first.state_dict())
    for shard in (twin, resumed):
        shard.receive(0, 0, grads(2.0), 0.1)  # momentum from the first step carries over
    np.testing.assert_allclose(resumed.arrays()["w"], twin.arrays()["w"], atol=1e-7)
    assert resumed.version == twin.version == 2
    assert resumed.stats == twin.stats


@pytest.mark.parametrize(
    ("train", "message"),
    [
        (
            {"strategy": "parameter_server", "compression": {"kind": "fp16"}},
            "train.compression.kind 'fp16' compresses ddp's gradient all-reduce, but parameter_server",
        ),
        ({"strategy": "ddp", "parameter_server": {"shards": 2}}, "train.parameter_server is only read by strategy"),
        (
            {"strategy": "parameter_server", "parameter_server": {"mode": "async", "max_staleness": 2}},
            "max_staleness is only read by mode 'bounded', not 'async'",
        ),
        ({"strategy": "parameter_server", "parameter_server": {"mode": "bounded"}}, "'bounded' needs"),
        ({"strategy": "parameter_server", "grad_accumulation_steps": 2}, "train.grad_accumulation_steps does not"),
        ({"strategy": "parameter_server", "use_gpu": True}, "train.use_gpu does not apply"),
        ({"strategy": "parameter_server", "mesh": [1, 2]}, "train.mesh is only read by strategy 'hybrid'"),
    ],
)
def test_settings_that_do_not_apply_are_refused_naming_the_setting(train, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        TrainConfig.model_validate(train)


def test_default_server_is_one_sync_shard():
    train = TrainConfig(strategy="parameter_server")
    assert (train.server.shards, train.server.mode, train.data_parallel_size) == (1, "sync", train.num_workers)


def test_the_progress_line_and_the_run_record_show_staleness():
    last = {
        "epoch": 1,
        "train_loss": 0.5,
        "samples_per_s": 100.0,
        "ps_applied": 9.0,
        "ps_refused": 2.0,
        "ps_staleness_mean": 0.75,
        "ps_staleness_max": 2.0,
        "ps_staleness_counts": [4, 3, 2],
        "ps_pushes_by_worker": [8, 3],
    }
    assert "staleness mean 0.75 max 2 (2 refused)  pushes by worker 8/3" in format_epoch(last, 3)
    server = {"shards": 2, "mode": "bounded", "max_staleness": 2}
    cfg = digits_config(Path("/tmp/unused"), train={"strategy": "parameter_server", "parameter_server": server})
    note = parameter_server_note(TrainOutcome(Path("/tmp/unused"), {}, "", last), cfg)
    assert note["staleness_histogram"] == {"0": 4, "1": 3, "2": 2}
    assert (note["applied"], note["refused"], note["staleness_max"], note["mode"]) == (9, 2, 2, "bounded")
    assert note["pushes_by_worker"] == [8, 3]


@pytest.mark.parametrize("elements", [3, 25_000, 32_768 + 5_000, 400_000])
def test_a_small_shards_gradient_and_parameters_travel_in_pieces_ray_sends_inline(elements):
    """A shard's vector is cut into pieces each under Ray's inline limit (with its serialization header), and the
    pieces put back together give every array, shape and value again: e.g. the digits CNN's 131 KB layer."""
    rng = np.random.default_rng(0)
    arrays = {"w": rng.normal(size=(elements // 4, 4)).astype(np.float32), "b": rng.normal(size=elements % 4 + 1)}
    layout = Layout.of(arrays)
    parts = layout.split(layout.pack(arrays))
    assert len(parts) == layout.parts, "as many pieces as the worker asks the call to return"
    if layout.size * 4 > INLINE_BYTES:
        assert len(parts) > 1, "a vector over the inline limit is cut"
    assert all(len(pickle.dumps(part, protocol=5)) <= INLINE_BYTES for part in parts)
    back = layout.unpack(Layout.join(parts))
    assert back.keys() == arrays.keys()
    for name, array in arrays.items():
        assert back[name].shape == array.shape and back[name].dtype == np.float32
        np.testing.assert_array_equal(back[name], array.astype(np.float32))


def test_a_large_shard_travels_as_one_vector_through_the_object_store():
    arrays = {"w": np.ones(INLINE_SHARD_BYTES // 4 + 1, np.float32)}
    layout = Layout.of(arrays)
    assert not layout.inline and layout.parts == 1
    assert len(layout.split(layout.pack(arrays))) == 1
