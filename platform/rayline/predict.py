"""Batch prediction: one registered checkpoint over a file, directory or glob, with Ray Data map_batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from rayline.checkpoint import load_checkpoint
from rayline.data import DataError
from rayline.data.errors import reading
from rayline.data.files import open_filesystem, resolve_source, split_query
from rayline.data.read import open_source
from rayline.registry import ModelVersion, Registry

WRITERS = {"parquet": "write_parquet", "csv": "write_csv", "json": "write_json"}


class BatchPredictor:
    """A Ray Data actor: loads the checkpoint once, then predicts whole batches of rows.

    Missing cells follow the model's rules, exactly as in training and serving (the same Preprocessor). A row
    missing a feature whose rule is drop_row is kept in the output with a null prediction (and null
    probabilities), so every input row has its output row; count them with `prediction IS NULL`.
    """

    def __init__(self, checkpoint_dir: str):
        torch.set_num_threads(1)
        self.loaded = load_checkpoint(checkpoint_dir)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        preprocessor = self.loaded.preprocessor
        dropped = preprocessor.rows_to_drop(batch)
        kept = np.flatnonzero(~dropped)
        x_bf = torch.from_numpy(preprocessor.transform_features(batch.iloc[kept]))
        with torch.inference_mode():
            outputs = self.loaded.model(x_bf).numpy()
        decoded = preprocessor.decode(outputs)
        result = batch.copy()
        if preprocessor.task == "classification":
            labels = np.full(len(batch), None, dtype=object)
            labels[kept] = [d["label"] for d in decoded]
            result["prediction"] = labels
            probabilities = np.full((len(batch), len(preprocessor.classes)), np.nan)
            found = [[d["probabilities"][c] for c in preprocessor.classes] for d in decoded]
            probabilities[kept] = np.asarray(found, dtype=np.float64).reshape(len(kept), len(preprocessor.classes))
            for i, cls in enumerate(preprocessor.classes):
                result[f"probability_{cls}"] = probabilities[:, i]
        else:
            values = np.full(len(batch), np.nan)
            values[kept] = [d["value"] for d in decoded]
            result["prediction"] = values
        return result


class RegisteredBatchPredictor(BatchPredictor):
    """A BatchPredictor for a registry version. Each actor opens the registry itself, wherever it runs: on an
    object store, it fetches the version's files once per node."""

    def __init__(self, storage_root: str, name: str, version: str):
        super().__init__(str(Registry(storage_root).checkpoint_dir(ModelVersion(name, version))))


def predict_files(
    storage_root: str, model: str | None, input_path: str, output_path: str, *, batch_size: int = 1024
) -> tuple[ModelVersion, int]:
    """Predict every row of `input_path` into `output_path`, a directory of part files.

    `model` is "NAME" (its serving version) or "NAME/vN"; None means the registry's only name.
    Returns the model version used and the number of rows written.
    """
    import ray.data

    registry = Registry(storage_root)
    version = registry.find(model)
    out_fmt = output_format(output_path)
    with reading(input_path):
        dataset = open_source(resolve_source(input_path, None))
    predictions = dataset.map_batches(
        RegisteredBatchPredictor,
        fn_constructor_args=(storage_root, version.name, version.version),
        batch_format="pandas",
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=1),
        num_cpus=1,
    )
    # Rows stream from the input to the output, so a bad input file fails here, as may the output path.
    with reading(input_path, f"could not read it or write {output_path}"):
        filesystem, path = open_filesystem(output_path)
        getattr(predictions, WRITERS[out_fmt])(path, filesystem=filesystem)
    return version, read_row_count(output_path, out_fmt)


def output_format(path: str) -> str:
    suffix = Path(split_query(path)[0]).suffix.lower().lstrip(".")
    fmt = {"parquet": "parquet", "pq": "parquet", "csv": "csv", "json": "json", "jsonl": "json"}.get(suffix)
    if fmt is None:
        raise DataError(f"--output {path}: cannot tell the format from the extension; use .parquet, .csv or .jsonl")
    return fmt


def read_row_count(path: str, fmt: str) -> int:
    return open_source(resolve_source(path, fmt)).count()
