"""features: auto without Ray: kinds from the Arrow schema, ids and unreadable types left out with the reason,
data.exclude, and the YAML block `rayline validate --data` prints."""

import datetime
import decimal
import logging

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from rayline.config import DataConfig, PipelineConfig
from rayline.data import DataError
from rayline.data.infer import (
    SAMPLE_ROWS,
    describe_features,
    infer_features,
    name_words,
    resolve_features,
)
from rayline.data.read import SAMPLE_FILES

ROWS = 60


def mixed_table(rows: int = ROWS) -> pa.Table:
    """One column of each kind features: auto must tell apart, in a shuffled but fixed order."""
    order = [(7 * i) % rows for i in range(rows)]  # 7 and 60 are coprime: a permutation of 0..59
    return pa.table(
        {
            "customer_id": pa.array([10_000 + 37 * i for i in order]),
            "row": pa.array(order),
            "age": pa.array([20 + i % 50 for i in range(rows)]),
            "rooms": pa.array([i % 4 for i in range(rows)], pa.int8()),
            "income": pa.array([1000.0 + 13.5 * i for i in order]),
            "price": pa.array([decimal.Decimal(i % 9) for i in range(rows)], pa.decimal128(6, 2)),
            "city": pa.array(["paris", "lyon", "nice"] * (rows // 3)),
            "member": pa.array([i % 2 == 0 for i in range(rows)]),
            "plan": pa.array(["basic", "pro"] * (rows // 2)).dictionary_encode(),
            "email": pa.array([f"user{i}@example.com" for i in order], pa.large_string()),
            "signed_up": pa.array([datetime.datetime(2024, 1, 1) + datetime.timedelta(hours=i) for i in order]),
            "tags": pa.array([[i % 3, 1] for i in range(rows)]),
            "photo": pa.array([b"\x89PNG"] * rows),
            "notes": pa.array([None] * rows, pa.null()),
            "churned": pa.array(["yes", "no", "no"] * (rows // 3)),
        }
    )


@pytest.fixture
def mixed(tmp_path):
    path = tmp_path / "customers.parquet"
    pq.write_table(mixed_table(), path)
    return path


def config(source, label="churned", task="classification", **extra) -> DataConfig:
    return DataConfig(source=str(source), task=task, label=label, **extra)


def kinds(features) -> dict[str, str]:
    return {f.name: f.kind for f in features}


def test_kinds_come_from_the_schema_and_ids_and_unreadable_types_are_left_out(mixed):
    inference = infer_features(config(mixed))
    assert kinds(inference.features) == {
        "age": "numeric",
        "rooms": "numeric",  # an integer with four values stays numeric
        "income": "numeric",  # a float column with a value per row is no id
        "price": "numeric",
        "city": "categorical",
        "member": "categorical",
        "plan": "categorical",
    }
    why = {c.name: c.why for c in inference.left_out}
    assert why == {
        "customer_id": "id",
        "row": "row number",
        "email": "id or free text",
        "signed_up": "date or time",
        "tags": "type list<element: int64>",
        "photo": "type binary",
        "notes": "no values",
    }
    reasons = {c.name: c.reason for c in inference.left_out}
    assert reasons["customer_id"] == f"looks like an id: named like one, a different number in each of {ROWS} rows read"
    assert reasons["row"] == f"looks like a row number: its {ROWS} rows read hold each whole number from 0 to 59 once"
    assert reasons["email"] == f"looks like an id or free text: {ROWS} different values in {ROWS} rows read"
    assert "timestamp[us]" in reasons["signed_up"]
    assert inference.rows == ROWS


def test_resolve_features_returns_a_valid_explicit_config_and_logs_one_line(mixed, caplog):
    cfg = config(mixed, exclude=["age", "member"])
    with caplog.at_level(logging.WARNING, logger="rayline.data.infer"):
        resolved = resolve_features(cfg)
    assert resolved.resolved and resolved.exclude == []
    assert [f.name for f in resolved.features] == ["rooms", "income", "price", "city", "plan"]
    assert "churned" not in kinds(resolved.features)  # the label is never a feature
    # Every rank re-validates the config from JSON: the resolved one must pass as it is.
    assert DataConfig.model_validate_json(resolved.model_dump_json()) == resolved
    assert resolved.model_dump(exclude={"features", "exclude"}) == cfg.model_dump(exclude={"features", "exclude"})
    (record,) = caplog.records
    message = record.getMessage()
    assert "\n" not in message
    assert message.startswith("features: auto left out 'customer_id' (id), 'row' (row number), 'email' (id or")
    assert f"of {mixed}; `rayline validate PIPELINE --data` says why" in message


def test_an_explicit_feature_list_is_returned_unchanged(mixed):
    cfg = config(mixed, features=["age", {"name": "city", "kind": "categorical"}])
    assert resolve_features(cfg) is cfg


def test_unknown_excluded_columns_are_named_with_the_columns_that_exist(mixed):
    with pytest.raises(DataError) as err:
        resolve_features(config(mixed, exclude=["age", "salary", "zip"]))
    message = str(err.value)
    assert message.startswith(f"{mixed}: data.exclude names column(s) ['salary', 'zip'] that the source lacks")
    assert "'customer_id', 'row', 'age'" in message


def test_a_missing_label_is_named(mixed):
    with pytest.raises(DataError, match=r"column\(s\) \['target'\] not found; the source has columns \['customer_id'"):
        resolve_features(config(mixed, label="target"))


def test_no_feature_left_is_an_error_that_says_why_for_each_column(tmp_path):
    path = tmp_path / "ids.csv"
    path.write_text("id,label\n" + "".join(f"{i},{i % 2}\n" for i in range(30)))
    with pytest.raises(DataError) as err:
        resolve_features(config(path, label="label"))
    assert "features: auto found no feature column; the other columns: 'id' looks like an id" in str(err.value)


def test_an_empty_source_is_an_error(tmp_path):
    path = tmp_path / "header.csv"
    path.write_text("x,label\n")
    with pytest.raises(DataError, match="no data rows .* to infer features from"):
        resolve_features(config(path, label="label"))


def test_csv_empty_cells_keep_the_column_type_and_an_empty_column_is_left_out(tmp_path):
    path = tmp_path / "holes.csv"
    # pandas' to_csv with its index: an unnamed first column; empty cells in every column.
    rows = [
        f"{i},{'' if i % 4 == 0 else 2.5},{'' if i % 4 == 1 else i % 3},{'' if i % 4 == 2 else 'red'},,{i % 2}"
        for i in range(40)
    ]
    path.write_text(",x,n,color,blank,label\n" + "\n".join(rows) + "\n")
    inference = infer_features(config(path, label="label"))
    assert kinds(inference.features) == {"x": "numeric", "n": "numeric", "color": "categorical"}
    assert [str(inference.schema.field(name).type) for name in ("x", "n", "color")] == ["double", "int64", "string"]
    assert {c.name: c.why for c in inference.left_out} == {"": "no name", "blank": "no values"}


def test_json_lines_are_sampled_too(tmp_path):
    path = tmp_path / "rows.jsonl"
    pd.DataFrame({"size": [1.5, 2.0] * 15, "zone": ["a", "b", "c"] * 10, "y": [1, 0] * 15}).to_json(
        path, orient="records", lines=True
    )
    assert kinds(infer_features(config(path, label="y")).features) == {"size": "numeric", "zone": "categorical"}


@pytest.mark.parametrize(
    ("values", "name", "why"),
    [
        ([100 + 2 * i for i in range(30)], "order_no", None),  # distinct integers, no id-like name, not a run
        ([5 * i for i in range(30)], "amount", None),
        (list(range(30)), "step", "row number"),
        ([3, 9, 4], "PatientID", "id"),  # named like an id: a few rows are enough
        ([3.0, 9.0, 4.0], "user_id", "id"),  # a whole-number float, as pandas stores ids with gaps
        ([3.5, 9.0, 4.0], "user_id", None),
        ([1, 1, 2], "id", None),  # repeats: not an id
        ([f"s{i}" for i in range(19)], "name", None),  # too few rows to judge a string by its values
        ([f"s{i}" for i in range(19)], "sku", None),
        ([f"s{i}" for i in range(19)], "Sku Key", "id"),
        ([f"s{i}" for i in range(19)] + ["s0"], "name", "id or free text"),  # 19 of 20: 95 %
        ([f"s{i % 18}" for i in range(20)], "name", None),
        ([True, False] * 20, "is_id", None),  # booleans are never ids
    ],
)
def test_id_rules(tmp_path, values, name, why):
    rows = len(values)
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({name: values, "other": [i % 3 for i in range(rows)], "label": [0] * rows}), path)
    inference = infer_features(config(path, label="label", exclude=[]))
    found = {c.name: c.why for c in inference.left_out}
    assert found.get(name) == why


def test_name_words():
    assert name_words("customerID") == {"customer", "id"}
    assert name_words("Customer Id") == {"customer", "id"}
    assert name_words("customer_id") == {"customer", "id"}
    assert name_words("Unnamed: 0") == {"unnamed", "0"}
    assert "id" not in name_words("paid") | name_words("valid") | name_words("idle")


def test_only_the_first_rows_and_files_are_read(tmp_path):
    big = tmp_path / "big.parquet"
    pq.write_table(
        pa.table({"x": [i % 7 for i in range(SAMPLE_ROWS + 500)], "y": [0, 1] * ((SAMPLE_ROWS + 500) // 2)}), big
    )
    assert infer_features(config(big, label="y")).rows == SAMPLE_ROWS
    many = tmp_path / "many"
    many.mkdir()
    for i in range(SAMPLE_FILES + 3):
        pq.write_table(pa.table({"x": [i, i + 1], "y": [0, 1]}), many / f"part-{i:03d}.parquet")
    assert infer_features(config(many, label="y")).rows == 2 * SAMPLE_FILES


def test_files_with_different_types_are_read_as_one_promoted_schema(tmp_path):
    (tmp_path / "d").mkdir()
    pq.write_table(pa.table({"x": pa.array([None, None], pa.null()), "y": [0, 1]}), tmp_path / "d/a.parquet")
    pq.write_table(pa.table({"x": [1.5, 2.0], "y": [0, 1]}), tmp_path / "d/b.parquet")
    assert kinds(infer_features(config(tmp_path / "d", label="y")).features) == {"x": "numeric"}
    pq.write_table(pa.table({"x": ["a", "b"], "y": [0, 1]}), tmp_path / "d/c.parquet")
    with pytest.raises(DataError, match="its files disagree on a column's type"):
        infer_features(config(tmp_path / "d", label="y"))


def pasted(text: str) -> list[dict]:
    """The features: block of describe_features' output, as YAML (comment lines included)."""
    return yaml.safe_load(text)["features"]


def test_describe_prints_a_block_to_paste_into_the_yaml(mixed):
    cfg = PipelineConfig(name="churn", data=config(mixed, exclude=["age"]))
    text = describe_features(cfg)
    lines = text.splitlines()
    assert lines[0] == f"# source: {mixed} (parquet, 1 file(s); {ROWS} rows read)"
    assert lines[1] == "# label: churned (classification, string)"
    assert "  - {name: rooms, kind: numeric}       # int8" in lines
    assert "  - {name: city, kind: categorical}    # string" in lines
    assert (
        f"#   'customer_id' looks like an id: named like one, a different number in each of {ROWS} rows read" in lines
    )
    assert "# left out by data.exclude: 'age'" in lines
    # The printed block, pasted in place of features: auto, is the list a run resolves to.
    explicit = DataConfig(source=str(mixed), task="classification", label="churned", features=pasted(text))
    assert explicit.features == resolve_features(cfg.data).features
    assert describe_features(explicit).splitlines()[3:10] == lines[3:10]


def test_describe_of_an_explicit_list_names_the_unused_columns_and_checks_types(mixed):
    text = describe_features(config(mixed, features=["age", {"name": "city", "kind": "categorical"}]))
    assert "# features as listed in data.features, checked against the source's columns:" in text
    assert pasted(text) == [{"name": "age", "kind": "numeric"}, {"name": "city", "kind": "categorical"}]
    assert "#   'customer_id' is not listed" in text
    with pytest.raises(DataError, match="numeric feature column 'city' has type string"):
        describe_features(config(mixed, features=["city"]))


def test_describe_checks_the_label_type(mixed):
    with pytest.raises(DataError, match=r"label column 'churned' has type string, expected a number .* for regression"):
        describe_features(config(mixed, task="regression"))


def test_names_yaml_would_misread_are_quoted(tmp_path):
    path = tmp_path / "odd.csv"
    path.write_text("yes,1,a b: c,label\n" + "".join(f"{i % 3},{i % 5},x{i % 2},{i % 2}\n" for i in range(30)))
    text = describe_features(config(path, label="label"))
    assert [f["name"] for f in pasted(text)] == ["yes", "1", "a b: c"]


@pytest.mark.parametrize(("name", "delimiter"), [("wine.csv", ";"), ("wine.tsv", "\t"), ("wine.csv.gz", ";")])
def test_semicolon_and_tab_delimited_files_are_read_by_their_header(tmp_path, name, delimiter):
    df = pd.DataFrame({"fixed acidity": [7.4, 7.8] * 15, "colour": ["red", "white"] * 15, "quality": [5, 6] * 15})
    df.to_csv(tmp_path / name, sep=delimiter, index=False)
    inference = infer_features(config(tmp_path / name, label="quality", task="regression"))
    assert kinds(inference.features) == {"fixed acidity": "numeric", "colour": "categorical"}
