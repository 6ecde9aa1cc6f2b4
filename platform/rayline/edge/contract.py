"""What an exported graph takes and answers: the input/output contract, as JSON and as the feed rayline builds
from a table of rows.

Inputs (only those the model has features for):
    numeric      float64 [n, numeric features], model order; NaN = missing
    categorical  string  [n, categorical features], model order; the value's key as rayline stores categories
                 (text as is, integers as decimal text, whole floats without ".0", booleans True / False);
                 "" = missing; a value not in the feature's categories is unseen (its "other" slot, if any)
Outputs:
    classification  label (string [n]), label_index (int64 [n]), probabilities (float32 [n, classes])
    regression      value (float64 [n]), in the label's units
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from rayline.data.preprocess import CategoricalStat, Preprocessor
from rayline.data.values import keys_of, numeric_column
from rayline.edge.graph import InputLayout
from rayline.errors import RaylineError

NUMERIC_INPUT = "numeric"
CATEGORICAL_INPUT = "categorical"
CONTRACT_VERSION = 1


class ExportError(RaylineError, ValueError):
    """An export that cannot be made or does not hold up: what went wrong and where."""


def input_names(layout: InputLayout) -> list[str]:
    return ([NUMERIC_INPUT] if layout.numeric else []) + ([CATEGORICAL_INPUT] if layout.categorical else [])


def output_names(preprocessor: Preprocessor) -> list[str]:
    return ["label", "label_index", "probabilities"] if preprocessor.classes is not None else ["value"]


def raw_inputs(frame: pd.DataFrame, layout: InputLayout) -> dict[str, np.ndarray]:
    """The graph's feed for a table of rows keyed by feature name (the way an edge caller builds it)."""
    feed: dict[str, np.ndarray] = {}
    if layout.numeric:
        columns = [numeric_column(frame[f.name], "feature") for f in layout.numeric]
        feed[NUMERIC_INPUT] = np.stack(columns, axis=1).astype(np.float64)
    if layout.categorical:
        columns = [[k if k is not None else "" for k in keys_of(frame[f.name])] for f in layout.categorical]
        feed[CATEGORICAL_INPUT] = np.array(columns, dtype=object).T.reshape(len(frame), len(columns))
    return feed


def describe(preprocessor: Preprocessor, *, model: str, files: dict[str, str]) -> dict[str, Any]:
    """The JSON written beside the ONNX file (and into its metadata): everything a caller needs to feed it."""
    layout = InputLayout.of(preprocessor)
    inputs = []
    if layout.numeric:
        features = [numeric_entry(f.name, f.missing, f.fill is not None) for f in layout.numeric]
        inputs.append({"name": NUMERIC_INPUT, "dtype": "float64", "shape": ["n", len(features)], "features": features})
    if layout.categorical:
        features = [categorical_entry(f) for f in layout.categorical]
        inputs.append(
            {"name": CATEGORICAL_INPUT, "dtype": "string", "shape": ["n", len(features)], "features": features}
        )
    return {
        "contract_version": CONTRACT_VERSION,
        "model": model,
        "task": preprocessor.task,
        "label": preprocessor.label,
        "files": files,
        "inputs": inputs,
        "missing_values": {
            NUMERIC_INPUT: "NaN",
            CATEGORICAL_INPUT: '"" (empty string)',
            "not nullable": "a feature with nullable false has no fill rule: a missing value there gives NaN "
            "answers (numeric) or counts as an unseen category (categorical), where rayline refuses the row",
        },
        "outputs": outputs(preprocessor),
        "classes": preprocessor.classes,
    }


def numeric_entry(name: str, rule: str, nullable: bool) -> dict[str, Any]:
    return {"name": name, "missing": rule, "nullable": nullable}


def categorical_entry(f: CategoricalStat) -> dict[str, Any]:
    return {
        "name": f.name,
        "missing": f.missing,
        "nullable": f.nullable,
        "categories": list(f.categories),
        "unseen": "other slot" if f.other else "no slot (an all-zero encoding)",
        "encoding": "onehot" if f.embedding_dim is None else "embedding",
    }


def outputs(preprocessor: Preprocessor) -> list[dict[str, Any]]:
    if preprocessor.classes is None:
        return [{"name": "value", "dtype": "float64", "shape": ["n"], "meaning": f"predicted {preprocessor.label}"}]
    classes = len(preprocessor.classes)
    return [
        {"name": "label", "dtype": "string", "shape": ["n"], "meaning": "the most likely class"},
        {"name": "label_index", "dtype": "int64", "shape": ["n"], "meaning": "its position in classes"},
        {"name": "probabilities", "dtype": "float32", "shape": ["n", classes], "meaning": "softmax, in classes order"},
    ]
