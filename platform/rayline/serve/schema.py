"""The HTTP request schema of a served model, built from its saved feature schema. No Ray here.

`POST /predict` takes `{"rows": [...]}`. Each row is an object `{feature: value}` naming every
feature exactly once, or a list of values in feature order. Numeric features take finite numbers;
categorical ones take strings (integer codes are accepted and turned into their text). A feature whose
schema entry is "nullable" (a numeric one with an imputer: missing rule median, mean or constant; a
categorical one with rule category) also takes null, and an object row may leave it out: the
preprocessor fills it in as in training. Every problem becomes a `RequestError` whose detail names the
row and the feature, e.g. `rows.3.pixel_7`.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Optional

import numpy as np
import pandas as pd
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    create_model,
)

from rayline.serve.http import error_body

MAX_ROWS = 1024
"""Most rows one request may carry; larger requests are rejected (422) and should be split."""
MAX_DETAIL = 20
"""Most problems listed in one error response; the summary still counts them all."""


class RequestError(Exception):
    """A client mistake: the HTTP status and a JSON body saying what was wrong and where."""

    def __init__(self, status: int, error: str, detail: list[dict[str, str]] | None = None):
        super().__init__(error)
        self.status = status
        self.error = error
        self.detail = detail or []

    def to_json(self) -> dict[str, Any]:
        return error_body(self.error, self.detail)


def problem(loc: str, msg: str) -> dict[str, str]:
    return {"loc": loc, "msg": msg}


def invalid(status: int, problems: list[dict[str, str]]) -> RequestError:
    first = problems[0]
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    detail = problems[:MAX_DETAIL]
    if len(problems) > MAX_DETAIL:
        detail.append(problem("rows", f"{len(problems) - MAX_DETAIL} more problem(s) not listed"))
    return RequestError(status, f"invalid request: {first['loc']}: {first['msg']}{more}", detail)


# ---------------------------------------------------------------- per-feature value types


def category_text(value: Any) -> Any:
    """Integer codes (3, or 3.0 as many JSON writers send it) become "3", the key the preprocessor uses."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return str(int(value))
    return value


FLOAT32_MAX = float(np.finfo(np.float32).max)
NUMERIC_MESSAGES = {
    "float_type": "expected a number",
    "finite_number": "expected a finite number",
    "less_than_equal": "expected a number the model's float32 can hold (|x| <= 3.4e38)",
    "greater_than_equal": "expected a number the model's float32 can hold (|x| <= 3.4e38)",
}
CATEGORICAL_MESSAGES = {"string_type": "expected a string (or an integer) category"}


def numeric_type(name: str) -> Any:
    schema = {
        "type": "number",
        "minimum": -FLOAT32_MAX,
        "maximum": FLOAT32_MAX,
        "title": name,
        "description": "finite number within float32 range",
    }
    limits = Field(strict=True, allow_inf_nan=False, ge=-FLOAT32_MAX, le=FLOAT32_MAX)
    return Annotated[float, limits, WithJsonSchema(schema)]


def categorical_type(name: str, categories: list[str], other: bool = False, empty: bool = True) -> Any:
    """`empty`: whether "" (a missing value, like null) is accepted."""
    shown = ", ".join(categories[:20]) + (", ..." if len(categories) > 20 else "")
    rest = 'other values share one "other" category' if other else "other values match none of them"
    schema = {
        "anyOf": [{"type": "string"} if empty else {"type": "string", "minLength": 1}, {"type": "integer"}],
        "title": name,
        "description": f"category seen in training: {shown}; {rest}",
        "examples": categories[:3],
    }
    limits = Field(strict=True) if empty else Field(strict=True, min_length=1)
    return Annotated[str, BeforeValidator(category_text), limits, WithJsonSchema(schema)]


