"""The demo dataset: scikit-learn's bundled 8x8 digits, written as Parquet (no network needed)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from rayline.data.files import open_filesystem, parent


def write_digits(path: str) -> int:
    """Write columns pixel_0..pixel_63 (float64, 0..16) and label (int64, 0..9) to a Parquet file."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    columns = {f"pixel_{i}": pa.array(digits.data[:, i], pa.float64()) for i in range(digits.data.shape[1])}
    columns["label"] = pa.array(digits.target, pa.int64())
    table = pa.table(columns)
    fs, file_path = open_filesystem(path)
    if parent(file_path):
        fs.create_dir(parent(file_path), recursive=True)
    pq.write_table(table, file_path, filesystem=fs)
    return table.num_rows
