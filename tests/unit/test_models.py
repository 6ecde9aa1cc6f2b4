import pytest
import torch

from rayline.config import ModelConfig
from rayline.models import MLP, ConvNet, build_model


def test_mlp_maps_features_to_outputs():
    model = build_model(ModelConfig(kind="mlp", hidden_sizes=[16, 8]), num_inputs=5, num_outputs=3)
    assert isinstance(model, MLP)
    assert model(torch.randn(7, 5)).shape == (7, 3)


def test_cnn_reads_flat_rows_as_images():
    cfg = ModelConfig(kind="cnn", image_shape=(1, 8, 8), channels=[4, 8], hidden_sizes=[16])
    model = build_model(cfg, num_inputs=64, num_outputs=10)
    assert isinstance(model, ConvNet)
    assert model(torch.randn(2, 64)).shape == (2, 10)
    assert any(isinstance(m, torch.nn.Conv2d) for m in model.modules())


def test_cnn_shape_must_match_inputs():
    cfg = ModelConfig(kind="cnn", image_shape=(1, 8, 8))
    with pytest.raises(ValueError, match=r"image_shape \[1, 8, 8\] holds 64 values.*63 inputs"):
        build_model(cfg, num_inputs=63, num_outputs=10)


def test_training_step_reduces_loss():
    torch.manual_seed(0)
    model = build_model(ModelConfig(hidden_sizes=[32], dropout=0.0), num_inputs=4, num_outputs=2)
    x = torch.randn(64, 4)
    y = (x[:, 0] > 0).long()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.5