def nullable(kind: Any, schema: dict[str, Any]) -> Any:
    """The value type, or null; the JSON schema says so (OpenAPI 3.1 takes "type": "null")."""
    either = {"anyOf": [schema, {"type": "null"}], "title": schema["title"]}
    either["description"] = f"{schema['description']}; null or left out: filled in as in training"
    return Annotated[Optional[kind], WithJsonSchema(either)]  # noqa: UP045 (X | None breaks on Annotated)


def refused_missing(name: str, rule: str | None) -> str:
    if rule == "drop_row":
        return f"{name!r} may not be null or left out: its missing rule is drop_row (such rows get no prediction)"
    if rule == "error":
        return f"{name!r} may not be null or left out: its missing rule is error"
    return f"required feature {name!r} is missing"


def describe(value: Any) -> str:
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    return f"{text} ({type(value).__name__})"


# ---------------------------------------------------------------- the schema


class RequestSchema:
    """Validates `/predict` bodies against one model's features and turns them into a DataFrame."""

    def __init__(self, feature_schema: list[dict[str, Any]], *, max_rows: int = MAX_ROWS):
        if not feature_schema:
            raise ValueError("a model needs at least one feature to build a request schema")
        self.features = feature_schema
        self.names = [f["name"] for f in feature_schema]
        self.kinds = {f["name"]: f["kind"] for f in feature_schema}
        self.rules = {f["name"]: f.get("missing") for f in feature_schema}
        self.nullable = {f["name"]: bool(f.get("nullable", False)) for f in feature_schema}
        self.max_rows = max_rows
        self.row_model = self._build_row_model()

    def _build_row_model(self) -> type[BaseModel]:
        fields = {}
        for i, f in enumerate(self.features):
            if f["kind"] == "numeric":
                kind = numeric_type(f["name"])
            else:
                other, empty = bool(f.get("other", False)), f.get("missing", "category") == "category"
                kind = categorical_type(f["name"], list(f["categories"]), other, empty)
            # Positional field names plus aliases: feature names need not be Python identifiers
            # and may collide with BaseModel attributes (e.g. "model_config", "copy").
            if self.nullable[f["name"]]:
                schema = kind.__metadata__[-1].json_schema
                fields[f"f{i}"] = (nullable(kind, schema), Field(default=None, alias=f["name"]))
            else:
                fields[f"f{i}"] = (kind, Field(alias=f["name"]))
        config = ConfigDict(extra="forbid", validate_by_name=False, validate_by_alias=True)
        return create_model("Row", __config__=config, **fields)

    # -------------------------------------------------------- parsing and validation

    def parse(self, body: bytes, content_type: str | None = None) -> pd.DataFrame:
        """The rows of a raw request body as a DataFrame with one column per feature, in model order."""
        return self.validate(parse_json(body, content_type))

    def validate(self, payload: Any) -> pd.DataFrame:
        rows = self._rows_of(payload)
        problems: list[dict[str, str]] = []
        values: list[list[Any]] = []
        for i, row in enumerate(rows):
            checked = self._validate_row(row, f"rows.{i}", problems)
            if checked is not None:
                values.append(checked)
        if problems:
            raise invalid(422, problems)
        return pd.DataFrame(values, columns=self.names)

    def _rows_of(self, payload: Any) -> list[Any]:
        if not isinstance(payload, dict):
            raise invalid(422, [problem("body", f'expected a JSON object {{"rows": [...]}}, got {describe(payload)}')])
        unknown = sorted(set(payload) - {"rows"})
        if unknown:
            raise invalid(422, [problem(key, 'unknown key; the body holds only "rows"') for key in unknown])
        if "rows" not in payload:
            raise invalid(422, [problem("rows", 'required key is missing; send {"rows": [row, ...]}')])
        rows = payload["rows"]
        if not isinstance(rows, list):
            raise invalid(422, [problem("rows", f"expected a list of rows, got {describe(rows)}")])
        if not rows:
            raise invalid(422, [problem("rows", "the list is empty; send at least one row")])
        if len(rows) > self.max_rows:
            msg = f"{len(rows)} rows is more than the limit of {self.max_rows} per request; split it"
            raise invalid(422, [problem("rows", msg)])
        return rows

    def _validate_row(self, row: Any, loc: str, problems: list[dict[str, str]]) -> list[Any] | None:
        """The row's values in feature order, or None after appending what is wrong with it."""
        if isinstance(row, list):
            if len(row) != len(self.names):
                msg = f"expected {len(self.names)} values in feature order {self._preview()}, got {len(row)}"
                problems.append(problem(loc, msg))
                return None
            row = dict(zip(self.names, row, strict=True))
        elif not isinstance(row, dict):
            msg = f"expected an object {{feature: value}} or a list of {len(self.names)} values, got {describe(row)}"
            problems.append(problem(loc, msg))
            return None
        try:
            checked = self.row_model.model_validate(row)
        except ValidationError as err:
            problems.extend(self._explain(err, loc))
            return None
        return [getattr(checked, f"f{i}") for i in range(len(self.names))]

    def _explain(self, err: ValidationError, loc: str) -> list[dict[str, str]]:
        problems = []
        for e in err.errors(include_url=False):
            name = str(e["loc"][0]) if e["loc"] else ""
            where = f"{loc}.{name}" if name else loc
            problems.append(problem(where, self._message(e, name)))
        return problems

    def _message(self, e: dict[str, Any], name: str) -> str:
        kind = e["type"]
        missing_value = e["input"] is None or kind in ("string_too_short", "too_short")
        if kind == "missing" or (missing_value and self.rules.get(name) is not None):
            return refused_missing(name, self.rules.get(name))
        if kind == "extra_forbidden":
            return f"unknown feature {name!r}; expected {self._preview()}"
        messages = NUMERIC_MESSAGES if self.kinds.get(name) == "numeric" else CATEGORICAL_MESSAGES
        return f"{messages.get(kind, e['msg'])}, got {describe(e['input'])}"

    def _preview(self, limit: int = 10) -> str:
        shown = ", ".join(self.names[:limit]) + (", ..." if len(self.names) > limit else "")
        return f"[{shown}]"

    # -------------------------------------------------------- documentation

    def openapi_body(self) -> dict[str, Any]:
        """The `requestBody` object of `/predict` for the OpenAPI document."""
        return {
            "required": True,
            "content": {"application/json": {"schema": self.json_schema(), "example": self.example()}},
        }

    def json_schema(self) -> dict[str, Any]:
        object_row = self.row_model.model_json_schema(by_alias=True)
        object_row.pop("title", None)
        list_row = {
            "type": "array",
            "prefixItems": [object_row["properties"][n] for n in self.names],
            "items": False,
            "minItems": len(self.names),
            "maxItems": len(self.names),
            "description": "values in feature order",
        }
        rows = {
            "type": "array",
            "minItems": 1,
            "maxItems": self.max_rows,
            "items": {"anyOf": [object_row, list_row]},
        }
        return {
            "type": "object",
            "properties": {"rows": rows},
            "required": ["rows"],
            "additionalProperties": False,
        }

    def example(self) -> dict[str, Any]:
        row = {f["name"]: f["categories"][0] if f["kind"] == "categorical" else 0.0 for f in self.features}
        return {"rows": [row]}


def parse_json(body: bytes, content_type: str | None = None) -> Any:
    """The JSON value of a request body; NaN and Infinity parse to floats so validation can name them."""
    media = (content_type or "application/json").split(";")[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        msg = f"content type {media!r} is not supported; send application/json"
        raise RequestError(415, msg, [problem("headers.content-type", msg)])
    if not body.strip():
        msg = 'the request body is empty; send JSON like {"rows": [...]}'
        raise RequestError(400, msg, [problem("body", msg)])
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        msg = f"the request body is not valid JSON: {err}"
        raise RequestError(400, msg, [problem("body", msg)]) from None
