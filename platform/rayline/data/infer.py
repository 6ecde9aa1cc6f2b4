"""Resolve `features: auto` against the source: every column but the label and data.exclude, kinds from the
Arrow schema; ids and columns no feature kind reads are left out with the reason.

The rules:
- strings, booleans and dictionary columns are categorical; integers, floats and decimals are numeric (an
  integer column with few distinct values stays numeric: a code such as a zip or a class number needs
  kind: categorical written out, which `rayline validate --data` makes a one-word edit);
- dates, times, timestamps and durations, lists, structs, maps and binary columns are left out, and so is a
  column with no value in the rows read (Arrow type null);
- a column that looks like an id is left out (looks_like_id says when).
Only the first SAMPLE_ROWS rows are read, by pyarrow on this machine: no Ray and no cluster.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import yaml

from rayline.config import DataConfig, FeatureConfig, FeatureKind, PipelineConfig, check_model_inputs
from rayline.data.errors import DataError
from rayline.data.files import SourceFiles, resolve_source
from rayline.data.read import read_sample
from rayline.data.schema import check_schema, is_number, is_text

SAMPLE_ROWS = 10_000
"""Rows read to infer features and spot ids (from the first files, in listing order)."""
MIN_ROWS = 20
"""Fewer rows than this prove nothing about a column without an id-like name."""
UNIQUE_SHARE = 0.95
"""A string column with at least this share of distinct values among its rows is an id or free text."""
ID_WORDS = frozenset({"id", "ids", "uid", "uuid", "guid", "index", "idx", "key", "pk", "rowid", "unnamed"})
"""Words of a column name (split at _, -, spaces and camelCase) that say it may be an id."""

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeftOut:
    name: str
    why: str
    """In a word or two, for the one-line warning: "id", "date or time", ..."""
    reason: str


@dataclass(frozen=True)
class Inference:
    """What features: auto makes of a source: the features, and every other column with why it is out."""

    features: list[FeatureConfig]
    left_out: list[LeftOut]
    """Columns features: auto left out itself (ids, types no feature kind reads), in source order."""
    excluded: list[str]
    """Columns data.exclude named."""
    schema: pa.Schema
    """The source's columns as read (partition columns last)."""
    partitions: list[str]
    rows: int
    """Rows read to infer them."""


def resolve_features(data_cfg: DataConfig) -> DataConfig:
    """The data config with a concrete feature list (unchanged when features are listed already); the columns
    features: auto leaves out are logged as one warning line."""
    if data_cfg.resolved:
        return data_cfg
    inference = infer_features(data_cfg)
    if inference.left_out:
        logger.warning(left_out_line(data_cfg.source, inference.left_out))
    return with_features(data_cfg, inference.features)


def infer_features(data_cfg: DataConfig) -> Inference:
    """Apply features: auto's rules to the source's first rows (data.features itself is not read)."""
    source = data_cfg.source
    files = resolve_source(source, data_cfg.format)
    sample = read_sample(files, SAMPLE_ROWS, source)
    check_columns(sample, data_cfg)
    features, left_out = [], []
    for field in sample.schema:
        if field.name == data_cfg.label or field.name in data_cfg.exclude:
            continue
        out = not_a_feature(field, sample.column(field.name), partition=field.name in files.partitions)
        if out is None:
            features.append(FeatureConfig(name=field.name, kind=kind_of(field.type)))
        else:
            left_out.append(out)
    if not features:
        reasons = "; ".join(f"{c.name!r} {c.reason}" for c in left_out) or "none besides the label and data.exclude"
        raise DataError(f"{source}: features: auto found no feature column; the other columns: {reasons}")
    return Inference(features, left_out, list(data_cfg.exclude), sample.schema, list(files.partitions), len(sample))


def check_columns(sample: pa.Table, data_cfg: DataConfig) -> None:
    source, names = data_cfg.source, sample.column_names
    if len(sample) == 0:
        raise DataError(f"{source}: no data rows (an empty table or only a header) to infer features from")
    if data_cfg.label not in names:
        raise DataError(f"{source}: column(s) [{data_cfg.label!r}] not found; the source has columns {names}")
    unknown = [name for name in data_cfg.exclude if name not in names]
    if unknown:
        raise DataError(f"{source}: data.exclude names column(s) {unknown} that the source lacks; it has {names}")


def with_features(data_cfg: DataConfig, features: list[FeatureConfig]) -> DataConfig:
    # Validated again, as every rank re-validates the config: an explicit list takes no data.exclude.
    update = {"features": [f.model_dump() for f in features], "exclude": []}
    return DataConfig.model_validate(data_cfg.model_dump() | update)


def kind_of(t: pa.DataType) -> FeatureKind | None:
    """The feature kind features: auto gives a column of this Arrow type; None for types no kind reads."""
    if is_text(t) or pa.types.is_boolean(t) or pa.types.is_dictionary(t):
        return "categorical"
    if is_number(t):
        return "numeric"
    return None


def not_a_feature(field: pa.Field, column: pa.ChunkedArray, *, partition: bool) -> LeftOut | None:
    """Why features: auto leaves this column out, or None to keep it."""
    name, t = field.name, field.type
    if not name:
        return LeftOut(name, "no name", "has no name in the header (an index written by pandas' to_csv?)")
    if pa.types.is_null(t):
        return LeftOut(name, "no values", "has no values in the rows read (every cell is empty)")
    if pa.types.is_temporal(t):
        reason = f"is a date or time ({t}), which no feature kind reads; derive numbers from it in the data"
        return LeftOut(name, "date or time", reason)
    if kind_of(t) is None:
        return LeftOut(name, f"type {t}", f"has type {t}, which no feature kind reads (numbers, strings, booleans do)")
    # A partition value is shared by every row of its files: never an id.
    return None if partition else looks_like_id(name, column)


