"""The rows an export is checked on: the version's held-out split, found again in its source.

A row's split is a seeded hash of its values (rayline.data.split), so the held-out rows can be picked out of the
source again without Ray: the source named in the checkpoint's config is read with pyarrow (its first
SOURCE_ROWS rows, typed as Ray Data's readers type them), split with the checkpoint's seed and shares, and the
held-out split (test, or validation when the test share is 0) is kept, at most PARITY_ROWS of it. The count is
set against the record's confusion matrix, so a changed or cut source is reported, not hidden.

When the source cannot be read (moved, deleted, credentials missing), the check runs on SYNTHETIC_ROWS rows drawn
from the preprocessor's fitted statistics (normal values around each mean, categories uniformly), which have no
labels: the int8 check then compares with the fp32 model's answers instead of the truth.

Either way, rows with missing values are added (copies of the first rows with every nullable feature blanked,
and with unseen categories), so the imputation and the "other" slots inside the graph are checked too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from rayline.config import PipelineConfig
from rayline.data.preprocess import CategoricalStat, NumericStat, Preprocessor
from rayline.data.split import TEST, VALIDATION, LeaveOut, split_codes

SOURCE_ROWS = 200_000
PARITY_ROWS = 20_000
SYNTHETIC_ROWS = 512
EDGE_ROWS = 32
UNSEEN = "rayline-unseen-category"


@dataclass(frozen=True)
class ParityRows:
    frame: pd.DataFrame
    """Feature columns (and the label where known), rows with labels first."""
    labelled: int
    """The first `labelled` rows carry their true label (0 for synthetic rows)."""
    description: str
    """Which rows these are, for the report and the registry record."""


def parity_rows(preprocessor: Preprocessor, config: PipelineConfig, record: dict[str, Any]) -> ParityRows:
    try:
        held_out, description = held_out_rows(preprocessor, config, record)
        labelled = len(held_out)
    except (OSError, ValueError, KeyError) as err:  # gone, unreadable, changed (DataError is a ValueError)
        held_out = synthetic_rows(preprocessor, SYNTHETIC_ROWS)
        labelled = 0
        description = (
            f"{len(held_out)} synthetic rows drawn from the fitted statistics (the source "
            f"{config.data.source} could not be read again: {type(err).__name__}: {str(err)[:200]})"
        )
    edge = edge_rows(preprocessor, held_out.head(EDGE_ROWS))
    if len(edge):
        description += f", plus {len(edge)} copies of the first rows with missing and unseen values"
    frame = pd.concat([held_out, edge], ignore_index=True) if len(edge) else held_out.reset_index(drop=True)
    return ParityRows(frame, labelled, description)


def held_out_rows(
    preprocessor: Preprocessor, config: PipelineConfig, record: dict[str, Any]
) -> tuple[pd.DataFrame, str]:
    from rayline.data.files import resolve_source
    from rayline.data.read import read_sample

    data = config.data
    table = read_sample(resolve_source(data.source, data.format), SOURCE_ROWS, data.source)
    frame = table.to_pandas()
    split = "test" if data.split.test > 0 else "validation"
    codes = split_codes(frame, data.split, leave_out(preprocessor))
    rows = frame.loc[codes == (TEST if split == "test" else VALIDATION)]
    if rows.empty:
        raise ValueError(f"no {split} rows among the first {len(frame)} rows of the source")
    description = f"{min(len(rows), PARITY_ROWS)} rows of the {split} split, found again in {data.source}"
    expected = recorded_rows(record)
    if expected is not None and expected != len(rows):
        description += f" (the record counts {expected} {split} rows: the source changed since training)"
    if len(frame) == SOURCE_ROWS:
        description += f" (among its first {SOURCE_ROWS} rows)"
    columns = [f.name for f in preprocessor.features] + [preprocessor.label]
    return rows[columns].head(PARITY_ROWS).reset_index(drop=True), description


def leave_out(preprocessor: Preprocessor) -> LeaveOut:
    """The rows no split gets, as the pipeline leaves them out (rayline.data.prepare.leave_out)."""
    drop = {f.name: isinstance(f, NumericStat) for f in preprocessor.features if f.missing == "drop_row"}
    return LeaveOut(preprocessor.label, preprocessor.task == "regression", drop)


def recorded_rows(record: dict[str, Any]) -> int | None:
    """The held-out rows the registry record counts (its confusion matrix); None for regression."""
    counts = (record.get("evaluation") or {}).get("confusion_matrix", {}).get("counts")
    return int(np.asarray(counts).sum()) if counts else None


def synthetic_rows(preprocessor: Preprocessor, n: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    columns: dict[str, Any] = {}
    for f in preprocessor.features:
        if isinstance(f, NumericStat):
            columns[f.name] = f.mean + f.scale * rng.standard_normal(n)
        else:
            columns[f.name] = rng.choice(np.array(f.categories, dtype=object), size=n)
    return pd.DataFrame(columns)


def edge_rows(preprocessor: Preprocessor, rows: pd.DataFrame) -> pd.DataFrame:
    """Copies of `rows` with every nullable feature missing, and (if any) with every categorical one unseen."""
    features = [f.name for f in preprocessor.features]
    nullable = [f.name for f in preprocessor.features if f.nullable]
    categorical = [f.name for f in preprocessor.features if isinstance(f, CategoricalStat)]
    copies = []
    if nullable:
        blanked = rows[features].astype(object)
        blanked[nullable] = None
        copies.append(blanked)
    if categorical:
        unseen = rows[features].astype(object)
        unseen[categorical] = UNSEEN
        copies.append(unseen)
    return pd.concat(copies, ignore_index=True) if copies else rows.iloc[0:0]
