"""The /predict request schema, without Ray: each bad request names the row and the feature."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rayline.serve.schema import MAX_DETAIL, RequestError, RequestSchema, parse_json

FEATURES = [
    {"name": "x1", "kind": "numeric"},
    {"name": "model_config", "kind": "numeric"},  # clashes with a pydantic attribute
    {"name": "pixel 7", "kind": "numeric"},  # not a Python identifier
    {"name": "color", "kind": "categorical", "categories": ["red", "green"]},
]
NAMES = [f["name"] for f in FEATURES]


@pytest.fixture(scope="module")
def schema() -> RequestSchema:
    return RequestSchema(FEATURES, max_rows=5)


def good_row(**changes) -> dict:
    return {"x1": 1.5, "model_config": 2, "pixel 7": -3.0, "color": "red", **changes}


def rejection(schema: RequestSchema, payload) -> RequestError:
    with pytest.raises(RequestError) as caught:
        schema.validate(payload)
    return caught.value


def test_object_and_list_rows_give_the_same_frame(schema):
    frame = schema.validate({"rows": [good_row(), [1.5, 2, -3.0, "red"]]})
    assert list(frame.columns) == NAMES
    assert frame.iloc[0].tolist() == frame.iloc[1].tolist() == [1.5, 2.0, -3.0, "red"]


def test_integer_categories_become_text(schema):
    frame = schema.validate({"rows": [good_row(color=7), good_row(color=7.0), good_row(color="7")]})
    assert frame["color"].tolist() == ["7", "7", "7"]


def test_schema_module_does_not_import_ray():
    code = "import sys, rayline.serve, rayline.serve.schema; assert 'ray' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


BAD_ROWS = {
    "missing feature": ({k: v for k, v in good_row().items() if k != "x1"}, "x1", "missing"),
    "unknown feature": (good_row(x9=1), "x9", "unknown feature"),
    "string for number": (good_row(**{"pixel 7": "3.0"}), "pixel 7", "expected a number"),
    "bool for number": (good_row(x1=True), "x1", "expected a number"),
    "null for number": (good_row(x1=None), "x1", "expected a number"),
    "NaN": (good_row(model_config=float("nan")), "model_config", "finite"),
    "inf": (good_row(x1=float("inf")), "x1", "finite"),
    "beyond float32": (good_row(x1=-1e39), "x1", "float32"),
    "float for category": (good_row(color=1.5), "color", "expected a string"),
    "bool for category": (good_row(color=False), "color", "expected a string"),
    "list for category": (good_row(color=["red"]), "color", "expected a string"),
}


@pytest.mark.parametrize("case", BAD_ROWS, ids=list(BAD_ROWS))
def test_bad_value_names_row_and_feature(schema, case):
    row, feature, words = BAD_ROWS[case]
    err = rejection(schema, {"rows": [good_row(), row]})
    assert err.status == 422
    [detail] = err.detail
    assert detail["loc"] == f"rows.1.{feature}"
    assert words in detail["msg"]
    assert f"rows.1.{feature}" in err.error


@pytest.mark.parametrize("row", [[1.5, 2, "red"], [1.5, 2, -3.0, "red", 0]], ids=["short", "long"])
def test_list_row_of_wrong_length(schema, row):
    err = rejection(schema, {"rows": [row]})
    assert err.detail == [{"loc": "rows.0", "msg": err.detail[0]["msg"]}]
    assert f"expected 4 values in feature order [{', '.join(NAMES)}], got {len(row)}" in err.detail[0]["msg"]


@pytest.mark.parametrize(
    ("payload", "loc", "words"),
    [
        ({"rows": []}, "rows", "empty"),
        ({"rows": [good_row()] * 6}, "rows", "limit of 5"),
        ({"rows": good_row()}, "rows", "expected a list of rows"),
        ({"rows": ["x1"]}, "rows.0", "expected an object"),
        ({}, "rows", "required key is missing"),
        ({"rows": [good_row()], "version": "v2"}, "version", "unknown key"),
        ([good_row()], "body", "expected a JSON object"),
    ],
    ids=["empty", "too many", "rows not a list", "row not a row", "no rows", "extra key", "not an object"],
)
def test_bad_body_shape(schema, payload, loc, words):
    err = rejection(schema, payload)
    assert err.status == 422
    assert err.detail[0]["loc"] == loc and words in err.detail[0]["msg"]


def test_every_problem_is_counted_but_the_list_is_capped(schema):
    rows = [{"x9": 1} for _ in range(5)]  # 4 missing and 1 unknown feature each
    err = rejection(schema, {"rows": rows})
    assert "(and 24 more)" in err.error
    assert len(err.detail) == MAX_DETAIL + 1
    assert "more problem(s) not listed" in err.detail[-1]["msg"]


@pytest.mark.parametrize(
    ("body", "content_type", "status", "words"),
    [
        (b'{"rows": [', "application/json", 400, "not valid JSON"),
        (b"\xff\xfe", "application/json", 400, "not valid JSON"),
        (b"  ", "application/json", 400, "empty"),
        (b'{"rows": []}', "text/plain", 415, "application/json"),
        (b"[" * 100_000, "application/json", 400, "not valid JSON"),
    ],
    ids=["truncated", "not utf-8", "blank", "text/plain", "deeply nested"],
)
def test_unparseable_body(body, content_type, status, words):
    with pytest.raises(RequestError) as caught:
        parse_json(body, content_type)
    assert caught.value.status == status and words in caught.value.error


def test_nan_in_json_text_is_named(schema):
    err = rejection(schema, parse_json(b'{"rows": [[1, NaN, 2, "red"]]}', "application/json; charset=utf-8"))
    assert err.detail[0]["loc"] == "rows.0.model_config"


def test_json_schema_and_example(schema):
    body = schema.json_schema()
    rows = body["properties"]["rows"]
    assert (rows["minItems"], rows["maxItems"]) == (1, 5)
    object_row, list_row = rows["items"]["anyOf"]
    assert object_row["required"] == NAMES and object_row["additionalProperties"] is False
    assert list_row["minItems"] == list_row["maxItems"] == 4
    assert [item.get("title") for item in list_row["prefixItems"]] == NAMES
    json.dumps(schema.openapi_body())  # serialisable as part of the OpenAPI document
    assert len(schema.validate(schema.example())) == 1
