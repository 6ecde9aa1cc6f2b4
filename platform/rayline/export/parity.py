"""ONNX Runtime's answers against rayline's own on the same rows, and the int8 limits.

rayline's answers come from the code a Serve replica runs (rayline.serve.model.ServedModel: the preprocessor's
transform_features, the torch model, decode); ONNX Runtime's from the exported file fed raw values
(contract.raw_inputs).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rayline.data.preprocess import scale_of
from rayline.edge.contract import raw_inputs
from rayline.edge.graph import InputLayout
from rayline.edge.rows import ParityRows
from rayline.serve.model import ServedModel

FP32_TOLERANCE = 1e-5
"""Largest absolute difference allowed between fp32 ONNX and torch probabilities (or values)."""
INT8_SIZE_RATIO = 0.35
"""An int8 file at most this share of the fp32 file's bytes."""
INT8_ACCURACY_DROP = 0.005
"""At most 0.5 points of accuracy lost (classification); regression: RMSE up by at most 0.5% of the label's std."""


@dataclass(frozen=True)
class Answers:
    """One side's answers: probabilities [n, classes] and class indices, or values [n]."""

    scores: np.ndarray
    labels: np.ndarray | None


@dataclass(frozen=True)
class ParityReport:
    rows: int
    max_abs_diff: float
    """Over probabilities (classification), or values in units of the label's standard deviation (regression:
    the model's own output scale; a float32 model's error is relative, and a label's units are arbitrary)."""
    max_abs_diff_label_units: float | None
    """Regression: the same difference in the label's own units."""
    different_labels: int
    """Rows whose predicted class differs (0 for regression)."""
    metric: str
    """accuracy (classification) or rmse (regression), on the labelled rows; agreement / rmse_vs_torch without."""
    torch_metric: float | None
    onnx_metric: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def served_answers(served: ServedModel, rows: ParityRows) -> Answers:
    """rayline's answers, through the Serve replica's code."""
    x_bf = served.preprocessor.transform_features(rows.frame)
    decoded = served.predictions(served.forward(x_bf))
    classes = served.preprocessor.classes
    if classes is None:
        return Answers(np.array([d["value"] for d in decoded], dtype=np.float64), None)
    scores = np.array([[d["probabilities"][c] for c in classes] for d in decoded], dtype=np.float64)
    labels = np.array([classes.index(d["label"]) for d in decoded], dtype=np.int64)
    return Answers(scores, labels)


def onnx_answers(path: Path, served: ServedModel, rows: ParityRows) -> Answers:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = raw_inputs(rows.frame, InputLayout.of(served.preprocessor))
    if served.preprocessor.classes is None:
        (values,) = session.run(["value"], feed)
        return Answers(np.asarray(values, dtype=np.float64), None)
    probabilities, labels = session.run(["probabilities", "label_index"], feed)
    return Answers(np.asarray(probabilities, dtype=np.float64), np.asarray(labels, dtype=np.int64))


def compare(reference: Answers, candidate: Answers, served: ServedModel, rows: ParityRows) -> ParityReport:
    """candidate against reference on every row; the metric on the labelled rows (or against the reference's
    answers when no row has a label)."""
    diff = float(np.max(np.abs(candidate.scores - reference.scores))) if len(rows.frame) else 0.0
    different = 0 if reference.labels is None else int((candidate.labels != reference.labels).sum())
    metric, truth_metric, candidate_metric = metrics(reference, candidate, served, rows)
    if reference.labels is not None:
        return ParityReport(len(rows.frame), diff, None, different, metric, truth_metric, candidate_metric)
    scaled = diff / scale_of(served.preprocessor.target_std)
    return ParityReport(len(rows.frame), scaled, diff, different, metric, truth_metric, candidate_metric)


def metrics(reference: Answers, candidate: Answers, served: ServedModel, rows: ParityRows) -> tuple[str, float, float]:
    pre = served.preprocessor
    n = rows.labelled
    if pre.classes is None:
        truth = truth_values(served, rows) if n else reference.scores
        name = "rmse" if n else "rmse_vs_torch"
        return name, rmse(reference.scores[: len(truth)], truth), rmse(candidate.scores[: len(truth)], truth)
    if n:
        truth = pre.encode_labels(rows.frame[pre.label].iloc[:n])
        return "accuracy", accuracy(reference.labels[:n], truth), accuracy(candidate.labels[:n], truth)
    return "agreement", 1.0, accuracy(candidate.labels, reference.labels)


def truth_values(served: ServedModel, rows: ParityRows) -> np.ndarray:
    from rayline.data.values import numeric_column

    return numeric_column(rows.frame[served.preprocessor.label].iloc[: rows.labelled], "label")


def accuracy(predicted: np.ndarray, truth: np.ndarray) -> float:
    return float((predicted == truth).mean()) if len(truth) else float("nan")


def rmse(predicted: np.ndarray, truth: np.ndarray) -> float:
    return float(np.sqrt(np.mean((predicted - truth) ** 2))) if len(truth) else float("nan")


def fp32_problems(report: ParityReport) -> list[str]:
    problems = []
    if not report.max_abs_diff <= FP32_TOLERANCE:  # also catches NaN
        problems.append(f"max absolute difference {report.max_abs_diff:.3g} > {FP32_TOLERANCE:g}")
    if report.different_labels:
        problems.append(f"{report.different_labels} of {report.rows} rows predict another class")
    return problems


def int8_problems(report: ParityReport, size_ratio: float, label_std: float | None) -> list[str]:
    problems = []
    if size_ratio > INT8_SIZE_RATIO:
        problems.append(f"the int8 file is {size_ratio:.1%} of the fp32 file's size (limit {INT8_SIZE_RATIO:.0%})")
    before, after = report.torch_metric, report.onnx_metric
    if report.metric in ("accuracy", "agreement"):
        if not before - after <= INT8_ACCURACY_DROP:
            problems.append(
                f"{report.metric} {after:.4f} vs {before:.4f} fp32 (limit: {INT8_ACCURACY_DROP * 100:g} pt lower)"
            )
    else:
        allowed = INT8_ACCURACY_DROP * (label_std or 1.0)
        if not after - before <= allowed:
            problems.append(f"{report.metric} {after:.4g} vs {before:.4g} fp32 (limit: {allowed:.3g} higher)")
    return problems


def describe(report: ParityReport) -> str:
    """One line of figures, e.g. "max |diff| 3.0e-08 over 270 rows, 0 different classes, accuracy 0.9741 (onnx) vs
    0.9741 (torch)"."""
    if report.max_abs_diff_label_units is None:
        line = (
            f"max |diff| {report.max_abs_diff:.2e} over {report.rows} rows, {report.different_labels} different classes"
        )
    else:
        line = (
            f"max |diff| {report.max_abs_diff:.2e} label std ({report.max_abs_diff_label_units:.2e} in label units) "
            f"over {report.rows} rows"
        )
    return line + f", {report.metric} {report.onnx_metric:.4f} (onnx) vs {report.torch_metric:.4f} (torch)"
