"""The fast request encoder gives exactly the validating path's inputs, or steps aside (None)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from rayline.data.preprocess import CategoricalStat, NumericStat, Preprocessor
from rayline.serve.encode import FastEncoder
from rayline.serve.schema import RequestError, RequestSchema

MIXED = Preprocessor(
    "classification",
    "y",
    [
        NumericStat("x1", 1.0, 2.0),
        CategoricalStat("color", ["red", "green", "7"]),
        NumericStat("tiny", -3.0, 1e-3),
        NumericStat("flat", 5.0, 0.0),  # constant in training: scale 1
        CategoricalStat("size", ["S", "M"]),
    ],
    ["a", "b"],
    None,
    None,
)
NUMERIC = Preprocessor("regression", "y", [NumericStat(f"f{i}", i / 3, 1 + i) for i in range(16)], None, 0.0, 1.0)


def slow(pre: Preprocessor, payload) -> np.ndarray:
    frame = RequestSchema(pre.feature_schema(), max_rows=8).validate(payload)
    return pre.transform_features(frame)


def random_mixed_row(rng: random.Random, as_list: bool):
    row = {
        "x1": rng.choice([rng.uniform(-5, 5), rng.randint(-9, 9)]),
        "color": rng.choice(["red", "green", "blue", 7, 7.0, "7"]),  # blue is unseen; 7 and 7.0 mean "7"
        "tiny": rng.uniform(-4, -2),
        "flat": rng.uniform(0, 9),
        "size": rng.choice(["S", "M", "XL"]),
    }
    return list(row.values()) if as_list else row


@pytest.mark.parametrize("as_list", [False, True], ids=["objects", "lists"])
def test_fast_path_matches_the_validating_path(as_list):
    rng = random.Random(0)
    for pre, make in ((MIXED, lambda: random_mixed_row(rng, as_list)), (NUMERIC, None)):
        encoder = FastEncoder(pre, max_rows=8)
        for _ in range(50):
            if make is None:
                rows = [[rng.uniform(-1e3, 1e3) for _ in range(16)] for _ in range(rng.randint(1, 8))]
            else:
                rows = [make() for _ in range(rng.randint(1, 8))]
            payload = json.loads(json.dumps({"rows": rows}))  # what the server sees
            fast = encoder.encode(payload)
            assert fast is not None
            assert fast.dtype == np.float32
            np.testing.assert_array_equal(fast, slow(pre, payload))


GOOD = {"x1": 1.5, "color": "red", "tiny": -3.0, "flat": 2, "size": "M"}
STEPS_ASIDE = {
    "bool number": {"rows": [{**GOOD, "x1": True}]},
    "string number": {"rows": [{**GOOD, "x1": "1.5"}]},
    "null number": {"rows": [{**GOOD, "flat": None}]},
    "NaN": {"rows": [{**GOOD, "x1": float("nan")}]},
    "infinity": {"rows": [{**GOOD, "x1": float("-inf")}]},
    "beyond float32": {"rows": [{**GOOD, "x1": 1e39}]},
    "huge int": {"rows": [{**GOOD, "x1": 10**400}]},
    "overflows once scaled": {"rows": [{**GOOD, "tiny": 3e38}]},
    "fractional category": {"rows": [{**GOOD, "color": 1.5}]},
    "bool category": {"rows": [{**GOOD, "color": True}]},
    "list category": {"rows": [{**GOOD, "color": ["red"]}]},
    "missing feature": {"rows": [{k: v for k, v in GOOD.items() if k != "x1"}]},
    "extra feature": {"rows": [{**GOOD, "x9": 1}]},
    "short list": {"rows": [[1.5, "red", -3.0, 2]]},
    "row not a row": {"rows": ["x1"]},
    "empty rows": {"rows": []},
    "too many rows": {"rows": [GOOD] * 9},
    "rows not a list": {"rows": GOOD},
    "extra key": {"rows": [GOOD], "version": "v2"},
    "not an object": [GOOD],
}


@pytest.mark.parametrize("case", STEPS_ASIDE, ids=list(STEPS_ASIDE))
def test_anything_unusual_takes_the_validating_path(case):
    payload = STEPS_ASIDE[case]
    assert FastEncoder(MIXED, max_rows=8).encode(payload) is None
    assert validating_path_rejects(payload), "the fast path must not step aside for requests that are fine"


def validating_path_rejects(payload) -> bool:
    try:
        frame = RequestSchema(MIXED.feature_schema(), max_rows=8).validate(payload)
    except RequestError:
        return True
    with np.errstate(over="ignore"):
        return not np.isfinite(MIXED.transform_features(frame)).all()  # the server's 422 for overflow


def test_all_categorical_model():
    pre = Preprocessor("classification", "y", [CategoricalStat("c", ["p", "q"])], ["a", "b"], None, None)
    payload = {"rows": [{"c": "q"}, ["p"], {"c": "zz"}]}
    np.testing.assert_array_equal(FastEncoder(pre).encode(payload), slow(pre, payload))
