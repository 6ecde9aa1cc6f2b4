"""Split, fit and prepare on the shared cluster: deterministic splits, statistics from train only."""

import numpy as np
import pandas as pd
import pytest

from pipelines import PIXELS, digits_source
from rayline.config import DataConfig, MissingConfig, SplitConfig
from rayline.data import (
    DataError,
    fingerprint_source,
    fit_preprocessor,
    prepare_datasets,
    read_source,
    split_dataset,
)
from rayline.data.prepare import leave_out


@pytest.fixture(scope="module")
def houses(tmp_path_factory):
    """200 rows in four CSV parts: id, size (numeric), zone (categorical), price (numeric), kind (class)."""
    rng = np.random.default_rng(0)
    df = pd.DataFrame(
        {
            "id": range(200),
            "size": rng.normal(100.0, 30.0, 200).round(2),
            "zone": rng.choice(["north", "south", "east"], 200),
            "price": rng.normal(500.0, 50.0, 200).round(2),
            "kind": rng.choice(["flat", "house"], 200),
        }
    )
    root = tmp_path_factory.mktemp("houses")
    for i in range(4):
        df.iloc[50 * i : 50 * (i + 1)].to_csv(root / f"part-{i}.csv", index=False)
    return root, df


def houses_config(root, task="classification", features=None, **split) -> DataConfig:
    return DataConfig(
        source=str(root),
        task=task,
        label="kind" if task == "classification" else "price",
        features=features or [{"name": "size"}, {"name": "zone", "kind": "categorical"}],
        split=SplitConfig(**split),
    )


def ids(ds) -> list[int]:
    return sorted(ds.to_pandas()["id"].tolist())


def test_split_is_deterministic_whatever_the_block_layout(ray_cluster, houses):
    root, _ = houses
    cfg = houses_config(root, validation=0.2, test=0.1, seed=7)
    first = split_dataset(read_source(cfg), cfg.split)
    # Another block layout of the same rows must not move any row to another split.
    again = split_dataset(read_source(cfg).repartition(5), cfg.split)
    train, validation, test = (ids(split) for split in first[:3])
    assert [train, validation, test] == [ids(split) for split in again[:3]]
    sizes = [len(train), len(validation), len(test)]
    assert sum(sizes) == 200
    assert abs(sizes[1] - 40) <= 15 and abs(sizes[2] - 20) <= 12, sizes
    assert sorted(train + validation + test) == list(range(200))
    assert first.train.columns() == ["id", "size", "zone", "price", "kind"]


def test_no_test_split_when_its_share_is_zero(ray_cluster, houses):
    root, _ = houses
    cfg = houses_config(root, validation=0.25, test=0.0)
    splits = split_dataset(read_source(cfg), cfg.split)
    assert splits.test is None
    assert splits.train.count() + splits.validation.count() == 200


def test_too_few_rows_for_a_split_says_which_split(ray_cluster, tmp_path, houses):
    _, df = houses
    df.iloc[:3].to_csv(tmp_path / "three.csv", index=False)
    cfg = houses_config(tmp_path / "three.csv", validation=0.1, test=0.1)
    with pytest.raises(DataError, match=r"split is empty: the source has 3 row\(s\)"):
        split_dataset(read_source(cfg), cfg.split)


def test_statistics_come_from_the_training_split_only(ray_cluster, houses):
    root, df = houses
    cfg = houses_config(root, task="regression")
    splits = split_dataset(read_source(cfg), cfg.split)
    train = splits.train.to_pandas()
    pre = fit_preprocessor(splits.train, cfg)

    size, zone = pre.features
    assert size.mean == pytest.approx(train["size"].mean())
    assert size.std == pytest.approx(train["size"].std(ddof=0))
    assert size.mean != pytest.approx(df["size"].mean(), abs=1e-9)
    assert zone.categories == sorted(train["zone"].unique())
    assert pre.target_mean == pytest.approx(train["price"].mean())
    assert pre.target_std == pytest.approx(train["price"].std(ddof=0))


