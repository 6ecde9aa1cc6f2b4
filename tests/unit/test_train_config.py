"""Parallel-training config: what each strategy needs, and impossible combinations refused at load time."""

from pathlib import Path

import pytest
import yaml

from rayline.config import ConfigError, load_config, validate_config

TRANSFORMER = {"kind": "transformer", "token_size": 8, "d_model": 64, "n_heads": 4, "n_layers": 2, "ffn_size": 128}


def config(train: dict, model: dict | None = None) -> dict:
    return {
        "name": "t",
        "data": {
            "source": "x.parquet",
            "task": "classification",
            "label": "y",
            "features": [f"f{i}" for i in range(64)],
        },
        "model": model if model is not None else TRANSFORMER,
        "train": train,
    }


def load(tmp_path: Path, train: dict, model: dict | None = None):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(config(train, model)))
    return load_config(path)


def test_defaults_keep_the_ddp_slice_unchanged(tmp_path):
    cfg = load(tmp_path, {}, model={"kind": "mlp"})
    train = cfg.train
    assert (train.strategy, train.precision, train.grad_accumulation_steps, train.grad_clip_norm) == (
        "ddp",
        "fp32",
        1,
        None,
    )
    assert (train.data_parallel_size, train.model_parallel_size, train.model_parallelism) == (2, 1, None)


@pytest.mark.parametrize(
    ("train", "sizes"),
    [
        ({"strategy": "fsdp", "num_workers": 4}, (4, 1, None)),
        ({"strategy": "tensor"}, (1, 2, "tensor")),
        ({"strategy": "pipeline"}, (1, 2, "pipeline")),
        ({"strategy": "hybrid", "num_workers": 4, "mesh": [2, 2]}, (2, 2, "tensor")),
        ({"strategy": "hybrid", "hybrid": "fsdp+pipeline", "num_workers": 4, "mesh": [2, 2]}, (2, 2, "pipeline")),
    ],
)
def test_each_strategy_lays_the_workers_out(tmp_path, train, sizes):
    t = load(tmp_path, train).train
    assert (t.data_parallel_size, t.model_parallel_size, t.model_parallelism) == sizes


def test_mixed_precision_accumulation_and_clipping_parse(tmp_path):
    t = load(tmp_path, {"precision": "bf16", "grad_accumulation_steps": 4, "grad_clip_norm": 0.5}).train
    assert (t.precision, t.grad_accumulation_steps, t.grad_clip_norm) == ("bf16", 4, 0.5)


@pytest.mark.parametrize(
    ("train", "model", "message"),
    [
        ({"strategy": "hybrid", "num_workers": 4, "mesh": [2, 3]}, None, r"train.mesh \[2, 3\] needs 6 workers.*is 4"),
        ({"strategy": "hybrid", "num_workers": 4}, None, r"'hybrid' needs train.mesh"),
        ({"strategy": "fsdp", "mesh": [1, 2]}, None, r"train.mesh is only read by strategy 'hybrid'"),
        ({"strategy": "pipeline", "num_workers": 3}, None, r"3 stages but model.n_layers is 2"),
        (
            {"strategy": "hybrid", "hybrid": "fsdp+pipeline", "num_workers": 8, "mesh": [2, 4]},
            None,
            r"4 stages but model.n_layers is 2",
        ),
        ({"strategy": "pipeline", "batch_size": 30}, None, r"microbatches 4 must divide train.batch_size 30"),
        (
            {"strategy": "pipeline", "pipeline": {"schedule": "1f1b", "microbatches": 1}, "batch_size": 8},
            None,
            r"'1f1b' needs train.pipeline.microbatches >= the 2 stages",
        ),
        ({"strategy": "tensor", "num_workers": 3}, None, r"splits model.n_heads 4 across 3 workers"),
        ({"strategy": "tensor"}, {**TRANSFORMER, "ffn_size": 127}, r"splits model.ffn_size 127 across 2 workers"),
        ({"strategy": "tensor"}, {"kind": "cnn", "image_shape": [1, 8, 8]}, r"model.kind is 'cnn'"),
        ({"strategy": "pipeline"}, {"kind": "mlp"}, r"splits transformer layers, but model.kind is 'mlp'"),
        ({"strategy": "sharded"}, None, r"train.strategy: Input should be 'ddp', 'fsdp'"),
        ({"precision": "fp16"}, None, r"train.precision: Input should be 'fp32' or 'bf16'"),
        ({"grad_accumulation_steps": 0}, None, r"train.grad_accumulation_steps: Input should be greater than 0"),
        ({"grad_clip_norm": 0}, None, r"train.grad_clip_norm: Input should be greater than 0"),
        ({}, {**TRANSFORMER, "n_heads": 3}, r"model.n_heads 3 must divide model.d_model 64"),
    ],
)
def test_impossible_layouts_are_refused_before_ray_starts(tmp_path, train, model, message):
    with pytest.raises(ConfigError, match=message):
        load(tmp_path, train, model)


def test_the_message_names_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"p.yaml: 1 invalid field"):
        load(tmp_path, {"strategy": "pipeline", "num_workers": 3})


def test_fsdp_and_ddp_take_any_model():
    for kind in ({"kind": "mlp"}, {"kind": "cnn", "image_shape": [1, 8, 8]}):
        assert validate_config(config({"strategy": "fsdp"}, kind)).train.strategy == "fsdp"
