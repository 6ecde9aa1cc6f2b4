"""Learned embeddings in build_model, without Ray: forward, backward, state-dict round trip, refusals."""

import io

import numpy as np
import pandas as pd
import pytest
import torch

from rayline.config import ModelConfig
from rayline.data import CategoricalStat, NumericStat, Preprocessor
from rayline.models import MLP, WithEmbeddings, build_model

PRE = Preprocessor(
    "classification",
    "y",
    [
        NumericStat("a", 0.0, 1.0, "median", 0.0, indicator=True),
        CategoricalStat("city", [f"c{i}" for i in range(30)], "category", other=True, embedding_dim=4),
        CategoricalStat("tier", ["lo", "hi"], "category"),
    ],
    ["0", "1", "2"],
    None,
    None,
)
ROWS = pd.DataFrame(
    {"a": [0.5, None, 2.0, -1.0], "city": ["c3", "c29", "nowhere", "c3"], "tier": ["lo", "hi", "hi", None]}
)


def test_the_model_embeds_the_id_column_and_learns_it():
    torch.manual_seed(0)
    model = build_model(ModelConfig(hidden_sizes=[8]), **PRE.model_shape())
    assert isinstance(model, WithEmbeddings)
    table = model.inputs.tables[0]
    assert table.weight.shape == (30 + 1 + 1, 4)  # 30 kept, other, and id 0 (no slot)
    assert model.body.net[0].in_features == (2 + 2) + 4  # dense columns (a, indicator, tier) + the embedding
    x = torch.from_numpy(PRE.transform_features(ROWS))
    loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    # c3 is slot 3 (id 4), c29 slot 29 (id 30), "nowhere" the other slot 30 (id 31).
    assert (table.weight.grad[[4, 30, 31]].abs().sum(dim=1) > 0).all()
    assert table.weight.grad[0].abs().sum() == 0  # the padding row is never trained


def test_the_state_dict_round_trips_into_a_model_built_from_the_same_preprocessor():
    model = build_model(ModelConfig(), **PRE.model_shape()).eval()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    again = build_model(ModelConfig(), **Preprocessor.from_dict(PRE.to_dict()).model_shape()).eval()
    again.load_state_dict(torch.load(buffer, weights_only=True))
    x = torch.from_numpy(PRE.transform_features(ROWS))
    with torch.inference_mode():
        np.testing.assert_array_equal(model(x).numpy(), again(x).numpy())


def test_without_embeddings_the_model_is_the_bare_body_as_before():
    model = build_model(ModelConfig(), num_inputs=5, num_outputs=2)
    assert isinstance(model, MLP)
    assert build_model(ModelConfig(), num_inputs=5, num_outputs=2, embeddings=[]).state_dict().keys() == (
        model.state_dict().keys()
    )


@pytest.mark.parametrize(
    "model_cfg",
    [ModelConfig(kind="cnn", image_shape=(1, 1, 6)), ModelConfig(kind="transformer")],
    ids=["cnn", "transformer"],
)
def test_cnn_and_transformer_refuse_embedded_features_naming_them(model_cfg):
    with pytest.raises(
        ValueError, match=r"\['city'\] are learned embeddings .* encoding: onehot, or use model.kind mlp"
    ):
        build_model(model_cfg, **PRE.model_shape())
