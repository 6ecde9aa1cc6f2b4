import copy

import pytest
import torch

from rayline.config import ModelConfig
from rayline.models import Transformer, build_model
from rayline.train.strategies import split_stage

CFG = ModelConfig(kind="transformer", token_size=8, d_model=32, n_heads=4, n_layers=3, ffn_size=64, dropout=0.0)


def test_transformer_reads_rows_as_tokens():
    model = build_model(CFG, num_inputs=64, num_outputs=10)
    assert isinstance(model, Transformer)
    assert model(torch.randn(5, 64)).shape == (5, 10)
    assert model.embed.pos.shape == (8, 32), "8 row-tokens of 8 pixels"
    assert len(model.layers) == 3


def test_one_token_per_tabular_feature():
    cfg = CFG.model_copy(update={"token_size": 1})
    model = build_model(cfg, num_inputs=7, num_outputs=1)
    assert model(torch.randn(3, 7)).shape == (3, 1)
    assert model.embed.pos.shape == (7, 32)


def test_tokens_must_tile_the_inputs():
    with pytest.raises(ValueError, match=r"token_size 8 does not divide the 63 inputs"):
        build_model(CFG, num_inputs=63, num_outputs=10)


@pytest.mark.parametrize("num_stages", [1, 2, 3])
def test_pipeline_stages_compose_to_the_whole_model(num_stages):
    torch.manual_seed(0)
    whole = build_model(CFG, num_inputs=64, num_outputs=10).eval()
    stages = [split_stage(copy.deepcopy(whole), stage=s, num_stages=num_stages) for s in range(num_stages)]
    x = torch.randn(4, 64)
    h = x
    for stage in stages:
        h = stage(h)
    assert torch.allclose(h, whole(x), atol=1e-6)
    names = [set(stage.state_dict()) for stage in stages]
    assert set().union(*names) == set(whole.state_dict()), "stages keep the whole model's parameter names"
    assert sum(len(n) for n in names) == len(whole.state_dict()), "and share none"
    assert (stages[0].embed is not None, stages[-1].head is not None) == (True, True)


def test_attention_works_on_a_share_of_the_heads():
    """Under tensor parallelism a rank's q/k/v projections output only its heads; the view must follow."""
    model = build_model(CFG, num_inputs=64, num_outputs=10)
    attention = model.layers["0"].attention
    half = torch.nn.Linear(32, 16)
    attention.wq, attention.wk, attention.wv = half, copy.deepcopy(half), copy.deepcopy(half)
    attention.wo = torch.nn.Linear(16, 32)
    assert attention(torch.randn(2, 8, 32)).shape == (2, 8, 32)


def test_residual_stream_stays_fp32_under_bf16_autocast():
    model = build_model(CFG, num_inputs=64, num_outputs=10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = model.layers["0"](model.embed(torch.randn(2, 64)))
        logits = model(torch.randn(2, 64))
    assert hidden.dtype == torch.float32, "pipeline stages hand fp32 activations on"
    assert logits.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in model.parameters())