def looks_like_id(name: str, column: pa.ChunkedArray) -> LeftOut | None:
    """Why the column looks like an id (a value per row, which a model can only memorise), or None.

    Among its non-empty values in the rows read: a string, integer or whole-number float column named like
    an id (ID_WORDS) whose values all differ; a string column with at least UNIQUE_SHARE distinct values
    (MIN_ROWS rows or more; this also catches free text); an integer column, MIN_ROWS rows or more, holding
    each number of a run lo..hi exactly once (a row number). Other numbers, booleans and partition columns
    are never ids.
    """
    values = column.drop_null()
    if pa.types.is_dictionary(values.type):
        values = values.cast(values.type.value_type)
    if is_text(values.type):
        values = values.filter(pc.not_equal(values, ""))  # a CSV's empty cell in a text column is missing
    n = len(values)
    if n < 2:
        return None
    distinct = pc.count_distinct(values).as_py()
    named = bool(ID_WORDS & name_words(name))
    if is_text(values.type):
        if named and distinct == n:
            return LeftOut(name, "id", f"looks like an id: named like one, a different value in each of {n} rows read")
        if n >= MIN_ROWS and distinct >= UNIQUE_SHARE * n:
            reason = f"looks like an id or free text: {distinct} different values in {n} rows read"
            return LeftOut(name, "id or free text", reason)
        return None
    whole = pa.types.is_integer(values.type) or (pa.types.is_floating(values.type) and all_whole(values))
    if not whole or distinct < n:
        return None
    if named:
        return LeftOut(name, "id", f"looks like an id: named like one, a different number in each of {n} rows read")
    low, high = (v.as_py() for v in pc.min_max(values).values())
    if pa.types.is_integer(values.type) and n >= MIN_ROWS and high - low + 1 == n:
        reason = f"looks like a row number: its {n} rows read hold each whole number from {low} to {high} once"
        return LeftOut(name, "row number", reason)
    return None


def name_words(name: str) -> set[str]:
    """customerID, customer_id and Customer Id all give {"customer", "id"}."""
    return {w.lower() for w in re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+", name)}


def all_whole(values: pa.ChunkedArray) -> bool:
    return bool(pc.all(pc.equal(values, pc.floor(values))).as_py())


def left_out_line(source: str, left_out: list[LeftOut]) -> str:
    named = ", ".join(f"{c.name!r} ({c.why})" for c in left_out)
    return f"features: auto left out {named} of {source}; `rayline validate PIPELINE --data` says why"


# ---------------------------------------------------------------- rayline validate --data


def describe_features(cfg: PipelineConfig | DataConfig) -> str:
    """The source's columns as the pipeline uses them: the feature list with kinds as a YAML block to paste
    under data:, the label, and every column left out with why. Reads the first rows only (no Ray); raises
    the DataError a run would raise for a missing column or a column of the wrong type."""
    data_cfg = cfg.data if isinstance(cfg, PipelineConfig) else cfg
    files = resolve_source(data_cfg.source, data_cfg.format)
    if data_cfg.resolved:
        inference = listed_features(data_cfg, files)
        heading = "# features as listed in data.features, checked against the source's columns:"
    else:
        inference = infer_features(data_cfg)
        heading = "# features: auto makes these; to fix them, paste this under data: in place of features: auto"
        if data_cfg.exclude:
            heading += " and exclude:"
    resolved = with_features(data_cfg, inference.features)
    check_schema(inference.schema, resolved, data_cfg.source)
    if isinstance(cfg, PipelineConfig):
        check_model_inputs(cfg.model_copy(update={"data": resolved}))  # as a run checks it, before any data
    return "\n".join(
        [
            f"# source: {data_cfg.source} ({files.format}, {len(files.paths)} file(s); {inference.rows} rows read)",
            f"# label: {data_cfg.label} ({data_cfg.task}, {inference.schema.field(data_cfg.label).type})",
            heading,
            *feature_block(inference),
            *left_out_block(inference),
        ]
    )


def listed_features(data_cfg: DataConfig, files: SourceFiles) -> Inference:
    sample = read_sample(files, SAMPLE_ROWS, data_cfg.source)
    check_columns(sample, data_cfg)
    used = {f.name for f in data_cfg.features} | {data_cfg.label}
    unused = [LeftOut(name, "not listed", "is not listed") for name in sample.column_names if name not in used]
    return Inference(list(data_cfg.features), unused, [], sample.schema, list(files.partitions), len(sample))


def feature_block(inference: Inference) -> list[str]:
    items = [
        yaml.safe_dump(
            {"name": f.name, "kind": f.kind}, default_flow_style=True, sort_keys=False, width=1 << 20
        ).strip()
        for f in inference.features
    ]
    width = max(len(item) for item in items)
    lines = ["features:"]
    for item, f in zip(items, inference.features, strict=True):
        note = str(inference.schema.field(f.name).type)
        if f.name in inference.partitions:
            note += ", from key=value folders"
        lines.append(f"  - {item.ljust(width)}  # {note}")
    return lines


def left_out_block(inference: Inference) -> list[str]:
    lines = [f"#   {c.name!r} {c.reason}" for c in inference.left_out]
    lines = ["# left out:", *lines] if lines else []
    if inference.excluded:
        lines.append(f"# left out by data.exclude: {', '.join(repr(name) for name in inference.excluded)}")
    return lines
