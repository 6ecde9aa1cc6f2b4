"""Split, fit and prepare on the shared cluster: deterministic splits, statistics from train only."""

import numpy as np
import pandas as pd
import pytest

from pipelines import PIXELS, digits_source
from rayline.config import DataConfig, MissingConfig, SplitConfig
from rayline.data import DataError, PreparedData, SplitFiles, blocks, fingerprint_source, prepare_datasets, read_source
from rayline.data.prepare import leave_out
from rayline.data.read import SOURCE_PATH_COLUMN
from rayline.data.split import TEST, TRAIN, VALIDATION, split_codes


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


def prepare(cfg: DataConfig, root) -> PreparedData:
    return prepare_datasets(cfg, storage_root=str(root), log=lambda line: None)


def arrays(split: SplitFiles) -> tuple[np.ndarray, np.ndarray]:
    parts = list(split.iter_arrays())
    return np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts])


def ids_in_file_order(data: PreparedData, split: SplitFiles) -> list[int]:
    """A split's ids as its files hold them, read back from the id feature's standardised input."""
    id_stat = data.preprocessor.features[0]
    return np.rint(arrays(split)[0][:, 0] * id_stat.scale + id_stat.mean).astype(int).tolist()


def split_ids(data: PreparedData) -> list[list[int]]:
    return [sorted(ids_in_file_order(data, s)) for s in (data.train, data.validation, data.test)]


def by_the_rule(df: pd.DataFrame, split: SplitConfig) -> list[list[int]]:
    """Each split's ids as the hash rule assigns the rows (rayline.data.split), computed with pandas alone."""
    codes = split_codes(df, split)
    return [sorted(df["id"][codes == code].tolist()) for code in (TRAIN, VALIDATION, TEST)]


def test_splits_follow_the_hash_rule_whatever_the_file_layout(ray_cluster, tmp_path, houses):
    root, df = houses
    df.sample(frac=1.0, random_state=3).to_csv(tmp_path / "shuffled.csv", index=False)
    features = [{"name": "id"}, {"name": "size"}, {"name": "zone", "kind": "categorical"}]
    split = {"validation": 0.2, "test": 0.1, "seed": 7}
    parts = prepare(houses_config(root, features=features, **split), tmp_path / "a")
    one_file = prepare(houses_config(tmp_path / "shuffled.csv", features=features, **split), tmp_path / "b")
    expected = by_the_rule(pd.read_csv(tmp_path / "shuffled.csv"), SplitConfig(**split))
    assert split_ids(parts) == split_ids(one_file) == expected, "the rule of every earlier release, any layout"
    sizes = [len(ids) for ids in expected]
    assert sum(sizes) == 200 and abs(sizes[1] - 40) <= 15 and abs(sizes[2] - 20) <= 12, sizes
    assert parts.num_rows == dict(zip(["train", "validation", "test"], sizes, strict=True))
    # The source's files hold the ids in order; each prepared file holds its training rows in an order of its own.
    train = parts.train
    for path, groups in zip(train.paths, train.row_groups, strict=True):
        written = ids_in_file_order(parts, SplitFiles(train.root, [path], [groups], train.num_inputs))
        assert written != sorted(written), f"{path}: a source sorted by id must not reach the workers sorted"


def test_no_test_split_when_its_share_is_zero(ray_cluster, tmp_path, houses):
    root, _ = houses
    data = prepare(houses_config(root, validation=0.25, test=0.0), tmp_path)
    assert data.test is None and data.num_rows["test"] == 0
    assert data.train.rows + data.validation.rows == 200


def test_too_few_rows_for_a_split_says_which_split(ray_cluster, tmp_path, houses):
    _, df = houses
    df.iloc[:3].to_csv(tmp_path / "three.csv", index=False)
    cfg = houses_config(tmp_path / "three.csv", validation=0.1, test=0.1)
    with pytest.raises(DataError, match=r"split is empty: the source has 3 row\(s\)"):
        prepare(cfg, tmp_path)
    assert not list(tmp_path.rglob("*.parquet")), "nothing written before the refusal"


