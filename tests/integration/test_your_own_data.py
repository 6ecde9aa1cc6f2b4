"""A user's messy CSV end to end: features: auto (an id column left out), empty cells imputed, a
high-cardinality column embedded, rows without a label left out; then the same imputation in training,
serving (null and absent keys) and batch prediction."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from http_client import http
from rayline.config import ServeConfig, validate_config
from rayline.pipeline import train_and_register
from rayline.predict import predict_files
from rayline.registry import Registry

pytestmark = pytest.mark.slow

PORT = 8141
ROWS = 600


def messy_table() -> pd.DataFrame:
    """size: every 9th cell empty; city: 40 values (embedded); tier: every 13th empty; price: every 50th empty."""
    rng = np.random.default_rng(0)
    i = np.arange(ROWS)
    size = rng.uniform(1, 10, ROWS)
    city = rng.integers(0, 40, ROWS)
    tier = np.array(["a", "b", "c"])[i % 3]
    price = 3 * size + 0.5 * city + np.where(tier == "c", 4.0, 0.0) + rng.normal(0, 0.5, ROWS)
    df = pd.DataFrame(
        {
            "row_id": [f"R{100000 + k}" for k in i],
            "size": np.where(i % 9 == 4, np.nan, size),
            "city": [f"city{c}" for c in city],
            "tier": pd.Series(tier, dtype="string").mask(i % 13 == 6),
            "price": np.where(i % 50 == 7, np.nan, price),
        }
    )
    return df


@pytest.fixture(scope="module")
def trained(ray_cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("own-data")
    source = root / "houses.csv"
    messy_table().to_csv(source, index=False)
    cfg = validate_config(
        {
            "name": "houses",
            "data": {
                "source": str(source),
                "task": "regression",
                "label": "price",
                "missing": {"indicator": True},
                "embedding_threshold": 16,
            },
            "train": {"num_workers": 1, "epochs": 4, "baseline": True},
            "serve": {"port": PORT, "app_name": "houses", "route_prefix": "/houses"},
            "storage": {"root": str(root / "store")},
        }
    )
    lines: list[str] = []
    report = train_and_register(cfg, log=lines.append)
    return cfg, report, lines, source


def test_auto_features_leave_the_id_out_and_embed_the_wide_column(trained):
    cfg, report, lines, _ = trained
    loaded = Registry(cfg.storage.root).load(report.version)
    pre = loaded.preprocessor
    assert [f.name for f in pre.features] == ["size", "city", "tier"]
    embedded = [e["name"] for e in pre.model_shape()["embeddings"]]
    assert embedded == ["city"]
    assert loaded.config.data.features != "auto", "the registered config names the resolved features"
    assert any("left out 12 rows whose label is missing" in line for line in lines), lines


@pytest.fixture(scope="module")
def served(trained):
    from rayline.serve import deploy, shutdown

    cfg, report, _, _ = trained
    url = deploy(cfg.storage.root, report.version, ServeConfig(**{**cfg.serve.model_dump(), "cpus_per_replica": 0.25}))
    yield url
    shutdown()


def predict(url: str, rows: list) -> list[float]:
    response = http.post(f"{url}/predict", json={"rows": rows}, timeout=60)
    assert response.status_code == 200, response.text
    return [p["value"] for p in response.json()["predictions"]]


def test_null_and_absent_cells_are_imputed_the_same_way_in_serving_and_batch_prediction(trained, served, tmp_path):
    cfg, report, _, source = trained
    table = messy_table()
    row = int(np.flatnonzero(table["size"].isna() & table["tier"].notna())[0])
    city, tier = table.loc[row, "city"], table.loc[row, "tier"]

    as_null = predict(served, [{"size": None, "city": city, "tier": tier}])
    as_absent = predict(served, [{"city": city, "tier": tier}])
    assert as_null == as_absent

    version, written = predict_files(cfg.storage.root, str(report.version), str(source), str(tmp_path / "out.csv"))
    assert (version, written) == (report.version, ROWS)
    out = pd.concat(pd.read_csv(part) for part in sorted((tmp_path / "out.csv").iterdir()))  # a directory of parts
    batch = float(out.loc[out["row_id"] == table.loc[row, "row_id"], "prediction"].iloc[0])
    assert np.isclose(as_null[0], batch, rtol=1e-5), (as_null[0], batch)

    # The was-missing indicator input tells a filled cell from a real value equal to the fill.
    fill = Registry(cfg.storage.root).load(report.version).preprocessor.features[0].fill
    assert fill is not None and predict(served, [{"size": fill, "city": city, "tier": tier}]) != as_null


def test_unseen_categories_share_one_slot_and_a_missing_one_has_its_own(served):
    row = {"size": 5.0, "city": "city3", "tier": "a"}
    unseen = predict(served, [{**row, "city": "atlantis"}, {**row, "city": "el dorado"}, row])
    # Rows of one batch may round differently in the last float32 bits.
    assert unseen[0] == pytest.approx(unseen[1], rel=1e-6), "every unseen city lands in the same slot"
    assert unseen[0] != pytest.approx(unseen[2], rel=1e-6), "... which is not city3's"
    missing = predict(served, [{**row, "tier": None}, {k: v for k, v in row.items() if k != "tier"}, row])
    assert missing[0] == pytest.approx(missing[1], rel=1e-6), "null and an absent key are the same missing tier"
    assert missing[0] != pytest.approx(missing[2], rel=1e-6), "a missing tier is its own category, not tier a"


def test_infinity_and_text_stay_errors(served):
    for bad in ("abc", "Infinity"):
        response = http.post(f"{served}/predict", json={"rows": [{"size": bad, "city": "city1"}]}, timeout=30)
        assert response.status_code == 422, response.text
        assert "rows.0.size" in response.text
