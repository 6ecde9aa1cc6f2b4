"""prepare_datasets with features: auto on the shared cluster: a mixed-type CSV with empty cells, and a Spark
directory whose partition folders become features."""

import numpy as np
import pandas as pd

from rayline.config import DataConfig
from rayline.data import prepare_datasets
from spark_layout import write_spark_table

ROWS = 120


def customers() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    income = rng.normal(50.0, 10.0, ROWS).round(2)
    return pd.DataFrame(
        {
            "customer_id": rng.permutation(ROWS) + 5000,
            "age": rng.integers(18, 80, ROWS),
            "income": np.where(np.arange(ROWS) % 10 == 3, np.nan, income),  # empty cells
            "city": rng.choice(["paris", "lyon", "nice", None], ROWS),
            "member": rng.choice([True, False], ROWS),
            "signed_up": pd.date_range("2024-01-01", periods=ROWS, freq="D").astype(str),
            "email": [f"user{i}@example.com" for i in range(ROWS)],
            "churned": rng.choice(["yes", "no"], ROWS),
        }
    )


def test_features_auto_on_a_mixed_type_csv(ray_cluster, tmp_path):
    path = tmp_path / "customers.csv"
    customers().to_csv(path, index=False)
    cfg = DataConfig(source=str(path), task="classification", label="churned", exclude=["age"])
    prepared = prepare_datasets(cfg, storage_root=str(tmp_path / "store"))
    resolved = prepared.data_cfg
    assert [(f.name, f.kind) for f in resolved.features] == [
        ("income", "numeric"),
        ("city", "categorical"),
        ("member", "categorical"),
    ]
    assert [f.name for f in prepared.preprocessor.features] == ["income", "city", "member"]
    assert sum(prepared.num_rows.values()) == ROWS
    x, _ = next(prepared.train.iter_arrays(batch_size=8))
    assert x.shape[1] == prepared.preprocessor.num_inputs
    assert np.isfinite(x).all()  # the empty income cells were imputed


def test_features_auto_on_a_spark_directory_uses_partition_columns(ray_cluster, tmp_path):
    rng = np.random.default_rng(4)
    df = pd.DataFrame(
        {
            "x": rng.normal(size=ROWS).round(3),
            "store": rng.choice(["a", "b", "c"], ROWS),
            "month": rng.choice([1, 2, 3], ROWS),
            "sales": rng.normal(100.0, 5.0, ROWS).round(2),
        }
    )
    write_spark_table(df, tmp_path / "sales", partition_by=("store", "month"))
    cfg = DataConfig(source=str(tmp_path / "sales"), task="regression", label="sales")
    prepared = prepare_datasets(cfg, storage_root=str(tmp_path / "store"))
    assert [(f.name, f.kind) for f in prepared.data_cfg.features] == [
        ("x", "numeric"),
        ("store", "categorical"),
        ("month", "numeric"),
    ]
    assert sum(prepared.num_rows.values()) == ROWS
