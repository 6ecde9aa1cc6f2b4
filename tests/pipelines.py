"""Pipeline dicts for tests: the digits pipeline once, with the parts a test changes given as overrides; and
runs trained once per module, however many tests read them."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from rayline.config import PipelineConfig, validate_config
from rayline.data import write_digits

if TYPE_CHECKING:
    from rayline.pipeline import TrainReport

Trained = tuple[PipelineConfig, "TrainReport", list[dict[str, Any]]]
"""A run's config, its report, and the metrics of each epoch it reported, in order."""

PIXELS = [f"pixel_{i}" for i in range(64)]
"""The digits data set's 64 feature columns, in order."""


def digits_source(directory: Path) -> Path:
    """scikit-learn's digits as Parquet in `directory` (written once per directory)."""
    source = Path(directory) / "digits.parquet"
    if not source.exists():
        write_digits(str(source))
    return source


def digits_pipeline(directory: Path, name: str = "digits-test", **sections: dict[str, Any]) -> dict[str, Any]:
    """A digits classification pipeline with its data and registry under `directory`.

    Each keyword is a section (`model`, `train`, `tune`, `serve`, `data`, `storage`, ...) merged key by key
    over the defaults below; a value of None removes the key.
    """
    pipeline: dict[str, Any] = {
        "name": name,
        "data": {
            "source": str(digits_source(directory)),
            "task": "classification",
            "label": "label",
            "features": list(PIXELS),
        },
        "model": {"kind": "mlp", "hidden_sizes": [32]},
        "train": {"num_workers": 2, "batch_size": 64},
        "storage": {"root": str(Path(directory) / "store")},
    }
    return merged(pipeline, sections)


def digits_config(directory: Path, name: str = "digits-test", **sections: dict[str, Any]) -> PipelineConfig:
    return validate_config(digits_pipeline(directory, name, **sections))


def write_pipeline(path: Path, pipeline: dict[str, Any]) -> Path:
    path = Path(path)
    path.write_text(yaml.safe_dump(pipeline))
    return path


def merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def quiet(_line: str) -> None:
    """A `log` for runs whose printed progress no test reads."""


def train_once(make_config: Callable[[str], PipelineConfig]) -> Callable[[str], Trained]:
    """train(name): the run `make_config(name)` describes, trained and registered on the first call for that name
    only (a module fixture returns it, so tests share runs); later calls return the same result."""
    from rayline.pipeline import train_and_register  # imports torch, which tests that only build configs skip

    runs: dict[str, Trained] = {}

    def train(name: str) -> Trained:
        if name not in runs:
            cfg, epochs = make_config(name), []
            runs[name] = cfg, train_and_register(cfg, on_epoch=epochs.append, log=quiet), epochs
        return runs[name]

    return train
