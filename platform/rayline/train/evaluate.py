"""Validation and test metrics of a model, from sums that add up across data-parallel replicas.

Each reporting rank sums its batches (classification: loss and the confusion matrix; regression: errors and
the sums R² needs); one all-reduce makes the sums global, so every rank computes identical metrics. ROC-AUC
(two classes) needs every score: the ranks gather them, which validation splits are small enough for.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import ray.train.torch
import torch
import torch.distributed as dist
from torch import nn

from rayline.data.prepared import SplitFiles
from rayline.data.preprocess import Preprocessor
from rayline.evaluation import classification_metrics, prefixed, regression_metrics


@dataclass
class SplitSums:
    """One rank's running sums over the batches it evaluates."""

    preprocessor: Preprocessor
    sums: torch.Tensor = field(init=False)
    scores: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = self.num_classes
        # classification: loss sum, then the confusion matrix counts[true, predicted] flattened
        # regression: squared error, absolute error, rows, sum y, sum y² (standardised units)
        self.sums = torch.zeros(1 + n * n if self.classification else 5, dtype=torch.float64)

    @property
    def classification(self) -> bool:
        return self.preprocessor.task == "classification"

    @property
    def num_classes(self) -> int:
        return len(self.preprocessor.classes or ())

    @property
    def binary(self) -> bool:
        return self.classification and self.num_classes == 2

    @torch.no_grad()
    def add(self, outputs: torch.Tensor, y_b: torch.Tensor) -> None:
        outputs = outputs.float()
        if self.classification:
            n = self.num_classes
            loss_sum = nn.functional.cross_entropy(outputs, y_b, reduction="sum")
            cells = torch.bincount(y_b * n + outputs.argmax(dim=-1), minlength=n * n)
            self.sums += torch.cat([loss_sum.reshape(1).double(), cells.double()]).cpu()
            if self.binary:
                self.scores.append(outputs.softmax(dim=-1)[:, 1].cpu().numpy())
                self.labels.append(y_b.cpu().numpy())
            return
        error = outputs.squeeze(-1) - y_b
        y64 = y_b.double()
        e64 = error.double()
        parts = [e64.pow(2).sum(), e64.abs().sum(), y64.new_tensor(len(y_b)), y64.sum(), y64.pow(2).sum()]
        self.sums += torch.stack(parts).cpu()

    def reduce(self) -> SplitResult:
        """All-reduce the sums (and gather the scores) over every rank: a collective every rank must call."""
        total = all_reduce(self.sums).numpy()
        if not self.classification:
            return SplitResult(regression_metrics(total, self.preprocessor.target_std), None)
        n = self.num_classes
        counts = total[1:].reshape(n, n).round().astype(np.int64)
        scores = labels = None
        if self.binary:
            scores, labels = gather_arrays(self.scores), gather_arrays(self.labels)
        return SplitResult(classification_metrics(total[0], counts, scores, labels), counts)


@dataclass(frozen=True)
class SplitResult:
    metrics: dict[str, float]
    """Unprefixed: loss, accuracy, f1_macro, roc_auc (two classes) or loss, rmse, mae, r2."""
    confusion: np.ndarray | None
    """counts[true, predicted] (classification)."""

    def named(self, split: str) -> dict[str, float]:
        return prefixed(self.metrics, split)


@torch.no_grad()
def evaluate(model: nn.Module, split: SplitFiles, preprocessor: Preprocessor, batch_size: int, device) -> SplitResult:
    """Metrics of a plain (unsplit) model over a whole prepared split, e.g. a loaded checkpoint on the test split."""
    model.eval()
    sums = SplitSums(preprocessor)
    label_dtype = torch.int64 if sums.classification else torch.float32
    for x, y in split.iter_arrays(batch_size):
        x_b = torch.from_numpy(np.require(x, np.float32, ["C", "W"])).to(device)
        sums.add(model(x_b), torch.from_numpy(np.require(y, requirements=["C", "W"])).to(label_dtype).to(device))
    return sums.reduce()


def gather_arrays(parts: list[np.ndarray]) -> np.ndarray:
    """This rank's arrays joined with every other rank's (ranks without any contribute an empty array)."""
    own = np.concatenate(parts) if parts else np.zeros(0)
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return own
    everyone: list[np.ndarray] = [own] * dist.get_world_size()
    dist.all_gather_object(everyone, own)
    return np.concatenate(everyone)


def collective_device() -> torch.device:
    # gloo reduces CPU tensors; nccl needs them on the GPU.
    return ray.train.torch.get_device() if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce(values: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        reduced = values.to(collective_device())
        dist.all_reduce(reduced, op=op)
        return reduced.cpu()
    return values
