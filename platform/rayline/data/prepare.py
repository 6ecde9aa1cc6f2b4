"""The whole data stage, streamed through Ray Data in two passes over the source, and stored for reuse. (A source of
a few MiB runs both passes in the driver's process instead, on the same blocks: rayline.data.blocks.)

1. Fit pass: every block's rows are assigned to splits by their hash (rayline.data.split) and the training
   rows' statistics are computed in the block; the driver merges them as blocks come back. Nothing is
   materialized.
2. Write pass: every block's rows are assigned again, transformed by the fitted preprocessor, and written as
   Parquet, one file per block and split, under the prepared entry (rayline.data.prepared). Training rows are
   written in a seeded order of their own, so a source sorted by label does not reach a rank sorted.

Memory stays bounded by a few blocks per task however large the source. A later run, a resumed run and every
trial of a search with the same data section and unchanged source read the entry instead of preparing again.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from rayline.config import DataConfig
from rayline.data.blocks import ClusterBlocks, LocalBlocks, prepared_here
from rayline.data.errors import DataError, reading, remote_data_error
from rayline.data.files import resolve_source
from rayline.data.fingerprint import fingerprint_source
from rayline.data.fit import drop_row_columns, fit_block, fitted_columns, preprocessor_from_stats
from rayline.data.infer import resolve_features
from rayline.data.locate import locate_refused_value
from rayline.data.prepared import (
    SPLITS,
    Manifest,
    SplitFiles,
    check_outside_source,
    entry_location,
    new_parts_folder,
    read_manifest,
    remove_old_parts,
    remove_parts,
    write_manifest,
    write_split_file,
)
from rayline.data.preprocess import Preprocessor
from rayline.data.progress import Progress, estimate_rows
from rayline.data.read import SOURCE_PATH_COLUMN, check_schema, read_source
from rayline.data.split import (
    INCOMPLETE,
    NO_LABEL,
    TEST,
    TRAIN,
    VALIDATION,
    LeaveOut,
    check_sizes,
    left_out_reasons,
    row_hashes,
    split_codes,
)
from rayline.data.stats import ColumnStats

Blocks = ClusterBlocks | LocalBlocks


# Messages that may come from one cell: a refused value, a text cell that made Arrow type a number column as
# text (or fail to convert it), or a file Arrow could not read.
CELL_PROBLEM = re.compile(r"row \d+ (holds|is missing)|has type|conversion error|could not read it")
SPLIT_CODES = {"train": TRAIN, "validation": VALIDATION, "test": TEST}
ORDER_SALT = np.uint64(0x9E3779B97F4A7C15)
"""Mixed into a training row's hash to give its place in the written order (not its split)."""


@dataclass
class PreparedData:
    train: SplitFiles
    validation: SplitFiles
    test: SplitFiles | None
    """None when data.split.test is 0."""
    preprocessor: Preprocessor
    fingerprint: str
    data_cfg: DataConfig
    """The data section as prepared: features: auto resolved to the concrete list of columns and kinds."""
    label_counts: list[int] | None = None
    """Training rows per class id (classification)."""
    rows_without_label: int = 0
    """Rows left out of every split because their label cell was missing."""
    rows_dropped: int = 0
    """Rows (with a label) left out of every split because a feature with missing rule drop_row was missing."""
    reused: bool = False
    """Read from an earlier run's prepared entry rather than prepared now."""
    seconds: float = 0.0
    """How long preparing took (when reused: how long it took then)."""

    @property
    def num_rows(self) -> dict[str, int]:
        """Rows per split: {"train": ..., "validation": ..., "test": ...} (0 for a switched-off test split)."""
        splits = (self.train, self.validation, self.test)
        return {name: 0 if s is None else s.rows for name, s in zip(SPLITS, splits, strict=True)}


def prepare_datasets(
    data_cfg: DataConfig,
    *,
    storage_root: str,
    check: Callable[[Preprocessor], None] | None = None,
    log: Callable[[str], None] = print,
    client_column: str | None = None,
) -> PreparedData:
    """The model-ready splits under storage_root/prepared, prepared now or reused; statistics come from the
    training split only. `check` sees the fitted preprocessor before any split is transformed (e.g. whether
    the model takes its inputs). `client_column`: a source column the files carry as "client" (each row's
    value as text), for federated.partition_by; SOURCE_PATH_COLUMN carries each row's file."""
    check_outside_source(storage_root, data_cfg.source)
    data_cfg = resolve_features(data_cfg)
    fingerprint = fingerprint_source(data_cfg)
    location = entry_location(storage_root, data_cfg, client_column)
    earlier = read_manifest(location)
    if earlier is not None and earlier.fingerprint == fingerprint:
        data = from_manifest(earlier, data_cfg, reused=True)
        if check is not None:
            check(data.preprocessor)
        return data
    manifest = prepare_entry(data_cfg, fingerprint, location, check, log, client_column)
    remove_old_parts(location, keep=parts_of(manifest) | parts_of(earlier))
    return from_manifest(manifest, data_cfg, reused=False)


