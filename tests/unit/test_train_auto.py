"""train.strategy auto without Ray: which strategy a model and a memory budget get, why, and when none fits."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines import digits_pipeline
from rayline.config import ConfigError, validate_config
from rayline.train.auto import GIB, estimate, needs, resolve_auto

SHAPE = {"num_inputs": 64, "num_outputs": 10, "embeddings": []}
TRANSFORMER = {"kind": "transformer", "token_size": 8, "d_model": 64, "n_heads": 4, "n_layers": 2, "ffn_size": 128}
BIG_MLP = {"kind": "mlp", "hidden_sizes": [1024, 1024]}


def config(model: dict, gb: float = 4.0, **train):
    train = {"strategy": "auto", "memory_per_worker_gb": gb, **train}
    return validate_config(digits_pipeline(Path("/tmp/unused"), model=model, train=train))


def budget_between(low: int, high: int) -> float:
    return (low + high) / 2 / GIB


def test_a_model_that_fits_every_worker_is_replicated():
    cfg, choice = resolve_auto(config({"kind": "mlp", "hidden_sizes": [32]}), SHAPE)
    assert (cfg.train.strategy, choice.strategy) == ("ddp", "ddp")
    assert choice.reason.startswith("the whole model fits on every worker: 2,410 parameters")
    assert choice.to_dict()["parameters"] == 2410


def test_a_model_too_big_for_one_worker_is_sharded_with_fsdp():
    probe = config(BIG_MLP)
    found = needs(probe.model, estimate(probe.model, probe.train, SHAPE))
    assert found["fsdp"] < found["ddp"]
    cfg, choice = resolve_auto(config(BIG_MLP, budget_between(found["fsdp"], found["ddp"])), SHAPE)
    assert cfg.train.strategy == "fsdp" and "sharded over the workers" in choice.reason


@pytest.mark.parametrize(("heads", "expected"), [(4, "tensor"), (3, "pipeline")])
def test_large_activations_split_a_transformers_layers(heads, expected):
    model = {**TRANSFORMER, "n_heads": heads, "d_model": 48 if heads == 3 else 64}
    probe = config(model)
    found = needs(probe.model, estimate(probe.model, probe.train, SHAPE))
    split = found["pipeline"]
    assert split < found["fsdp"], "activations dominate: only a layer split brings them down"
    cfg, choice = resolve_auto(config(model, budget_between(split, found["fsdp"])), SHAPE)
    assert cfg.train.strategy == expected, choice.needs_bytes
    assert cfg.train.data_parallel_size == 1


def test_nothing_fits_names_the_setting_and_what_would_help():
    with pytest.raises(ConfigError, match=r"no strategy fits 1 MiB per worker \(train.memory_per_worker_gb\)"):
        resolve_auto(config(BIG_MLP, 1 / 1024), SHAPE)


def test_one_worker_only_considers_the_whole_model():
    probe = config(BIG_MLP, num_workers=1)
    assert list(needs(probe.model, estimate(probe.model, probe.train, SHAPE))) == ["ddp"]


def test_the_choice_is_deterministic_and_other_strategies_are_left_alone():
    cfg = config(TRANSFORMER, 0.002)
    assert resolve_auto(cfg, SHAPE)[1] == resolve_auto(cfg, SHAPE)[1]
    ddp = validate_config(digits_pipeline(Path("/tmp/unused")))
    assert resolve_auto(ddp, SHAPE) == (ddp, None)


def test_sgd_without_momentum_keeps_no_optimizer_state():
    adamw = config({"kind": "mlp", "hidden_sizes": [32]})
    sgd = config({"kind": "mlp", "hidden_sizes": [32]}, optimizer={"name": "sgd", "momentum": 0.0})
    with_moments, plain = (estimate(c.model, c.train, SHAPE).state_bytes for c in (adamw, sgd))
    assert with_moments == 2 * plain, "weights + gradients + two moments vs weights + gradients"


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"tune": {"search_space": "x.yaml"}}, "train.strategy auto is planned for one model"),
        ({"train": {"strategy": "auto", "compression": {"kind": "fp16"}}}, "auto may pick a strategy without"),
    ],
)
def test_auto_is_refused_where_it_cannot_plan(sections, message):
    pipeline = digits_pipeline(Path("/tmp/unused"), **{"train": {"strategy": "auto"}, **sections})
    with pytest.raises(ConfigError, match=message):
        validate_config(pipeline)
