"""Batch prediction with missing values, from a real checkpoint on disk (no Ray): the same fill as the
preprocessor, a null prediction for drop_row rows, embeddings loaded back from the state dict."""

import numpy as np
import pandas as pd
import pytest
import torch

from rayline.checkpoint import load_checkpoint, save_checkpoint
from rayline.config import validate_config
from rayline.data import CategoricalStat, DataError, NumericStat, Preprocessor
from rayline.models import build_model
from rayline.predict import BatchPredictor

PRE = Preprocessor(
    "classification",
    "y",
    [
        NumericStat("age", 40.0, 10.0, "median", 38.0, indicator=True),
        NumericStat("height", 170.0, 9.0, "drop_row"),
        NumericStat("weight", 70.0, 8.0, "error"),
        CategoricalStat(
            "city", [f"c{i}" for i in range(20)], "category", other=True, missing_slot=True, embedding_dim=3
        ),
    ],
    ["no", "yes"],
    None,
    None,
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    features = [
        {"name": "age"},
        {"name": "height"},
        {"name": "weight"},
        {"name": "city", "kind": "categorical"},
    ]
    config = validate_config(
        {"name": "gaps", "data": {"source": "unused.csv", "task": "classification", "label": "y", "features": features}}
    )
    torch.manual_seed(0)
    model = build_model(config.model, **PRE.model_shape())
    directory = tmp_path_factory.mktemp("ckpt") / "checkpoint"
    metrics = {"epoch": 0, "val_loss": 1.0}
    save_checkpoint(
        directory,
        model_state=model.state_dict(),
        optimizer_state={},
        epoch=0,
        metrics=metrics,
        history=[metrics],
        preprocessor=PRE,
        config=config,
    )
    return directory


ROWS = pd.DataFrame(
    {
        "age": [30.0, None, 50.0, None],
        "height": [180.0, 160.0, None, 175.0],
        "weight": [60.0, 80.0, 70.0, 65.0],
        "city": ["c1", None, "c2", "elsewhere"],
    }
)


def test_rows_are_predicted_with_the_preprocessors_fill_and_drop_row_rows_get_null(checkpoint):
    out = BatchPredictor(str(checkpoint))(ROWS)
    assert len(out) == len(ROWS)
    assert out["prediction"].isna().tolist() == [False, False, True, False]
    assert out.loc[2, ["probability_no", "probability_yes"]].isna().all()
    # The same numbers as the checkpoint's model on the preprocessor's inputs for the kept rows.
    loaded = load_checkpoint(checkpoint)
    kept = ROWS.iloc[[0, 1, 3]]
    with torch.inference_mode():
        logits = loaded.model(torch.from_numpy(PRE.transform_features(kept))).numpy()
    expected = PRE.decode(logits)
    np.testing.assert_allclose(out.loc[[0, 1, 3], "probability_yes"], [d["probabilities"]["yes"] for d in expected])


def test_a_missing_value_under_rule_error_fails_the_batch_naming_the_feature(checkpoint):
    rows = ROWS.assign(weight=[60.0, None, 70.0, 65.0])
    with pytest.raises(DataError, match=r"feature column 'weight': row 1 is missing and the feature's missing rule"):
        BatchPredictor(str(checkpoint))(rows)
