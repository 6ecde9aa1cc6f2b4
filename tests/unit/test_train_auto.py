"""train.strategy auto: ddp when a worker can hold a whole replica, fsdp when it cannot but a shard fits,
tensor or pipeline only for transformers, a clear error when nothing fits; the same inputs, the same plan."""

from __future__ import annotations

import pytest

from pipelines import digits_config
from rayline.config import ConfigError
from rayline.train.auto import RUNTIME_GB, choose_strategy, footprint, needs_gb, resolve_strategy

DIGITS_SHAPE = {"num_inputs": 64, "num_outputs": 10, "embeddings": []}
MLP = {"kind": "mlp", "hidden_sizes": [512, 512]}
TRANSFORMER = {"kind": "transformer", "token_size": 8, "d_model": 64, "n_heads": 4, "n_layers": 2, "ffn_size": 128}


def auto(tmp_path, model: dict, memory_gb: float | None = None, **train):
    return digits_config(
        tmp_path,
        model=model,
        train={"strategy": "auto", "memory_per_worker_gb": memory_gb, "num_workers": 2, **train},
    )


def between(low: float, high: float) -> float:
    assert low < high
    return (low + high) / 2


def test_a_worker_that_holds_a_whole_replica_trains_ddp(tmp_path):
    cfg = auto(tmp_path, MLP)  # this machine's memory, shared by 2 workers
    resolved, choice = resolve_strategy(cfg, DIGITS_SHAPE)
    assert choice.strategy == resolved.train.strategy == "ddp"
    assert "a worker has" in choice.reason and "whole replica" in choice.reason
    assert resolved.train.batch_size == cfg.train.batch_size


def test_fsdp_when_the_configured_memory_cannot_hold_a_replica(tmp_path):
    needs = needs_gb(auto(tmp_path, MLP), footprint(auto(tmp_path, MLP), DIGITS_SHAPE))
    assert needs["fsdp"] < needs["ddp"], "a shard of weights, gradients and Adam state is smaller than a replica"
    cfg = auto(tmp_path, MLP, between(needs["fsdp"], needs["ddp"]))
    resolved, choice = resolve_strategy(cfg, DIGITS_SHAPE)
    assert choice.strategy == resolved.train.strategy == "fsdp"
    assert f"{needs['ddp']:.3f} GB" in choice.reason and "fsdp over 2 workers" in choice.reason
    assert choice.record()["needs_gb"] == needs


def test_tensor_and_pipeline_are_only_for_transformers(tmp_path):
    fp = footprint(auto(tmp_path, TRANSFORMER), DIGITS_SHAPE)
    needs = needs_gb(auto(tmp_path, TRANSFORMER), fp)
    squeezed = between(needs["pipeline"], min(needs["fsdp"], needs["tensor"]))
    resolved, choice = resolve_strategy(auto(tmp_path, TRANSFORMER, squeezed), DIGITS_SHAPE)
    assert choice.strategy == "pipeline", choice
    # One replica takes the rows of both workers' ddp steps, cut into micro-batches that divide them.
    assert resolved.train.batch_size == 2 * 64
    assert resolved.train.batch_size % resolved.train.pipeline.microbatches == 0

    mlp_needs = needs_gb(auto(tmp_path, MLP), footprint(auto(tmp_path, MLP), DIGITS_SHAPE))
    assert set(mlp_needs) == {"ddp", "fsdp"}
    with pytest.raises(ConfigError, match=r"no strategy fits the model \(.* parameters\) in .* GB per worker"):
        resolve_strategy(auto(tmp_path, MLP, between(RUNTIME_GB, mlp_needs["fsdp"])), DIGITS_SHAPE)


# One layer with a 65,536-wide feed-forward: FSDP must gather that layer whole on every worker, tensor parallelism
# splits it; with one layer there is no second pipeline stage.
WIDE_FFN = {**TRANSFORMER, "n_layers": 1, "ffn_size": 65536}


def test_tensor_when_a_layer_is_too_large_to_gather_whole(tmp_path):
    cfg = auto(tmp_path, WIDE_FFN, batch_size=2)
    needs = needs_gb(cfg, footprint(cfg, DIGITS_SHAPE))
    resolved, choice = resolve_strategy(
        auto(tmp_path, WIDE_FFN, between(needs["tensor"], needs["fsdp"]), batch_size=2), DIGITS_SHAPE
    )
    assert choice.strategy == resolved.train.strategy == "tensor"
    assert resolved.train.batch_size == 2 * 2


def test_a_model_that_cannot_be_split_that_way_is_not_given_that_strategy(tmp_path):
    # 3 heads and a 65,535-wide feed-forward do not divide over 2 workers, and 1 layer makes no 2 stages: tensor
    # and pipeline are skipped although their estimates fit.
    odd = {**WIDE_FFN, "d_model": 48, "n_heads": 3, "ffn_size": 65535}
    cfg = auto(tmp_path, odd, batch_size=2)
    needs = needs_gb(cfg, footprint(cfg, DIGITS_SHAPE))
    budget = between(max(needs["tensor"], needs["pipeline"]), needs["fsdp"])
    with pytest.raises(ConfigError, match="no strategy fits"):
        resolve_strategy(auto(tmp_path, odd, budget, batch_size=2), DIGITS_SHAPE)


def test_the_same_inputs_always_give_the_same_plan(tmp_path):
    needs = needs_gb(auto(tmp_path, TRANSFORMER), footprint(auto(tmp_path, TRANSFORMER), DIGITS_SHAPE))
    budget = between(needs["pipeline"], needs["fsdp"])
    choices = [resolve_strategy(auto(tmp_path, TRANSFORMER, budget), DIGITS_SHAPE)[1] for _ in range(3)]
    assert choices[0] == choices[1] == choices[2] and choices[0].strategy == "pipeline"


def test_larger_batches_need_more_memory(tmp_path):
    small, large = (auto(tmp_path, TRANSFORMER, batch_size=b) for b in (16, 256))
    fp = footprint(small, DIGITS_SHAPE)
    assert fp.activations_per_row > fp.block_activations_per_row > 0
    assert needs_gb(large, fp)["ddp"] > needs_gb(small, fp)["ddp"]


def test_a_strategy_written_out_is_left_alone(tmp_path):
    cfg = digits_config(tmp_path, model=MLP, train={"strategy": "fsdp"})
    assert resolve_strategy(cfg, DIGITS_SHAPE) == (cfg, None)


@pytest.mark.parametrize(
    "train, message",
    [
        ({"strategy": "ddp", "memory_per_worker_gb": 4}, "memory_per_worker_gb is only read by strategy 'auto'"),
        ({"strategy": "auto", "compression": {"kind": "fp16"}}, "auto may choose fsdp, tensor or pipeline"),
        ({"strategy": "auto", "memory_per_worker_gb": 0}, "memory_per_worker_gb"),
    ],
)
def test_settings_that_do_not_go_with_auto_are_refused(tmp_path, train, message):
    with pytest.raises(ConfigError, match=message):
        digits_config(tmp_path, model=MLP, train=train)


def test_auto_on_gpu_without_a_visible_gpu_asks_for_the_memory(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this process sees a GPU, so auto sizes workers by it")
    with pytest.raises(ConfigError, match="set train.memory_per_worker_gb"):
        choose_strategy(auto(tmp_path, MLP, use_gpu=True), DIGITS_SHAPE)
