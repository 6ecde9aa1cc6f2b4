"""Small trained models registered without Ray, for the export tests: the pipeline's own split, preprocessor fit
and checkpoint format, with a plain torch loop standing in for Ray Train."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from rayline.checkpoint import save_checkpoint
from rayline.config import validate_config
from rayline.data.files import resolve_source
from rayline.data.fit import fit_block, preprocessor_from_stats
from rayline.data.infer import resolve_features
from rayline.data.prepare import leave_out
from rayline.data.preprocess import Preprocessor
from rayline.data.read import read_sample
from rayline.data.split import TEST, TRAIN, split_codes
from rayline.models import build_model
from rayline.registry import ModelVersion, Registry


def source_frame(source: str) -> pd.DataFrame:
    """A small source, whole, as pandas (typed as Ray Data's readers type it)."""
    return read_sample(resolve_source(source), 10**6, source).to_pandas()


def register_trained(root: Path, pipeline: dict[str, Any], *, epochs: int = 20, seed: int = 0) -> ModelVersion:
    """Split the pipeline's source as rayline does, fit the preprocessor on the train rows, train the configured
    model for `epochs` (Adam, batch 64), and register it with its test confusion matrix. `root`: storage root."""
    cfg = validate_config(pipeline)
    data_cfg = resolve_features(cfg.data)
    frame = source_frame(data_cfg.source)
    codes = split_codes(frame, data_cfg.split, leave_out(data_cfg))
    train_rows, test_rows = frame[codes == TRAIN], frame[codes == TEST]
    pre = preprocessor_from_stats(fit_block(train_rows, data_cfg), data_cfg)
    torch.manual_seed(seed)
    model = build_model(cfg.model, **pre.model_shape())
    fit(model, pre, train_rows, epochs)
    checkpoint = root / f"checkpoint-{cfg.name}-{seed}"
    metrics = {"epoch": epochs - 1, "val_loss": 0.0}
    save_checkpoint(
        checkpoint,
        model_state=model.state_dict(),
        optimizer_state={},
        epoch=epochs - 1,
        metrics=metrics,
        history=[metrics],
        preprocessor=pre,
        config=cfg,
    )
    evaluation = {"split": "test", **confusion(model, pre, test_rows)}
    return Registry(root).register(checkpoint, run_name=cfg.name, data_fingerprint="sha256:test", evaluation=evaluation)


def fit(model: torch.nn.Module, pre: Preprocessor, rows: pd.DataFrame, epochs: int) -> None:
    x = torch.from_numpy(pre.transform_features(rows))
    y = torch.from_numpy(pre.encode_labels(rows[pre.label]))
    loss_fn = torch.nn.CrossEntropyLoss() if pre.classes is not None else torch.nn.MSELoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=generator).split(64):
            out = model(x[batch])
            loss = loss_fn(out, y[batch]) if pre.classes is not None else loss_fn(out[:, 0], y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()


def confusion(model: torch.nn.Module, pre: Preprocessor, rows: pd.DataFrame) -> dict[str, Any]:
    """The record's confusion matrix on the test rows (classification), which the export's row count is set
    against."""
    if pre.classes is None:
        return {}
    with torch.inference_mode():
        predicted = model(torch.from_numpy(pre.transform_features(rows))).argmax(1).numpy()
    truth = pre.encode_labels(rows[pre.label])
    counts = np.zeros((len(pre.classes), len(pre.classes)), dtype=np.int64)
    np.add.at(counts, (truth, predicted), 1)
    return {"confusion_matrix": {"labels": pre.classes, "counts": counts.tolist()}}