def prepare_entry(
    data_cfg: DataConfig,
    fingerprint: str,
    location: str,
    check: Callable[[Preprocessor], None] | None,
    log: Callable[[str], None],
    client_column: str | None = None,
) -> Manifest:
    """Both passes over the source, the prepared files under `location`, and their manifest (written last)."""
    started = time.perf_counter()
    # A corrupt or truncated file is named here, before its footer is read again.
    blocks = read_checked(data_cfg, include_paths=client_column == SOURCE_PATH_COLUMN)
    with reading(data_cfg.source):
        total_rows, exact = estimate_rows(blocks.files)
    stats, codes = fit_pass(blocks, data_cfg, Progress("fitting", total_rows, exact, log))
    check_sizes(int(codes[:3].sum()), int(codes[TRAIN]), int(codes[VALIDATION]), int(codes[TEST]), data_cfg.split)
    preprocessor = preprocessor_from_stats(stats, data_cfg)
    if check is not None:
        check(preprocessor)
    parts = new_parts_folder()
    try:
        progress = Progress("writing", total_rows, exact, log)
        splits = write_pass(blocks, data_cfg, preprocessor, location, parts, progress, client_column)
    except BaseException:
        remove_parts(location, parts)  # a failed or interrupted pass leaves no half-written copy behind
        raise
    label_counts = None
    if preprocessor.classes is not None:
        counts = stats.counts[data_cfg.label]
        label_counts = [int(counts.get(c, 0)) for c in preprocessor.classes]
    left_out = {"no_label": int(codes[NO_LABEL]), "incomplete": int(codes[INCOMPLETE])}
    seconds = time.perf_counter() - started
    manifest = Manifest(fingerprint, preprocessor.to_dict(), splits, label_counts, left_out, seconds)
    write_manifest(location, manifest)
    return manifest


def parts_of(manifest: Manifest | None) -> set[str]:
    """The parts folders a manifest's files are in."""
    if manifest is None:
        return set()
    return {p.split("/", 1)[0] for s in manifest.splits.values() if s is not None for p in s.paths}


def from_manifest(manifest: Manifest, data_cfg: DataConfig, *, reused: bool) -> PreparedData:
    splits = manifest.splits
    return PreparedData(
        train=splits["train"],
        validation=splits["validation"],
        test=splits.get("test"),
        preprocessor=Preprocessor.from_dict(manifest.preprocessor),
        fingerprint=manifest.fingerprint,
        data_cfg=data_cfg,
        label_counts=manifest.label_counts,
        rows_without_label=manifest.left_out["no_label"],
        rows_dropped=manifest.left_out["incomplete"],
        reused=reused,
        seconds=manifest.seconds,
    )


def leave_out(data_cfg: DataConfig) -> LeaveOut:
    return LeaveOut(data_cfg.label, data_cfg.task == "regression", drop_row_columns(data_cfg))


def read_checked(data_cfg: DataConfig, include_paths: bool = False) -> Blocks:
    """The source's blocks (in this process when it is small: rayline.data.blocks), after read_source's checks."""
    try:
        files = resolve_source(data_cfg.source, data_cfg.format)
        if not prepared_here(files):
            return ClusterBlocks(read_source(data_cfg, include_paths, files), files)
        blocks = LocalBlocks(files, include_paths)
        check_schema(blocks.first_row(data_cfg.source).schema, data_cfg, data_cfg.source)
        return blocks
    except DataError as err:
        # A stray text cell makes Arrow type a number column as text; name the cell, then the type.
        found = located(err, data_cfg, parse_check(data_cfg), data_cfg.source)
        raise (err if found is None or str(found) == str(err) else DataError(f"{found}; {err}")) from None


def fit_pass(blocks: Blocks, data_cfg: DataConfig, progress: Progress) -> tuple[ColumnStats, np.ndarray]:
    """The training rows' merged statistics, and the rows per split code (TRAIN ... INCOMPLETE)."""
    stats, codes = ColumnStats(), np.zeros(5, dtype=np.int64)
    try:
        with reading(data_cfg.source):
            for part in blocks.results(block_statistics, data_cfg=data_cfg):
                stats.merge(part["stats"])
                codes += part["codes"]
                progress.add(part["rows"], part["bytes"])
    except DataError as err:
        # A number column Arrow typed from a file's first block fails to read where text follows.
        raise located(err, data_cfg, parse_check(data_cfg), data_cfg.source) or err from None
    return stats, codes


