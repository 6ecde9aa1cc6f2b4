"""Serving with missing values, without Ray: null and left-out features follow the model's missing rules,
through both the validating path and the fast encoder."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from rayline.data import CategoricalStat, NumericStat, Preprocessor
from rayline.serve.encode import FastEncoder
from rayline.serve.schema import RequestError, RequestSchema

PRE = Preprocessor(
    "regression",
    "y",
    [
        NumericStat("age", 40.0, 10.0, "median", 38.0, indicator=True),
        NumericStat("income", 5.0, 2.0, "constant", 0.0),
        NumericStat("height", 170.0, 9.0, "drop_row"),
        NumericStat("weight", 70.0, 8.0, "error"),
        CategoricalStat(
            "city", [f"c{i}" for i in range(20)], "category", other=True, missing_slot=True, embedding_dim=5
        ),
        CategoricalStat("tier", ["lo", "hi"], "category", other=False, missing_slot=True),
        CategoricalStat("plan", ["a", "b"], "error"),
    ],
    None,
    0.0,
    1.0,
)
NULLABLE = {"age", "income", "city", "tier"}
FULL = {"age": 30, "income": 4.5, "height": 180.0, "weight": 60, "city": "c3", "tier": "hi", "plan": "a"}


@pytest.fixture(scope="module")
def schema() -> RequestSchema:
    return RequestSchema(PRE.feature_schema(), max_rows=8)


def inputs(schema: RequestSchema, payload) -> np.ndarray:
    return PRE.transform_features(schema.validate(payload))


def test_the_schema_says_which_features_may_be_missing():
    entries = {f["name"]: f for f in PRE.feature_schema()}
    assert {name for name, f in entries.items() if f["nullable"]} == NULLABLE
    assert entries["age"]["missing"] == "median" and entries["height"]["missing"] == "drop_row"
    assert entries["city"]["encoding"] == "embedding" and entries["city"]["other"] is True


@pytest.mark.parametrize("name", sorted(NULLABLE))
def test_null_and_a_left_out_key_give_the_training_fill(schema, name):
    null = inputs(schema, {"rows": [{**FULL, name: None}]})
    absent = inputs(schema, {"rows": [{k: v for k, v in FULL.items() if k != name}]})
    as_list = inputs(schema, {"rows": [[None if k == name else v for k, v in FULL.items()]]})
    np.testing.assert_array_equal(null, absent)
    np.testing.assert_array_equal(null, as_list)
    assert not np.array_equal(null, inputs(schema, {"rows": [FULL]}))


def test_the_filled_values_are_the_preprocessors():
    x = inputs(RequestSchema(PRE.feature_schema()), {"rows": [{"height": 170, "weight": 70, "plan": "b"}]})
    columns = PRE.input_columns()
    row = dict(zip(columns, x[0].tolist(), strict=False))
    assert row["age"] == pytest.approx((38.0 - 40.0) / 10.0) and row["age (missing)"] == 1.0
    assert row["income"] == pytest.approx((0.0 - 5.0) / 2.0)
    assert x[0, columns.index("city")] == 21 + 1  # the missing slot, after 20 kept and "other"
    tier = columns.index("tier")
    np.testing.assert_array_equal(x[0, tier : tier + 3], [0, 0, 1])


@pytest.mark.parametrize(("name", "rule"), [("height", "drop_row"), ("weight", "error"), ("plan", "error")])
def test_features_without_an_imputer_refuse_null_and_absence_naming_row_and_feature(schema, name, rule):
    for row in ({**FULL, name: None}, {k: v for k, v in FULL.items() if k != name}):
        with pytest.raises(RequestError) as caught:
            schema.validate({"rows": [FULL, row]})
        assert caught.value.status == 422
        [detail] = caught.value.detail
        assert detail["loc"] == f"rows.1.{name}"
        assert f"its missing rule is {rule}" in detail["msg"]


def test_infinity_is_still_refused_for_a_nullable_feature(schema):
    with pytest.raises(RequestError) as caught:
        schema.validate({"rows": [{**FULL, "age": float("inf")}]})
    assert caught.value.detail[0]["loc"] == "rows.0.age" and "finite" in caught.value.detail[0]["msg"]


def test_the_json_schema_marks_nullable_features_optional(schema):
    body = schema.json_schema()
    object_row, list_row = body["properties"]["rows"]["items"]["anyOf"]
    assert object_row["required"] == ["height", "weight", "plan"]
    assert {"type": "null"} in object_row["properties"]["age"]["anyOf"]
    assert "anyOf" not in object_row["properties"]["weight"]
    assert len(list_row["prefixItems"]) == len(FULL)
    json.dumps(schema.openapi_body())


def random_row(rng: random.Random) -> dict:
    return {
        "age": rng.uniform(0, 90),
        "income": rng.randint(0, 9),
        "height": rng.uniform(150, 200),
        "weight": rng.uniform(40, 120),
        "city": rng.choice(["c0", "c7", "c19", "elsewhere", 3]),
        "tier": rng.choice(["lo", "hi", "mid"]),
        "plan": rng.choice(["a", "b", "c"]),
    }


def test_the_fast_path_matches_the_validating_path_for_every_layout(schema):
    rng = random.Random(1)
    encoder = FastEncoder(PRE, max_rows=8)
    for _ in range(40):
        payload = json.loads(json.dumps({"rows": [random_row(rng) for _ in range(rng.randint(1, 8))]}))
        fast = encoder.encode(payload)
        assert fast is not None
        np.testing.assert_array_equal(fast, inputs(schema, payload))


@pytest.mark.parametrize(
    "change", [{"age": None}, {"city": None}, {"tier": ""}], ids=["null", "null category", "empty"]
)
def test_rows_with_missing_values_take_the_validating_path(schema, change):
    payload = {"rows": [{**FULL, **change}]}
    assert FastEncoder(PRE).encode(payload) is None
    assert inputs(schema, payload).shape == (1, PRE.num_inputs)
    absent = {"rows": [{k: v for k, v in FULL.items() if k != "age"}]}
    assert FastEncoder(PRE).encode(absent) is None


def test_an_empty_string_is_a_missing_category(schema):
    np.testing.assert_array_equal(
        inputs(schema, {"rows": [{**FULL, "tier": ""}]}), inputs(schema, {"rows": [{**FULL, "tier": None}]})
    )
    with pytest.raises(RequestError) as caught:
        schema.validate({"rows": [{**FULL, "plan": ""}]})
    assert caught.value.detail[0]["loc"] == "rows.0.plan"
    assert "its missing rule is error" in caught.value.detail[0]["msg"]
    plan = schema.json_schema()["properties"]["rows"]["items"]["anyOf"][0]["properties"]["plan"]
    assert {"type": "string", "minLength": 1} in plan["anyOf"]
