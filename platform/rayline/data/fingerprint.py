"""A content fingerprint of a data source, recorded with every run so a result can be tied to its data."""

from __future__ import annotations

import hashlib

from rayline.config import DataConfig
from rayline.data.files import relative, resolve_source

CHUNK_BYTES = 1 << 20


def fingerprint_source(data_cfg: DataConfig) -> str:
    """ "sha256:<hex>" over the source files' names (relative to the source) and bytes, in sorted order."""
    files = resolve_source(data_cfg.source, data_cfg.format)
    digest = hashlib.sha256()
    named = sorted((relative(path, files.base), path) for path in files.paths)
    for name, path in named:
        encoded = name.encode()
        digest.update(b"%d:%s:" % (len(encoded), encoded))
        size = 0
        # compression=None: hash the stored bytes, not what pyarrow would decompress from a .gz name.
        with files.filesystem.open_input_stream(path, compression=None) as stream:
            while chunk := stream.read(CHUNK_BYTES):
                digest.update(chunk)
                size += len(chunk)
        # The length after the bytes keeps file boundaries unambiguous.
        digest.update(b":%d;" % size)
    return f"sha256:{digest.hexdigest()}"
