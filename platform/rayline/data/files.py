"""Turn a source (file, directory or glob; local path or URI) into a sorted list of files and a format."""

from __future__ import annotations

import os
import re
from typing import NamedTuple

import pyarrow.fs as pafs

from rayline.data.errors import DataError

EXTENSIONS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".json": "json",
    ".jsonl": "json",
    ".ndjson": "json",
}
GLOB_CHARS = "*?["


class SourceFiles(NamedTuple):
    filesystem: pafs.FileSystem
    base: str
    """Directory the files are named relative to (fingerprints use relative names)."""
    paths: list[str]
    format: str


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
    paths = sorted(info.path for info in infos)
    return SourceFiles(fs, base, paths, fmt or infer_format(source, paths))


def path_files(source: str, fmt: str | None) -> tuple[pafs.FileSystem, str, list[pafs.FileInfo]]:
    fs, path = open_filesystem(source)
    info = file_info(fs, path, source)
    if info.type == pafs.FileType.NotFound:
        raise DataError(f"{source}: no such file or directory")
    if info.type == pafs.FileType.File:
        return fs, parent(path), [info]
    infos = [i for i in list_files(fs, path, recursive=True, source=source) if visible(i.path, path)]
    wanted = fmt or only_format(source, infos)
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
    """A URI's "?key=value" options (s3://bucket/x?region=...) are not a wildcard; local paths have none."""
    if "://" not in source or "?" not in source:
        return source, ""
    cut = source.index("?")
    return source[:cut], source[cut:]


def open_filesystem(source: str) -> tuple[pafs.FileSystem, str]:
    if "://" not in source:
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(source))
    try:
        return pafs.FileSystem.from_uri(source)
    except Exception as err:  # pyarrow raises several types for bad or unreachable URIs
        raise DataError(f"{source}: cannot open this URI as a pyarrow filesystem: {err}") from None


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
    return EXTENSIONS.get(os.path.splitext(path)[1].lower())


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


def visible(path: str, base: str) -> bool:
    """False for hidden or underscore files and folders below base (.crc, _SUCCESS, _delta_log)."""
    return not any(part.startswith((".", "_")) for part in relative(path, base).split("/"))


def relative(path: str, base: str) -> str:
    return path[len(base) :].lstrip("/") if path.startswith(base) else path


def parent(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path else ""