def test_statistics_streamed_from_the_training_split_match_pandas(ray_cluster, tmp_path, houses):
    root, df = houses
    cfg = houses_config(root, task="regression")
    pre = prepare(cfg, tmp_path).preprocessor
    train = df[split_codes(df, cfg.split) == TRAIN]

    size, zone = pre.features
    assert size.mean == pytest.approx(train["size"].mean(), rel=1e-12)
    assert size.std == pytest.approx(train["size"].std(ddof=0), rel=1e-12)
    assert size.fill == train["size"].median(), "exact median on small data"
    assert size.mean != pytest.approx(df["size"].mean(), abs=1e-9)
    assert zone.categories == sorted(train["zone"].unique())
    assert pre.target_mean == pytest.approx(train["price"].mean(), rel=1e-12)
    assert pre.target_std == pytest.approx(train["price"].std(ddof=0), rel=1e-12)


def test_prepare_digits(ray_cluster, tmp_path):
    cfg = DataConfig(source=str(digits_source(tmp_path)), task="classification", label="label", features=PIXELS)
    data = prepare(cfg, tmp_path)

    assert sum(data.num_rows.values()) == 1797
    assert abs(data.num_rows["validation"] - 270) < 50 and abs(data.num_rows["test"] - 270) < 50
    assert data.preprocessor.classes == [str(i) for i in range(10)]
    assert data.preprocessor.num_inputs == 64
    assert data.fingerprint == fingerprint_source(cfg)
    x, y = arrays(data.train)
    assert x.shape == (data.num_rows["train"], 64)
    assert x.dtype == np.float32
    assert y.dtype == np.int64
    assert set(y.tolist()) == set(range(10))
    assert data.label_counts == np.bincount(y, minlength=10).tolist()
    # Standardised with train statistics: every non-constant column has mean 0 and std 1 on train.
    varying = x.std(axis=0) > 0
    np.testing.assert_allclose(x.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(x[:, varying].std(axis=0), 1.0, atol=1e-4)
    assert len(arrays(data.test)[1]) == data.test.rows


def test_prepare_regression_standardises_the_target_and_one_hots_categories(ray_cluster, tmp_path, houses):
    root, _ = houses
    data = prepare(houses_config(root, task="regression", test=0.0), tmp_path)
    assert data.test is None and data.num_rows["test"] == 0
    x, y = arrays(data.train)
    assert x.shape == (data.num_rows["train"], 1 + 3)
    assert y.dtype == np.float32
    assert abs(float(y.mean())) < 1e-5
    np.testing.assert_array_equal(x[:, 1:].sum(axis=1), 1.0)  # one zone per row
    decoded = data.preprocessor.decode(y[:3])
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
    data = prepare(cfg, tmp_path)

    no_label = len(df.index[2::11])
    assert data.rows_without_label == no_label and data.rows_dropped == 0
    assert sum(data.num_rows.values()) == 200 - no_label
    # The fill is the median of the training split as read (the same split, drawn again from the rows as Ray
    # Data reads them: the hash sees a missing cell as the reader types it).
    raw = read_source(cfg).to_pandas()
    raw_train = raw[split_codes(raw, cfg.split, leave_out(cfg)) == TRAIN]
    size, zone = data.preprocessor.features
    assert size.missing == "median" and size.indicator
    assert size.fill == pytest.approx(pd.to_numeric(raw_train["size"]).median())
    assert size.mean == pytest.approx(pd.to_numeric(raw_train["size"]).mean())
    assert zone.missing_slot and zone.slots == 4  # east, north, south, missing
    x = arrays(data.train)[0]
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
    data = prepare(cfg, tmp_path)
    no_label = len(df.index[2::11])
    no_size = len(set(df.index[::5]) - set(df.index[2::11]))
    assert (data.rows_without_label, data.rows_dropped) == (no_label, no_size)
    assert sum(data.num_rows.values()) == 200 - no_label - no_size
    assert all(np.isfinite(arrays(s)[0]).all() for s in (data.train, data.validation, data.test))


def test_a_text_cell_in_a_number_column_is_named_by_file_and_line(ray_cluster, tmp_path, houses):
    _, df = houses
    df = df.astype({"size": object})
    df.loc[df.index[15], "size"] = "abc"  # line 17 of the file, counting the header
    df.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataError) as err:
        prepare(houses_config(tmp_path / "bad.csv"), tmp_path)
    assert str(err.value).startswith(f"{tmp_path / 'bad.csv'} line 17: column 'size' holds 'abc', expected a")


