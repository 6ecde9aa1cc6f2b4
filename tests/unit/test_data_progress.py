"""Progress lines of a long pass, and the row estimate they rest on, without Ray."""

import pandas as pd

from rayline.data.files import resolve_source
from rayline.data.progress import Progress, estimate_rows


def test_a_line_says_rows_bytes_rate_and_time_left(monkeypatch):
    clock = iter([0.0, 2.0, 6.0, 7.0, 12.0])
    monkeypatch.setattr("rayline.data.progress.time.perf_counter", lambda: next(clock))
    lines: list[str] = []
    progress = Progress("fitting", 1000, True, lines.append, every_s=5.0)
    progress.add(100, 2**20)  # at 2 s: too soon for a line
    progress.add(200, 2**20)  # at 6 s
    progress.add(100, 2**20)  # at 7 s: too soon again
    progress.add(100, 2**20)  # at 12 s
    assert lines == [
        "data: fitting: 300 of 1,000 rows, 2 MiB, 50 rows/s, about 14 s left",
        "data: fitting: 500 of 1,000 rows, 4 MiB, 42 rows/s, about 12 s left",
    ]


def test_an_estimated_total_is_marked():
    lines: list[str] = []
    progress = Progress("writing", 2000, False, lines.append, every_s=0.0)
    progress.add(10, 0)
    assert "of ~2,000 rows" in lines[0]


def test_rows_are_counted_from_parquet_footers_and_estimated_for_csv(tmp_path):
    df = pd.DataFrame({"a": range(5000), "b": ["x" * 10] * 5000})
    df.to_parquet(tmp_path / "a.parquet")
    df.to_parquet(tmp_path / "b.parquet")
    assert estimate_rows(resolve_source(str(tmp_path / "*.parquet"))) == (10_000, True)
    df.to_csv(tmp_path / "c.csv", index=False)
    rows, exact = estimate_rows(resolve_source(str(tmp_path / "c.csv")))
    assert not exact and abs(rows - 5001) < 50, rows
