"""Turn a source (file, directory or glob; local path or URI) into a sorted list of files and a format.

A directory as Spark or Hive writes it reads as one table: part files are data files, `_SUCCESS`, `.crc`
and other hidden or underscore names are skipped, and `key=value/` folders are partition columns whose
types are inferred from every folder name, as Spark infers them.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from typing import NamedTuple

import pyarrow as pa
import pyarrow.fs as pafs

from rayline.data.errors import DataError
from rayline.storage import StorageError, open_root

EXTENSIONS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".tsv": "csv",
    ".json": "json",
    ".jsonl": "json",
    ".ndjson": "json",
}
DELIMITERS = ";\t|"
"""What a CSV file may be delimited by instead of commas (European exports use ;), told by its header line."""
COMPRESSIONS = (".gz", ".bz2", ".zst")
"""Suffixes after a CSV or JSON extension that pyarrow decompresses while reading (Spark's part-*.csv.gz)."""
GLOB_CHARS = "*?["
HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"
"""The folder value Hive and Spark write for a null partition value (key=__HIVE_DEFAULT_PARTITION__)."""
_INT = re.compile(r"-?(0|[1-9][0-9]*)\Z")
_FLOAT = re.compile(r"[-+]?((0|[1-9][0-9]*)(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?\Z")
_QUERY = re.compile(r"\?[A-Za-z_]\w*=[^?&]*(&[A-Za-z_]\w*=[^?&]*)*\Z")
"""A URI's options: "?key=value" pairs joined by "&", at its end."""


class SourceFiles(NamedTuple):
    filesystem: pafs.FileSystem
    base: str
    """Directory the files are named relative to (fingerprints use relative names)."""
    paths: list[str]
    format: str
    partitions: dict[str, pa.DataType]
    """Partition columns from key=value folders below base, in folder order, with their inferred types."""
    sizes: list[int]
    """Each file's size in bytes, in the order of paths."""


def list_source_files(source: str, fmt: str | None = None) -> tuple[pafs.FileSystem, list[str], str]:
    """The filesystem, the sorted data files and their format for a file, directory or glob source."""
    files = resolve_source(source, fmt)
    return files.filesystem, files.paths, files.format


def resolve_source(source: str, fmt: str | None = None) -> SourceFiles:
    if fmt is not None and fmt not in set(EXTENSIONS.values()):
        raise DataError(f"{source}: unknown format {fmt!r}; expected parquet, csv or json")
    if any(c in split_query(source)[0] for c in GLOB_CHARS):
        fs, base, infos = glob_files(source)
    else:
        fs, base, infos = path_files(source, fmt)
    if not infos:
        raise DataError(f"{source}: no data files found" + ("" if fmt is None else f" for format {fmt!r}"))
    for info in infos:
        if info.size == 0:
            raise DataError(f"{source}: file {info.path} is empty (0 bytes)")
    infos = sorted(infos, key=lambda info: info.path)
    paths = [info.path for info in infos]
    fmt = fmt or infer_format(source, paths)
    return SourceFiles(fs, base, paths, fmt, partition_types(source, base, paths), [info.size or 0 for info in infos])


def path_files(source: str, fmt: str | None) -> tuple[pafs.FileSystem, str, list[pafs.FileInfo]]:
    fs, path = open_filesystem(source)
    info = file_info(fs, path, source)
    if info.type == pafs.FileType.NotFound:
        raise DataError(f"{source}: no such file or directory")
    if info.type == pafs.FileType.File:
        return fs, parent(path), [info]
    infos = [i for i in list_files(fs, path, recursive=True, source=source) if visible(i.path, path)]
    if fmt is not None:
        # Hive names its part files 000000_0, without an extension: a named format reads them too.
        return fs, path, [i for i in infos if format_of(i.path) == fmt or "." not in basename(i.path)]
    wanted = only_format(source, infos)
    return fs, path, [i for i in infos if format_of(i.path) == wanted]


def glob_files(source: str) -> tuple[pafs.FileSystem, str, list[pafs.FileInfo]]:
    location, query = split_query(source)
    first = min(location.index(c) for c in GLOB_CHARS if c in location)
    cut = location.rfind("/", 0, first)
    # The part before the last "/" ahead of the first wildcard is a plain directory.
    base_source, pattern = (location[:cut], location[cut + 1 :]) if cut >= 0 else (".", location)
    if base_source == "" or base_source.endswith(":/"):
        base_source += "/"
    fs, base = open_filesystem(base_source + query)
    if file_info(fs, base, source).type != pafs.FileType.Directory:
        raise DataError(f"{source}: the directory {base_source} before the wildcard does not exist")
    regex = glob_regex(pattern)
    recursive = "/" in pattern
    infos = list_files(fs, base, recursive=recursive, source=source)
    return fs, base, [i for i in infos if regex.match(relative(i.path, base)) and visible(i.path, base)]


def split_query(source: str) -> tuple[str, str]:
    """A URI's "?key=value&..." options at its end (s3://bucket/x?region=...) are not a wildcard, but a "?"
    before them is (s3://bucket/part-?.csv?region=...); local paths have no options."""
    found = _QUERY.search(source) if "://" in source else None
    if found is None:
        return source, ""
    return source[: found.start()], source[found.start() :]


def open_filesystem(source: str) -> tuple[pafs.FileSystem, str]:
    try:
        return open_root(source)
    except StorageError as err:
        raise DataError(f"{source}: cannot open this URI as a pyarrow filesystem: {err.__cause__ or err}") from None


def file_info(fs: pafs.FileSystem, path: str, source: str) -> pafs.FileInfo:
    try:
        return fs.get_file_info(path)
    except OSError as err:
        raise DataError(f"{source}: cannot inspect {path}: {err}") from None


def list_files(fs: pafs.FileSystem, base: str, *, recursive: bool, source: str) -> list[pafs.FileInfo]:
    try:
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=recursive))
    except OSError as err:
        raise DataError(f"{source}: cannot list {base}: {err}") from None
    return [i for i in infos if i.type == pafs.FileType.File]