def test_infinity_in_a_later_file_is_named_by_file_and_line(ray_cluster, tmp_path, houses):
    _, df = houses
    source = tmp_path / "source"
    source.mkdir()
    df.iloc[:100].to_csv(source / "a.csv", index=False)
    later = df.iloc[100:].astype({"size": object})
    later.loc[later.index[40], "size"] = "inf"
    later.to_csv(source / "b.csv", index=False)
    with pytest.raises(DataError) as err:
        prepare(houses_config(source), tmp_path / "store")
    assert str(err.value) == f"{source / 'b.csv'} line 42: column 'size' holds 'inf', expected a finite number"


def test_a_storage_root_inside_the_source_folder_is_refused(ray_cluster, tmp_path, houses):
    root, _ = houses
    with pytest.raises(DataError, match="storage.root .* is inside data.source"):
        prepare(houses_config(root), root / "store")
    assert not (root / "store").exists(), "refused before anything was written"


def test_missing_with_rule_error_is_named_by_file_and_line(ray_cluster, tmp_path, houses):
    _, df = houses
    df = df.astype({"zone": object})
    df.loc[df.index[30], "zone"] = None
    df.to_parquet(tmp_path / "gap.parquet")
    features = [{"name": "size"}, {"name": "zone", "kind": "categorical", "missing": "error"}]
    cfg = houses_config(tmp_path / "gap.parquet", features=features)
    with pytest.raises(DataError) as err:
        prepare(cfg, tmp_path)
    assert str(err.value) == (
        f"{tmp_path / 'gap.parquet'} row 31: column 'zone' is missing and the feature's missing rule is error"
    )
    assert not list(tmp_path.glob("prepared/*/parts-*")), "the failed write pass left no files behind"


@pytest.mark.parametrize("where", ["in process", "on the cluster"])
def test_a_malformed_file_after_the_first_fails_with_its_name(ray_cluster, tmp_path, houses, where, monkeypatch):
    """Read in the driver (a small source) the message also says what is wrong; Ray Data's CSV reader says only
    that the file could not be read."""
    if where == "on the cluster":
        monkeypatch.setattr(blocks, "IN_PROCESS_MAX_BYTES", 0)
    _, df = houses
    source = tmp_path / "source"
    source.mkdir()
    df.to_csv(source / "a.csv", index=False)
    (source / "b.csv").write_text("id,size,zone,price,kind\n1,2.0,north,3.0,flat,extra\n")
    reason = {
        "in process": "CSV parse error: Row #2: Expected 5 columns, got 6",
        "on the cluster": "Failed to read CSV file",
    }[where]
    with pytest.raises(DataError) as err:
        prepare(houses_config(source), tmp_path / "store")
    assert str(err.value).startswith(f"{source}: could not read it: "), err.value
    assert f"{source / 'b.csv'}" in str(err.value) and reason in str(err.value), err.value


def parts_folders(root) -> list[str]:
    return sorted(p.name for p in root.glob("prepared/*/parts-*"))


def test_prepared_data_is_reused_until_the_source_changes(ray_cluster, tmp_path, houses, monkeypatch):
    _, df = houses
    source, store = tmp_path / "houses.csv", tmp_path / "store"
    df.to_csv(source, index=False)
    cfg = houses_config(source)
    first = prepare(cfg, store)
    assert not first.reused

    def no_pass(*args, **kwargs):
        raise AssertionError("the source was read again")

    with monkeypatch.context() as patched:
        patched.setattr("rayline.data.prepare.fit_pass", no_pass)
        patched.setattr("rayline.data.prepare.write_pass", no_pass)
        again = prepare(cfg, store)
    assert again.reused and again.train == first.train and again.num_rows == first.num_rows
    assert again.preprocessor.to_dict() == first.preprocessor.to_dict()
    assert again.seconds == first.seconds, "the reused entry says how long preparing took then"

    monkeypatch.setattr("rayline.data.prepared.STALE_AFTER_S", 0)
    for rows in (150, 120):  # the source changes twice
        df.iloc[:rows].to_csv(source, index=False)
        changed = prepare(cfg, store)
        assert not changed.reused and changed.fingerprint != first.fingerprint
        assert sum(changed.num_rows.values()) == rows
    assert len(parts_folders(store)) == 2, "the current parts and the ones they replaced; older ones deleted"