def write_pass(
    blocks: Blocks,
    data_cfg: DataConfig,
    preprocessor: Preprocessor,
    location: str,
    parts: str,
    progress: Progress,
    client_column: str | None = None,
) -> dict[str, SplitFiles | None]:
    written: dict[str, list[tuple[str, list[int]]]] = {name: [] for name in SPLITS}
    kwargs = {"data_cfg": data_cfg, "preprocessor": preprocessor.to_dict(), "location": location, "parts": parts}
    kwargs["client_column"] = client_column
    try:
        with reading(data_cfg.source):
            for part in blocks.results(write_block, **kwargs):
                for split, path, groups in part["files"]:
                    written[split].append((path, groups))
                progress.add(part["rows"], part["bytes"])
    except DataError as err:
        raise located(err, data_cfg, preprocessor.transform_batch, data_cfg.source) or err from None
    files = {}
    for name, found in written.items():  # no test files when data.split.test is 0: no row is a test row
        found.sort()
        inputs = preprocessor.num_inputs
        files[name] = SplitFiles(location, [p for p, _ in found], [g for _, g in found], inputs) if found else None
    return files


def block_statistics(batch: pd.DataFrame, data_cfg: DataConfig) -> dict[str, Any]:
    codes = split_codes(batch, data_cfg.split, leave_out(data_cfg))
    stats = fit_block(batch[codes == TRAIN], data_cfg)
    return {"stats": stats, "codes": np.bincount(codes, minlength=5)}


def write_block(
    batch: pd.DataFrame,
    data_cfg: DataConfig,
    preprocessor: dict[str, Any],
    location: str,
    parts: str,
    client_column: str | None = None,
) -> dict[str, Any]:
    """Transform the block's rows of each split and write them; returns [(split, path, row groups)]."""
    fitted = Preprocessor.from_dict(preprocessor)
    hashes = row_hashes(batch, data_cfg.split.seed)  # hashed once: the split and the written order
    codes = split_codes(batch, data_cfg.split, leave_out(data_cfg), hashes)
    # Named by the rows it holds, so the files' (sorted) order is the same whichever task wrote which block.
    name = f"{int(np.bitwise_xor.reduce(hashes, initial=np.uint64(0))):016x}-{uuid.uuid4().hex[:8]}"
    columns = [f.name for f in fitted.features] + [fitted.label] + ([client_column] if client_column else [])
    files = []
    for split, code in SPLIT_CODES.items():
        rows = codes == code
        if not rows.any():
            continue
        part = batch.loc[rows, columns]
        if code == TRAIN:
            part = part.iloc[np.argsort(pd.util.hash_array(hashes[rows] ^ ORDER_SALT), kind="stable")]
        out = fitted.transform_batch(part)
        path = f"{parts}/{split}/{name}.parquet"
        client = part[client_column].astype(str).to_numpy() if client_column else None
        files.append((split, path, write_split_file(out["x"], out["y"], location, path, client)))
    return {"files": files}


def located(
    err: BaseException, data_cfg: DataConfig, check: Callable[[pd.DataFrame], object], where: str
) -> DataError | None:
    """The DataError to show for a failure in Ray Data: the refused cell's file and row when the source files
    hold one (found on the driver by `check`), else the task's own message; None if err is no data error."""
    message = remote_data_error(err)
    if message is None:
        return None
    fallback = DataError(message if message.startswith(data_cfg.source) else f"{where}: {message}")
    if not CELL_PROBLEM.search(message):  # e.g. an empty split: no cell to find, so no reason to read every file
        return fallback
    numeric, categorical = fitted_columns(data_cfg)
    columns = {name: True for name in numeric} | {name: False for name in categorical}
    rules = leave_out(data_cfg)

    def keep(df: pd.DataFrame) -> np.ndarray:
        return left_out_reasons(df, rules) == 0

    found = locate_refused_value(data_cfg.source, data_cfg.format, columns, check, keep)
    return fallback if found is None else DataError(found)


def parse_check(data_cfg: DataConfig) -> Callable[[pd.DataFrame], object]:
    """What the fit pass refuses: a numeric cell that is neither missing nor a finite number."""

    def check(df: pd.DataFrame) -> object:
        return fit_block(df, data_cfg)

    return check
