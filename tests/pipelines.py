"""Pipeline dicts for tests: the digits pipeline once, with the parts a test changes given as overrides."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from rayline.config import PipelineConfig, validate_config
from rayline.data import write_digits

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
