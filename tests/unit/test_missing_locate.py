"""Naming a refused cell by file and row as the file counts them (the driver-side scan), without Ray."""

import json

import numpy as np
import pandas as pd
import pytest

from rayline.data import NumericStat, Preprocessor
from rayline.data.locate import locate_refused_value

PRE = Preprocessor("regression", "price", [NumericStat("size", 0.0, 1.0, "median", 0.0)], None, 0.0, 1.0)
COLUMNS = {"size": True, "price": True}


def keep_all(df: pd.DataFrame) -> np.ndarray:
    return np.ones(len(df), dtype=bool)


def rows(bad_at: int, bad: str, n: int = 30) -> list[dict]:
    out = [{"size": str(float(i)) if i % 4 else "", "price": float(i)} for i in range(n)]
    out[bad_at]["size"] = bad
    return out


def test_csv_line_counts_the_header(tmp_path):
    pd.DataFrame(rows(0, "1.0")).to_csv(tmp_path / "a.csv", index=False)
    pd.DataFrame(rows(15, "abc")).to_csv(tmp_path / "b.csv", index=False)
    found = locate_refused_value(str(tmp_path), None, COLUMNS, PRE.transform_batch, keep_all)
    assert found == f"{tmp_path / 'b.csv'} line 17: column 'size' holds 'abc', expected a finite number"


def test_json_lines_count_from_one(tmp_path):
    (tmp_path / "x.jsonl").write_text("\n".join(json.dumps(r) for r in rows(4, "inf")) + "\n")
    found = locate_refused_value(str(tmp_path / "x.jsonl"), None, COLUMNS, PRE.transform_batch, keep_all)
    assert found == f"{tmp_path / 'x.jsonl'} line 5: column 'size' holds 'inf', expected a finite number"


def test_parquet_rows_count_from_one_and_left_out_rows_are_skipped(tmp_path):
    frame = pd.DataFrame(rows(7, "nope"))
    frame.loc[3, "size"] = "bad but unlabelled"
    frame["price"] = frame["price"].astype(object)
    frame.loc[3, "price"] = None
    frame.to_parquet(tmp_path / "x.parquet")

    def labelled(df: pd.DataFrame) -> np.ndarray:
        return df["price"].notna().to_numpy()

    found = locate_refused_value(str(tmp_path / "x.parquet"), None, COLUMNS, PRE.transform_batch, labelled)
    assert found == f"{tmp_path / 'x.parquet'} row 8: column 'size' holds 'nope', expected a finite number"


@pytest.mark.parametrize("source", ["clean.csv", "absent.csv"])
def test_nothing_found_is_none(tmp_path, source):
    pd.DataFrame(rows(0, "2.5")).to_csv(tmp_path / "clean.csv", index=False)
    assert locate_refused_value(str(tmp_path / source), None, COLUMNS, PRE.transform_batch, keep_all) is None


def test_a_semicolon_csv_in_a_partition_folder(tmp_path):
    folder = tmp_path / "region=north"
    folder.mkdir()
    pd.DataFrame(rows(2, "x")).to_csv(folder / "part-0.csv", index=False, sep=";")
    columns = {**COLUMNS, "region": False}
    found = locate_refused_value(str(tmp_path), "csv", columns, PRE.transform_batch, keep_all)
    assert found == f"{folder / 'part-0.csv'} line 4: column 'size' holds 'x', expected a finite number"
