"""Reading a preprocessor back from its JSON form: format 2 (missing rules, other/missing slots, embeddings)
and format 1 (registered before them). Every malformed field is rejected with its key path.

A format-1 numeric feature reads as missing rule error without indicator (a missing cell was an error then);
a format-1 categorical feature as rule category with neither an "other" nor a "missing" slot, which keeps its
old behaviour: an unseen or missing value leaves the one-hot block all zero.
"""

from __future__ import annotations

import math
from typing import Any

from rayline.data.errors import DataError
from rayline.data.preprocess import (
    CATEGORICAL_RULES,
    FILLED,
    FORMAT_VERSION,
    NUMERIC_RULES,
    TASKS,
    CategoricalStat,
    Feature,
    NumericStat,
    Preprocessor,
)

KEYS = {"version", "task", "label", "features", "classes", "target_mean", "target_std"}
NUMERIC_KEYS = {1: {"name", "kind", "mean", "std"}, 2: {"name", "kind", "mean", "std", "missing", "fill", "indicator"}}
CATEGORICAL_KEYS = {
    1: {"name", "kind", "categories"},
    2: {"name", "kind", "categories", "missing", "other", "missing_slot", "embedding_dim"},
}


def preprocessor_from_dict(d: Any) -> Preprocessor:
    where = "preprocessor"
    check(isinstance(d, dict), where, "a mapping", d)
    unknown = sorted(set(d) - KEYS)
    check(not unknown, where, f"only the keys {sorted(KEYS)}", unknown)
    version = d.get("version")
    check(version in (1, FORMAT_VERSION), f"{where}.version", f"1 or {FORMAT_VERSION}", version)
    task = required(d, "task", where)
    check(task in TASKS, f"{where}.task", f"one of {list(TASKS)}", task)
    label = required(d, "label", where)
    check(isinstance(label, str) and label != "", f"{where}.label", "a non-empty string", label)
    raw_features = required(d, "features", where)
    ok = isinstance(raw_features, list) and len(raw_features) > 0
    check(ok, f"{where}.features", "a non-empty list", raw_features)
    features = [feature_from_dict(f, f"{where}.features[{i}]", version) for i, f in enumerate(raw_features)]
    names = [f.name for f in features]
    check(len(set(names)) == len(names), f"{where}.features", "distinct feature names", names)
    if task == "classification":
        classes = string_list(d.get("classes"), f"{where}.classes")
        check(len(classes) >= 2, f"{where}.classes", "at least two classes", classes)
        return Preprocessor(task, label, features, classes, None, None)
    mean = number(d.get("target_mean"), f"{where}.target_mean")
    std = number(d.get("target_std"), f"{where}.target_std")
    check(std >= 0, f"{where}.target_std", "a number >= 0", std)
    return Preprocessor(task, label, features, None, mean, std)


def feature_from_dict(d: Any, where: str, version: int) -> Feature:
    check(isinstance(d, dict), where, "a mapping", d)
    name = required(d, "name", where)
    check(isinstance(name, str) and name != "", f"{where}.name", "a non-empty string", name)
    kind = required(d, "kind", where)
    check(kind in ("numeric", "categorical"), f"{where}.kind", "'numeric' or 'categorical'", kind)
    allowed = (NUMERIC_KEYS if kind == "numeric" else CATEGORICAL_KEYS)[version]
    unknown = sorted(set(d) - allowed)
    check(not unknown, where, f"only the keys {sorted(allowed)} (format {version})", unknown)
    if kind == "numeric":
        return numeric_from_dict(d, where, version)
    return categorical_from_dict(d, where, version)


def numeric_from_dict(d: dict[str, Any], where: str, version: int) -> NumericStat:
    name = d["name"]
    mean = number(required(d, "mean", where), f"{where}.mean")
    std = number(required(d, "std", where), f"{where}.std")
    check(std >= 0, f"{where}.std", "a number >= 0", std)
    if version == 1:
        return NumericStat(name, mean, std)
    rule = required(d, "missing", where)
    check(rule in NUMERIC_RULES, f"{where}.missing", f"one of {list(NUMERIC_RULES)}", rule)
    fill = required(d, "fill", where)
    if rule in FILLED:
        fill = number(fill, f"{where}.fill")
    else:
        check(fill is None, f"{where}.fill", f"null (rule {rule} fills nothing)", fill)
    indicator = required(d, "indicator", where)
    check(isinstance(indicator, bool), f"{where}.indicator", "true or false", indicator)
    return NumericStat(name, mean, std, rule, fill, indicator)


def categorical_from_dict(d: dict[str, Any], where: str, version: int) -> CategoricalStat:
    name = d["name"]
    categories = string_list(required(d, "categories", where), f"{where}.categories")
    check(len(categories) > 0, f"{where}.categories", "at least one category", categories)
    if version == 1:
        return CategoricalStat(name, categories)
    rule = required(d, "missing", where)
    check(rule in CATEGORICAL_RULES, f"{where}.missing", f"one of {list(CATEGORICAL_RULES)}", rule)
    flags = {}
    for key in ("other", "missing_slot"):
        flags[key] = required(d, key, where)
        check(isinstance(flags[key], bool), f"{where}.{key}", "true or false", flags[key])
    check(rule == "category" or not flags["missing_slot"], f"{where}.missing_slot", f"false (rule {rule})", True)
    dim = required(d, "embedding_dim", where)
    ok = dim is None or (isinstance(dim, int) and not isinstance(dim, bool) and dim > 0)
    check(ok, f"{where}.embedding_dim", "null or a positive integer", dim)
    return CategoricalStat(name, categories, rule, flags["other"], flags["missing_slot"], dim)


def check(ok: bool, where: str, expected: str, got: Any) -> None:
    if not ok:
        raise DataError(f"{where}: expected {expected}, got {got!r}")


def required(d: dict[str, Any], key: str, where: str) -> Any:
    if key not in d:
        raise DataError(f"{where}.{key}: required key is missing")
    return d[key]


def number(value: Any, where: str) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    check(ok, where, "a finite number", value)
    return float(value)


def string_list(value: Any, where: str) -> list[str]:
    ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    check(ok, where, "a list of strings", value)
    check(len(set(value)) == len(value), where, "distinct strings", value)
    return list(value)
