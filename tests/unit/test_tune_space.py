import pytest
import yaml

from rayline.config import ConfigError, validate_config
from rayline.tune.space import apply_params, decode_params, load_search_space, to_tune_space

BASE = validate_config(
    {
        "name": "t",
        "data": {"source": "/x.parquet", "task": "classification", "label": "y", "features": ["a"]},
        "tune": {"search_space": "/s.yaml"},
    }
)


def space_file(tmp_path, entries) -> str:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(entries, sort_keys=False) if not isinstance(entries, str) else entries)
    return str(path)


def test_every_distribution_kind_is_accepted(tmp_path):
    params = load_search_space(
        space_file(
            tmp_path,
            {
                "train.optimizer.lr": {"loguniform": [1e-4, 1e-2]},
                "model.dropout": {"uniform": [0.0, 0.5]},
                "train.batch_size": {"randint": [16, 65]},
                "train.optimizer.weight_decay": {"quniform": [0.0, 0.01, 0.001]},
                "model.hidden_sizes": {"choice": [[64], [128, 64]]},
                "train.seed": {"grid": [0, 1]},
            },
        ),
        BASE,
    )
    assert [p.kind for p in params] == ["loguniform", "uniform", "randint", "quniform", "choice", "grid"]
    space = to_tune_space(params, "random")
    assert set(space) == {p.path for p in params}


@pytest.mark.parametrize(
    ("entries", "fragment"),
    [
        ({"train.optimizer.rate": {"uniform": [0.1, 0.2]}}, "train.optimizer.rate is not a config field"),
        ({"data.label": {"choice": ["a"]}}, "only model.* and train.* fields"),
        ({"train.num_workers": {"choice": [1, 2]}}, "cannot be searched"),
        ({"train.epochs": {"choice": [1, 2]}}, "max_t sets the epoch budget"),
        ({"train.optimizer": {"choice": [1]}}, "is a section; name one of its fields"),
        ({"train.seed.x": {"choice": [1]}}, "train.seed is a value, not a section"),
        ({"train.optimizer.lr": {"uniform": [0.2, 0.1]}}, "needs low < high"),
        ({"train.optimizer.lr": {"loguniform": [0.0, 0.1]}}, "loguniform needs low > 0"),
        ({"train.optimizer.lr": {"uniform": [0.1]}}, "takes [low, high] as numbers"),
        ({"train.batch_size": {"randint": [1.5, 4]}}, "randint takes integers"),
        ({"train.optimizer.lr": {"quniform": [0.0, 0.1, 0.5]}}, "0 < q <= high - low"),
        ({"train.optimizer.lr": {"normal": [0, 1]}}, "expected one of {choice, grid"),
        ({"train.optimizer.lr": 0.1}, "expected one of"),
        ({"model.dropout": {"uniform": [0.5, 1.5]}}, "the value 1.5 is not valid for this pipeline"),
        ({"train.optimizer.name": {"choice": ["adam", "lion"]}}, "the value 'lion' is not valid"),
        ({"train.batch_size": {"choice": []}}, "takes a non-empty list"),
    ],
)
def test_bad_entries_are_rejected_naming_the_entry(tmp_path, entries, fragment):
    path = space_file(tmp_path, entries)
    with pytest.raises(ConfigError) as err:
        load_search_space(path, BASE)
    assert f"{path}: {next(iter(entries))}" in str(err.value)
    assert fragment in str(err.value)


def test_empty_and_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match="search space is empty"):
        load_search_space(space_file(tmp_path, "{}"), BASE)
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_search_space(space_file(tmp_path, "a: [1"), BASE)
    with pytest.raises(ConfigError, match="no such file"):
        load_search_space(str(tmp_path / "missing.yaml"), BASE)


def test_searchers_reject_spaces_they_cannot_search(tmp_path):
    grid = load_search_space(space_file(tmp_path, {"train.seed": {"grid": [0, 1]}}), BASE)
    with pytest.raises(ConfigError, match="need tune.searcher: grid or random"):
        to_tune_space(grid, "optuna")
    sampled = load_search_space(space_file(tmp_path, {"model.dropout": {"uniform": [0.0, 0.5]}}), BASE)
    with pytest.raises(ConfigError, match="grid or choice entries only"):
        to_tune_space(sampled, "grid")


def test_list_choices_travel_as_json_and_come_back(tmp_path):
    params = load_search_space(space_file(tmp_path, {"model.hidden_sizes": {"choice": [[8], [16, 8]]}}), BASE)
    domain = to_tune_space(params, "optuna")["model.hidden_sizes"]
    assert domain.categories == ["[8]", "[16, 8]"]
    cfg = apply_params(BASE, decode_params({"model.hidden_sizes": "[16, 8]"}))
    assert cfg.model.hidden_sizes == [16, 8]
