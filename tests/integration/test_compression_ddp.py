"""Gradient compression on the session cluster: fp16 and PowerSGD hooks on ddp over gloo, the bytes each step
sends (checked against the model's parameter shapes), training that still learns, and a compressed run's
checkpoint that registers, serves and resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from pipelines import PIXELS, digits_config
from rayline.checkpoint import MODEL_FILE
from rayline.config import PipelineConfig
from rayline.data.split import TEST, assign_splits
from rayline.pipeline import TrainReport, format_epoch, train_and_register
from rayline.registry import Registry
from rayline.serve.model import ServedModel

pytestmark = pytest.mark.slow

EPOCHS = 4
FP32_BYTES = 4
RUNS = {
    # bf16 autocast keeps gradients in fp32, so gloo reduces fp16 here, never bf16.
    "fp16": {"compression": {"kind": "fp16"}, "precision": "bf16"},
    "powersgd": {"compression": {"kind": "powersgd", "rank": 2, "start_step": 2}},
}


MODELS = {
    # Over 1 MiB of gradients: DDP's first bucket is 1 MiB, so PowerSGD compresses two buckets at once (over gloo
    # that once deadlocked its callbacks on gloo's two threads).
    "powersgd": {"kind": "mlp", "hidden_sizes": [512, 512]},
}


def config(root: Path, kind: str, epochs: int = EPOCHS) -> PipelineConfig:
    # A higher learning rate than the default: four epochs are to reach well above chance with or without compression.
    train = {"epochs": epochs, "optimizer": {"lr": 0.01}, **RUNS[kind]}
    model = {"model": MODELS[kind]} if kind in MODELS else {}
    return digits_config(root, f"digits-{kind}", train=train, **model)


@pytest.fixture(scope="module")
def trained(ray_cluster, tmp_path_factory):
    """Train each compressed run once, on first use, into one registry."""
    root = tmp_path_factory.mktemp("compression")
    reports: dict[str, tuple[PipelineConfig, TrainReport, list[dict]]] = {}

    def train(kind: str) -> tuple[PipelineConfig, TrainReport, list[dict]]:
        if kind not in reports:
            cfg, epochs = config(root, kind), []
            reports[kind] = cfg, train_and_register(cfg, on_epoch=epochs.append, log=lambda _: None), epochs
        return reports[kind]

    return train


def weight_shapes(cfg: PipelineConfig, report: TrainReport) -> list[torch.Size]:
    checkpoint = Registry(cfg.storage.root).checkpoint_dir(report.version)
    return [t.shape for t in torch.load(checkpoint / MODEL_FILE, weights_only=True).values()]


def fp32_bytes(shapes: list[torch.Size]) -> int:
    return sum(shape.numel() for shape in shapes) * FP32_BYTES


def powersgd_bytes(shapes: list[torch.Size], rank: int) -> int:
    """A P (rows x rank) and a Q (columns x rank) factor for each tensor, viewed as rows x columns, where they are
    under half its size (PowerSGD's min_compression_rate 2); the tensor itself where they are not."""
    sent = 0
    for shape in shapes:
        rows, columns = shape[0], shape.numel() // shape[0]
        factors = (rows + columns) * min(rows, columns, rank)
        sent += factors if 2 * factors < rows * columns else rows * columns
    return sent * FP32_BYTES


def test_fp16_sends_half_the_bytes_and_still_learns(trained):
    cfg, report, epochs = trained("fp16")
    full = fp32_bytes(weight_shapes(cfg, report))
    assert [m["grad_bytes_per_step"] for m in epochs] == [full / 2] * EPOCHS
    assert [m["compression_ratio"] for m in epochs] == [2.0] * EPOCHS
    assert "grads " in format_epoch(epochs[-1], EPOCHS) and "(2.0x less)" in format_epoch(epochs[-1], EPOCHS)
    assert report.test_metrics["test_accuracy"] >= 0.8, "chance is 0.1"

    noted = Registry(cfg.storage.root).record(report.version)["evaluation"]["compression"]
    assert (noted["kind"], noted["grad_bytes_per_step"], noted["compression_ratio"]) == ("fp16", full / 2, 2.0)


def test_powersgd_sends_its_low_rank_factors_after_start_step_and_still_learns(trained):
    cfg, report, epochs = trained("powersgd")
    shapes = weight_shapes(cfg, report)
    full, compressed = fp32_bytes(shapes), powersgd_bytes(shapes, rank=2)
    assert compressed < full / 5
    first_epoch = epochs[0]["grad_bytes_per_step"]
    assert compressed < first_epoch < full, "the first two steps all-reduce the whole fp32 gradient"
    assert [m["grad_bytes_per_step"] for m in epochs[1:]] == [compressed] * (EPOCHS - 1)
    assert epochs[-1]["compression_ratio"] == pytest.approx(full / compressed)
    assert report.test_metrics["test_accuracy"] >= 0.8, "chance is 0.1"

    noted = Registry(cfg.storage.root).record(report.version)["evaluation"]["compression"]
    assert (noted["kind"], noted["rank"], noted["start_step"]) == ("powersgd", 2, 2)
    assert noted["grad_bytes_per_step"] == compressed


def test_a_compressed_run_resumes_and_its_checkpoint_serves(trained):
    cfg, first, first_run = trained("powersgd")
    seen: list[dict] = []
    resumed = config(Path(cfg.data.source).parent, "powersgd", epochs=EPOCHS + 1)
    report = train_and_register(resumed, on_epoch=seen.append, log=lambda _: None)
    assert [m["epoch"] for m in seen] == [EPOCHS], "the re-run continues after the last epoch"
    assert seen[0]["train_loss"] < 0.5 * first_run[0]["train_loss"], "from the saved weights, not from scratch"
    # PowerSGD's error feedback is not checkpointed: the resumed run all-reduces start_step steps uncompressed.
    assert first_run[-1]["grad_bytes_per_step"] < seen[0]["grad_bytes_per_step"] < fp32_bytes(weight_shapes(cfg, first))
    assert report.version.version != first.version.version
    assert_served(cfg, report)


def assert_served(cfg: PipelineConfig, report: TrainReport) -> None:
    """What a Serve replica does with a request for the version: load it from the registry (manifest hashes
    checked), parse a JSON body, run the model, decode the labels. (Serve's HTTP layer never sees how a checkpoint
    was trained; test_train_strategies serves a ddp checkpoint over HTTP.)"""
    source = pd.read_parquet(cfg.data.source)
    digits = source[assign_splits(source, cfg.data.split) == TEST].sample(40, random_state=0)
    served = ServedModel.load(cfg.storage.root, report.version.name, report.version.version)
    body = json.dumps({"rows": digits[PIXELS].to_numpy().tolist()}).encode()
    predictions = served.predictions(served.forward(served.inputs(body, "application/json")))
    correct = sum(str(p["label"]) == str(y) for p, y in zip(predictions, digits["label"], strict=True))
    assert correct >= 0.8 * len(digits), correct
