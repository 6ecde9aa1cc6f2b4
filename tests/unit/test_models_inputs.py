"""A model that cannot take the features is refused on the driver, naming the setting and what would fit."""

import pytest

from rayline.config import ConfigError, TuneConfig, check_model_inputs, model_input_problem, validate_config
from rayline.tune.space import Param, check_model_inputs_of_trials


def config(model, features=None, **data):
    raw = {
        "name": "t",
        "data": {"source": "/x.parquet", "task": "classification", "label": "y", **data},
        "model": model,
    }
    if features is not None:
        raw["data"]["features"] = features
    return validate_config(raw)


SIXTY = [f"f{i}" for i in range(60)]


def test_an_image_shape_that_does_not_hold_the_listed_features_is_refused_at_load():
    with pytest.raises(ConfigError) as err:
        config({"kind": "cnn", "image_shape": [1, 8, 8]}, SIXTY)
    message = str(err.value)
    assert "model.image_shape [1, 8, 8] holds 64 values, but the 60 features give 60 inputs per row" in message
    assert "shapes that fit: [1, 6, 10], [1, 5, 12], [1, 4, 15], [1, 3, 20]" in message


def test_a_token_size_that_does_not_divide_the_inputs_is_refused_with_the_sizes_that_fit():
    with pytest.raises(ConfigError, match=r"model.token_size 7 .* 60 inputs .* sizes that fit: 1, 2, 3, 4, 5, 6, 10,"):
        config({"kind": "transformer", "token_size": 7}, SIXTY)


def test_missing_indicators_widen_the_inputs():
    features = [{"name": f"f{i}", "indicator": i < 4} for i in range(60)]
    config({"kind": "cnn", "image_shape": [1, 8, 8]}, features)  # 60 + 4 indicators = 64


def test_auto_and_categorical_features_are_checked_once_their_width_is_known():
    auto = config({"kind": "cnn", "image_shape": [1, 8, 8]})  # features: auto, nothing known yet
    check_model_inputs(auto)
    categorical = config({"kind": "transformer", "token_size": 8}, [{"name": "c", "kind": "categorical"}])
    check_model_inputs(categorical)
    with pytest.raises(ConfigError, match="that the 1 feature \\(after encoding\\) give"):
        check_model_inputs(categorical, 12, "the 1 feature (after encoding)")


def test_a_searched_model_value_that_does_not_fit_is_refused_before_any_trial():
    base = config({"kind": "transformer", "token_size": 4}, [{"name": "c", "kind": "categorical"}])
    base = base.model_copy(update={"tune": TuneConfig(search_space="/s.yaml")})
    check_model_inputs_of_trials(base, [Param("model.token_size", "choice", (2, 4))], 12, "the inputs")
    with pytest.raises(ConfigError, match="model.token_size: the value 5 does not fit"):
        check_model_inputs_of_trials(base, [Param("model.token_size", "choice", (2, 5))], 12, "the inputs")


def test_an_mlp_takes_any_width():
    assert model_input_problem(config({"kind": "mlp"}, SIXTY).model, 61, "x") is None