def test_prepare_digits(ray_cluster, tmp_path):
    cfg = DataConfig(source=str(digits_source(tmp_path)), task="classification", label="label", features=PIXELS)
    data = prepare_datasets(cfg)

    assert sum(data.num_rows.values()) == 1797
    assert abs(data.num_rows["validation"] - 270) < 50 and abs(data.num_rows["test"] - 270) < 50
    assert data.preprocessor.classes == [str(i) for i in range(10)]
    assert data.preprocessor.num_inputs == 64
    assert data.fingerprint == fingerprint_source(cfg)
    train = data.train.take_batch(2000, batch_format="numpy")
    assert train["x"].shape == (data.num_rows["train"], 64)
    assert train["x"].dtype == np.float32
    assert train["y"].dtype == np.int64
    assert set(train["y"].tolist()) == set(range(10))
    # Standardised with train statistics: every non-constant column has mean 0 and std 1 on train.
    varying = train["x"].std(axis=0) > 0
    np.testing.assert_allclose(train["x"].mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(train["x"][:, varying].std(axis=0), 1.0, atol=1e-4)
    raw_test = data.raw_test.to_pandas()
    assert list(raw_test.columns) == [*PIXELS, "label"]
    assert len(raw_test) == data.num_rows["test"] == data.test.count()


def test_prepare_regression_standardises_the_target_and_one_hots_categories(ray_cluster, houses):
    root, _ = houses
    data = prepare_datasets(houses_config(root, task="regression", test=0.0))
    assert data.test is None and data.raw_test is None and data.num_rows["test"] == 0
    train = data.train.take_batch(200, batch_format="numpy")
    assert train["x"].shape == (data.num_rows["train"], 1 + 3)
    assert train["y"].dtype == np.float32
    assert abs(float(train["y"].mean())) < 1e-5
    np.testing.assert_array_equal(train["x"][:, 1:].sum(axis=1), 1.0)  # one zone per row
    decoded = data.preprocessor.decode(train["y"][:3])
    assert all(300 < d["value"] < 700 for d in decoded)


def gappy(df: pd.DataFrame) -> pd.DataFrame:
    """Every 5th size and every 7th zone empty; every 11th label (kind) empty."""
    df = df.astype({"size": object, "zone": object, "kind": object})
    df.loc[df.index[::5], "size"] = None
    df.loc[df.index[1::7], "zone"] = None
    df.loc[df.index[2::11], "kind"] = None
    return df


def test_missing_cells_are_imputed_with_the_training_median_and_unlabelled_rows_left_out(ray_cluster, tmp_path, houses):
    _, df = houses
    gappy(df).to_csv(tmp_path / "gaps.csv", index=False)
    cfg = houses_config(tmp_path / "gaps.csv").model_copy(update={"missing": MissingConfig(indicator=True)})
    data = prepare_datasets(cfg)

    no_label = len(df.index[2::11])
    assert data.rows_without_label == no_label and data.rows_dropped == 0
    assert sum(data.num_rows.values()) == 200 - no_label
    # The fill is the median of the training split as read (the same split, drawn again).
    raw_train = split_dataset(read_source(cfg), cfg.split, leave_out(cfg)).train.to_pandas()
    size, zone = data.preprocessor.features
    assert size.missing == "median" and size.indicator
    assert size.fill == pytest.approx(pd.to_numeric(raw_train["size"]).median())
    assert size.mean == pytest.approx(pd.to_numeric(raw_train["size"]).mean())
    assert zone.missing_slot and zone.slots == 4  # east, north, south, missing
    x = data.train.take_batch(200, batch_format="numpy")["x"]
    assert x.shape == (data.num_rows["train"], 2 + 4)
    was_missing = x[:, 1] == 1.0
    assert was_missing.sum() == raw_train["size"].isna().sum() > 0
    np.testing.assert_allclose(x[was_missing, 0], (size.fill - size.mean) / size.scale, rtol=1e-6)
    # A CSV's empty text cell reads as "", which is missing too.
    assert x[:, 5].sum() == (raw_train["zone"].fillna("") == "").sum() > 0  # the missing-zone slot
    np.testing.assert_array_equal(x[:, 2:].sum(axis=1), 1.0)


def test_drop_row_leaves_rows_out_of_every_split(ray_cluster, tmp_path, houses):
    _, df = houses
    gappy(df).to_csv(tmp_path / "gaps.csv", index=False)
    features = [{"name": "size", "missing": "drop_row"}, {"name": "zone", "kind": "categorical"}]
    cfg = houses_config(tmp_path / "gaps.csv", features=features)
    data = prepare_datasets(cfg)
    no_label = len(df.index[2::11])
    no_size = len(set(df.index[::5]) - set(df.index[2::11]))
    assert (data.rows_without_label, data.rows_dropped) == (no_label, no_size)
    assert sum(data.num_rows.values()) == 200 - no_label - no_size
    assert data.raw_test.to_pandas()["size"].notna().all()


def test_a_text_cell_in_a_number_column_is_named_by_file_and_line(ray_cluster, tmp_path, houses):
    _, df = houses
    df = df.astype({"size": object})
    df.loc[df.index[15], "size"] = "abc"  # line 17 of the file, counting the header
    df.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataError) as err:
        prepare_datasets(houses_config(tmp_path / "bad.csv"))
    assert str(err.value).startswith(f"{tmp_path / 'bad.csv'} line 17: column 'size' holds 'abc', expected a")


def test_infinity_in_a_later_file_is_named_by_file_and_line(ray_cluster, tmp_path, houses):
    _, df = houses
    df.iloc[:100].to_csv(tmp_path / "a.csv", index=False)
    later = df.iloc[100:].astype({"size": object})
    later.loc[later.index[40], "size"] = "inf"
    later.to_csv(tmp_path / "b.csv", index=False)
    with pytest.raises(DataError) as err:
        prepare_datasets(houses_config(tmp_path))
    assert str(err.value) == f"{tmp_path / 'b.csv'} line 42: column 'size' holds 'inf', expected a finite number"


def test_missing_with_rule_error_is_named_by_file_and_line(ray_cluster, tmp_path, houses):
    _, df = houses
    df = df.astype({"zone": object})
    df.loc[df.index[30], "zone"] = None
    df.to_parquet(tmp_path / "gap.parquet")
    features = [{"name": "size"}, {"name": "zone", "kind": "categorical", "missing": "error"}]
    cfg = houses_config(tmp_path / "gap.parquet", features=features)
    with pytest.raises(DataError) as err:
        prepare_datasets(cfg)
    assert str(err.value) == (
        f"{tmp_path / 'gap.parquet'} row 31: column 'zone' is missing and the feature's missing rule is error"
    )


def test_a_malformed_file_after_the_first_fails_with_its_name(ray_cluster, tmp_path, houses):
    _, df = houses
    df.to_csv(tmp_path / "a.csv", index=False)
    (tmp_path / "b.csv").write_text("id,size,zone,price,kind\n1,2.0,north,3.0,flat,extra\n")
    with pytest.raises(
        DataError, match=f"{tmp_path}: could not read it: Failed to read CSV file: {tmp_path / 'b.csv'}"
    ):
        prepare_datasets(houses_config(tmp_path))
