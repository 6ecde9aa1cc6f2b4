"""Tabular example sets made from scikit-learn's bundled data (no network), shaped like real users' files:
an id column, string labels, a categorical column, empty cells. Written as CSV, the format most people start
with. Each pipelines/<name>.yaml reads the file written here with `features: auto`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

MISSING_SHARE = 0.05
"""Share of cells emptied in each column chosen to hold gaps."""


def breast_cancer_table(seed: int = 0) -> pd.DataFrame:
    """569 tumours, 30 numeric measurements, a categorical size band, label "malignant" or "benign".

    Gaps: 5% of the cells of four measurements and of the size band are empty, and two labels are missing
    (rows rayline leaves out of training, saying how many).
    """
    from sklearn.datasets import load_breast_cancer

    raw = load_breast_cancer(as_frame=True)
    rng = np.random.default_rng(seed)
    df = raw.data.copy()
    df.columns = [c.replace(" ", "_") for c in df.columns]
    df.insert(0, "patient_id", [f"P{100000 + i}" for i in range(len(df))])
    # A categorical column with real signal: tumour size bands from the mean radius, as a clinic would record.
    df["size_band"] = pd.cut(df["mean_radius"], bins=[0, 12, 16, np.inf], labels=["small", "medium", "large"])
    df["size_band"] = df["size_band"].astype("string")
    for column in ("mean_texture", "mean_smoothness", "worst_concavity", "radius_error", "size_band"):
        df.loc[rng.random(len(df)) < MISSING_SHARE, column] = pd.NA
    df["diagnosis"] = pd.Series(raw.target_names[raw.target], dtype="string")
    df.loc[rng.choice(len(df), size=2, replace=False), "diagnosis"] = pd.NA
    return df


def diabetes_table(seed: int = 0) -> pd.DataFrame:
    """442 patients, nine numeric measurements, sex as "F"/"M", target: disease progression after a year.

    Gaps: 5% of the cells of bmi and bp are empty.
    """
    from sklearn.datasets import load_diabetes

    raw = load_diabetes(as_frame=True, scaled=False)
    rng = np.random.default_rng(seed)
    df = raw.data.copy()
    df["sex"] = np.where(df["sex"] == 1, "F", "M")
    for column in ("bmi", "bp"):
        df.loc[rng.random(len(df)) < MISSING_SHARE, column] = np.nan
    df["progression"] = raw.target
    return df


def breast_cancer_hospitals_table(seed: int = 0) -> pd.DataFrame:
    """The breast cancer table with the hospital each patient was seen at: four hospitals of unequal size and
    case mix (a referral centre sees more large, malignant tumours), for federated learning by hospital."""
    df = breast_cancer_table(seed)
    rng = np.random.default_rng(seed + 1)
    malignant = (df["diagnosis"] == "malignant").fillna(False).to_numpy()
    # Rows of each diagnosis are dealt to the hospitals with different odds: unequal sizes and label mixes.
    odds = np.where(malignant[:, None], [0.55, 0.2, 0.15, 0.1], [0.15, 0.35, 0.3, 0.2])
    picks = [rng.choice(4, p=row) for row in odds]
    df.insert(1, "hospital", [f"hospital_{'abcd'[i]}" for i in picks])
    return df


EXAMPLES = {
    "breast_cancer": breast_cancer_table,
    "breast_cancer_hospitals": breast_cancer_hospitals_table,
    "diabetes": diabetes_table,
}


def write_example(name: str, path: str | Path) -> int:
    """Write one example set as CSV (empty cells for missing values); returns its row count."""
    if name not in EXAMPLES:
        raise ValueError(f"unknown example {name!r}; known: {sorted(EXAMPLES)}")
    df = EXAMPLES[name]()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)
    return len(df)