def glob_regex(pattern: str) -> re.Pattern[str]:
    """Shell-style pattern over "/"-separated paths: * and ? stay inside one directory, ** spans several."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 2 :]:
            end = pattern.index("]", i + 2)
            body = pattern[i + 1 : end].replace("\\", "\\\\")
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def format_of(path: str) -> str | None:
    stem, extension = os.path.splitext(path.lower())
    if extension in COMPRESSIONS:
        stem, inner = os.path.splitext(stem)
        return EXTENSIONS.get(inner) if EXTENSIONS.get(inner) in ("csv", "json") else None
    return EXTENSIONS.get(extension)


def only_format(source: str, infos: list[pafs.FileInfo]) -> str:
    """The one known format among a directory's files; unknown extensions (README, _SUCCESS) are skipped."""
    formats = sorted({f for f in (format_of(i.path) for i in infos) if f is not None})
    if len(formats) > 1:
        raise DataError(f"{source}: holds files of several formats {formats}; point at one kind (a glob)")
    if not formats:
        known = ", ".join(EXTENSIONS)
        raise DataError(f"{source}: no data files with a known extension ({known}) inside")
    return formats[0]


def infer_format(source: str, paths: list[str]) -> str:
    unknown = [p for p in paths if format_of(p) is None]
    if unknown:
        raise DataError(
            f"{source}: cannot infer the format of {unknown[0]} from its extension; "
            f"set data.format to parquet, csv or json"
        )
    formats = sorted({format_of(p) for p in paths})
    if len(formats) > 1:
        raise DataError(f"{source}: matches files of several formats {formats}; narrow it to one kind")
    return formats[0]


def csv_delimiter(files: SourceFiles) -> str:
    """The source's CSV delimiter, from its first file's header line: a comma, unless the header has none
    and one of DELIMITERS (the most frequent)."""
    with files.filesystem.open_input_stream(files.paths[0]) as stream:
        head = stream.read(1 << 16)
    header = head.split(b"\n", 1)[0].decode("utf-8", errors="replace")
    if "," in header:
        return ","
    counts = {d: header.count(d) for d in DELIMITERS}
    best = max(counts, key=counts.__getitem__)
    return best if counts[best] else ","


def visible(path: str, base: str) -> bool:
    """False for hidden or underscore files and folders below base (.crc, _SUCCESS, _delta_log)."""
    return not any(part.startswith((".", "_")) for part in relative(path, base).split("/"))


def relative(path: str, base: str) -> str:
    return path[len(base) :].lstrip("/") if path.startswith(base) else path


def parent(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path else ""


def basename(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def partition_values(path: str, base: str) -> dict[str, str | None]:
    """The key=value folders between base and the file, values URL-decoded as Spark escapes them; an empty
    value or Hive's null marker is None. Folders without one "=" are not partitions (Ray Data's rule too)."""
    folders = relative(path, base).split("/")[:-1]
    pairs = [folder.split("=") for folder in folders if folder.count("=") == 1]
    values = {key: urllib.parse.unquote(value) for key, value in pairs if key}
    return {key: None if value in ("", HIVE_NULL) else value for key, value in values.items()}


def partition_types(source: str, base: str, paths: list[str]) -> dict[str, pa.DataType]:
    """Each partition column's type from all of its folder values, as Spark infers it: int64 when every value
    is a whole number, float64 when every value is a number, else string (so is a number with a leading zero,
    such as the zip code 00501, and a date). Null values (None) do not count."""
    found = {path: partition_values(path, base) for path in paths}
    first = paths[0]
    for path, values in found.items():
        if list(values) != list(found[first]):
            raise DataError(
                f"{source}: files are partitioned differently: {relative(first, base)} has partition keys "
                f"{list(found[first])}, {relative(path, base)} has {list(values)} (from its key=value folders); "
                "Spark and Hive put every file of a table under the same keys"
            )
    return {key: partition_type({values[key] for values in found.values()}) for key in found[first]}


def partition_type(values: set[str | None]) -> pa.DataType:
    present = [v for v in values if v is not None]
    if present and all(_INT.match(v) and -(2**63) <= int(v) < 2**63 for v in present):
        return pa.int64()
    if present and all(_FLOAT.match(v) for v in present):
        return pa.float64()
    return pa.string()
