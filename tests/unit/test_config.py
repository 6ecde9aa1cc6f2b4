from pathlib import Path

import pytest
import yaml

from rayline.config import ConfigError, PipelineConfig, apply_override, load_config

MINIMAL = {
    "name": "t",
    "data": {"source": "x.parquet", "task": "classification", "label": "y", "features": ["a", "b"]},
}


def write(tmp_path: Path, raw) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(raw) if not isinstance(raw, str) else raw)
    return path


def test_minimal_config_gets_safe_defaults(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL))
    assert cfg.serve.host == "127.0.0.1"
    assert cfg.train.num_workers == 2
    assert [f.kind for f in cfg.data.features] == ["numeric", "numeric"]
    assert cfg.run_name == "t"


def test_relative_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(write(tmp_path, MINIMAL))
    assert cfg.data.source == str(tmp_path / "x.parquet")
    assert cfg.storage.root == str(tmp_path / ".rayline")


def test_uri_sources_are_left_alone(tmp_path):
    raw = {**MINIMAL, "data": {**MINIMAL["data"], "source": "s3://bucket/data/*.parquet"}}
    assert load_config(write(tmp_path, raw)).data.source == "s3://bucket/data/*.parquet"


def test_config_is_frozen(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL))
    with pytest.raises(Exception, match="frozen"):
        cfg.train.epochs = 3


def test_overrides_set_nested_fields_with_yaml_types(tmp_path):
    cfg = load_config(
        write(tmp_path, MINIMAL),
        ["train.optimizer.lr=0.05", "model.hidden_sizes=[8, 4]", "train.use_gpu=true"],
    )
    assert cfg.train.optimizer.lr == 0.05
    assert cfg.model.hidden_sizes == [8, 4]
    assert cfg.train.use_gpu is True


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.epochs", "expected KEY=VALUE"),
        ("name.sub=1", "name is a value, not a section"),
        ("train.epochs=[1", "not valid YAML"),
    ],
)
def test_bad_overrides_are_explained(override, expected):
    with pytest.raises(ConfigError, match=expected):
        apply_override({"name": "x", "train": {}}, override)


@pytest.mark.parametrize(
    ("change", "path", "fragment"),
    [
        ({"train": {"epochs": 0}}, "train.epochs", "greater than 0"),
        ({"train": {"optimizer": {"lr": -1}}}, "train.optimizer.lr", "got -1"),
        ({"train": {"optimizer": {"name": "lion"}}}, "train.optimizer.name", "'adam', 'adamw' or 'sgd'"),
        ({"model": {"kind": "cnn"}}, "model", "needs model.image_shape"),
        ({"model": {"layers": 3}}, "model.layers", "unknown field"),
        ({"serve": {"port": 70000}}, "serve.port", "less than or equal to 65535"),
        ({"data": {**MINIMAL["data"], "task": "ranking"}}, "data.task", "got 'ranking'"),
        ({"data": {**MINIMAL["data"], "features": ["a", "a"]}}, "data", "repeated: ['a']"),
        ({"data": {**MINIMAL["data"], "features": ["y"]}}, "data", "also listed as a feature"),
        ({"data": {**MINIMAL["data"], "split": {"validation": 0.5, "test": 0.5}}}, "data.split", "no training"),
        ({"name": "has spaces"}, "name", "should match pattern"),
    ],
)
def test_invalid_fields_name_path_and_value(tmp_path, change, path, fragment):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, {**MINIMAL, **change}))
    message = str(err.value)
    assert str(tmp_path / "p.yaml") in message
    assert f"  {path}:" in message
    assert fragment in message


def test_missing_section_is_reported(tmp_path):
    with pytest.raises(ConfigError, match="data: required field is missing"):
        load_config(write(tmp_path, {"name": "t"}))


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("name: [unclosed", "not valid YAML"), ("- a\n- b\n", "expected a mapping"), ("", "got NoneType")],
)
def test_unreadable_files_are_explained(tmp_path, text, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config(write(tmp_path, text))


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.yaml")


def test_every_field_has_a_docstring():
    def sections(model):
        yield model
        for field in model.model_fields.values():
            for arg in getattr(field.annotation, "__args__", (field.annotation,)):
                if isinstance(arg, type) and issubclass(arg, PipelineConfig.__base__):
                    yield from sections(arg)

    for section in sections(PipelineConfig):
        for name, field in section.model_fields.items():
            assert field.description, f"{section.__name__}.{name} has no docstring"