def test_an_entry_missing_a_file_is_prepared_again(ray_cluster, tmp_path, houses):
    root, _ = houses
    first = prepare(houses_config(root), tmp_path)
    (tmp_path / "prepared").joinpath(*first.validation.root.split("/")[-1:], first.validation.paths[0]).unlink()
    again = prepare(houses_config(root), tmp_path)
    assert not again.reused and again.num_rows == first.num_rows


def test_another_data_section_gets_its_own_entry(ray_cluster, tmp_path, houses):
    root, _ = houses
    one = prepare(houses_config(root, seed=1), tmp_path)
    other = prepare(houses_config(root, seed=2), tmp_path)
    assert not other.reused and one.train.root != other.train.root
    assert prepare(houses_config(root, seed=1), tmp_path).reused


def spark_source(root) -> DataConfig:
    """A Spark-written CSV table: part files in year= and region= folders (one of them Hive's null)."""
    from spark_layout import write_spark_table

    rng = np.random.default_rng(1)
    rows = 240
    df = pd.DataFrame(
        {
            "x": rng.normal(0.0, 2.0, rows).round(3),
            "color": rng.choice(["red", "green", "blue"], rows),
            "year": rng.choice([2021, 2022], rows),
            "region": rng.choice(["north", "south", None], rows),
            "label": rng.choice(["cat", "dog"], rows),
        }
    )
    write_spark_table(df, root, fmt="csv", partition_by=("year", "region"), tasks=3)
    features = ["x", "year", {"name": "color", "kind": "categorical"}, {"name": "region", "kind": "categorical"}]
    return DataConfig(source=str(root), task="classification", label="label", features=features)


@pytest.mark.parametrize("source", ["digits parquet", "spark csv", "client files"])
def test_a_small_source_prepared_in_process_matches_ray_datas_preparation(ray_cluster, tmp_path, source, monkeypatch):
    """A source of a few MiB is prepared in the driver's process (rayline.data.blocks), a larger one in Ray Data
    tasks: both give the same splits, statistics and prepared rows in the same files' order."""
    client_column = None
    if source == "digits parquet":
        cfg = DataConfig(source=str(digits_source(tmp_path)), task="classification", label="label", features=PIXELS)
    elif source == "spark csv":
        cfg = spark_source(tmp_path / "table")
    else:
        frame = pd.read_parquet(digits_source(tmp_path))
        clients = tmp_path / "clients"
        clients.mkdir()
        for name, rows in (("north", frame[:500]), ("south", frame[500:1100]), ("east", frame[1100:])):
            rows.to_parquet(clients / f"{name}.parquet")
        cfg = DataConfig(source=str(clients), task="classification", label="label", features=PIXELS)
        client_column = SOURCE_PATH_COLUMN

    def prepared(where: str) -> PreparedData:
        return prepare_datasets(
            cfg, storage_root=str(tmp_path / where), log=lambda line: None, client_column=client_column
        )

    here = prepared("here")
    monkeypatch.setattr(blocks, "IN_PROCESS_MAX_BYTES", 0)
    on_cluster = prepared("cluster")

    assert here.num_rows == on_cluster.num_rows and here.num_rows["train"] > 0
    assert (here.label_counts, here.rows_dropped) == (on_cluster.label_counts, on_cluster.rows_dropped)
    ours, theirs = here.preprocessor.to_dict(), on_cluster.preprocessor.to_dict()
    assert ours.keys() == theirs.keys()
    for key in ours:
        if key != "features":
            assert ours[key] == theirs[key], key
    for mine, other in zip(ours["features"], theirs["features"], strict=True):  # sums merged in another order
        numbers = {k for k, v in mine.items() if isinstance(v, float)}
        assert {k: mine[k] for k in numbers} == pytest.approx({k: other[k] for k in numbers}, rel=1e-12)
        assert {k: v for k, v in mine.items() if k not in numbers} == {k: other[k] for k in mine if k not in numbers}
    for name in ("train", "validation", "test"):
        a, b = getattr(here, name), getattr(on_cluster, name)
        assert [p.split("/")[-1][:16] for p in a.paths] == [p.split("/")[-1][:16] for p in b.paths], name
        (xa, ya), (xb, yb) = arrays(a), arrays(b)
        np.testing.assert_allclose(xa, xb, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(ya, yb)
