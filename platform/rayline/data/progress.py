"""Progress of a pass over the source that a person can follow: one line every few seconds with rows and bytes
read, the rate and an estimate of the time left."""

from __future__ import annotations

import time
from collections.abc import Callable

import pyarrow.parquet as pq

from rayline.data.files import SourceFiles

HEAD_BYTES = 1 << 20


def estimate_rows(files: SourceFiles) -> tuple[int, bool]:
    """(rows in the source, exact?): Parquet footers count them exactly; a CSV or JSON source is estimated from
    its total size and the line length of the first file's first MiB."""
    fs = files.filesystem
    if files.format == "parquet":
        return sum(pq.ParquetFile(fs.open_input_file(p)).metadata.num_rows for p in files.paths), True
    total = sum(files.sizes)
    with fs.open_input_stream(files.paths[0]) as stream:
        head = stream.read(HEAD_BYTES)
    lines = max(1, head.count(b"\n"))
    return int(total / (len(head) / lines)) if head else 0, False


class Progress:
    """Counts rows and bytes as blocks come back; logs a line at most every `every_s` seconds."""

    def __init__(self, what: str, total_rows: int, exact: bool, log: Callable[[str], None], every_s: float = 5.0):
        self.what, self.total_rows, self.exact, self.log, self.every_s = what, total_rows, exact, log, every_s
        self.rows = self.bytes = 0
        self.started = self.last = time.perf_counter()

    def add(self, rows: int, nbytes: int) -> None:
        self.rows += rows
        self.bytes += nbytes
        now = time.perf_counter()
        if now - self.last >= self.every_s:
            self.last = now
            self.log(self.line(now - self.started))

    def line(self, elapsed: float) -> str:
        rate = self.rows / elapsed if elapsed > 0 else 0.0
        total = f"{'' if self.exact else '~'}{self.total_rows:,}"
        shown = f"data: {self.what}: {self.rows:,} of {total} rows, {self.bytes / 2**20:,.0f} MiB, {rate:,.0f} rows/s"
        if rate > 0 and self.total_rows > self.rows:
            shown += f", about {(self.total_rows - self.rows) / rate:,.0f} s left"
        return shown
