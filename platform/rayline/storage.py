"""Where runs, prepared data and the registry live: a local folder, or a folder on an object store.

`storage.root` is a local path or a pyarrow filesystem URI (s3://bucket/prefix, gs://..., with pyarrow's
query options such as `?endpoint_override=127.0.0.1:9000&scheme=http` for an S3-compatible store). The root
string travels unchanged to every process that needs it (workers, Serve replicas, jobs), and each opens it
itself: credentials come from the standard environment (AWS_ACCESS_KEY_ID, ...), never from the string.

Local folders are handled as `pathlib.Path`s, as before; an object-store folder is an `ObjectPath`, which
offers the part of Path's interface the registry uses, with writes that are whole-object PUTs (a reader sees
the old object or the new one, never half) and a lock made of objects (`object_lock`), as object stores have
neither rename nor flock. Standard library and pyarrow only.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pyarrow.fs as pafs

from rayline.errors import RaylineError

LOCK_STALE_AFTER_S = 120.0
"""A lock object older than this was left by a process that died holding it, and is ignored."""
CACHE_ENV = "RAYLINE_CACHE"
"""Where object-store files are cached on this node (default ~/.cache/rayline)."""


class StorageError(RaylineError, OSError):
    """storage.root cannot be opened, read or written."""


def is_remote(root: str | os.PathLike) -> bool:
    """A URI of a filesystem other than this machine's (s3://, gs://, hdfs://, ...)."""
    text = str(root)
    return "://" in text and not text.startswith("file://")


def join(root: str, *parts: str) -> str:
    """`root` with path parts appended, keeping a URI's query (its filesystem options) at the end."""
    if not is_remote(root):
        return os.path.join(root, *parts)
    scheme, netloc, path, query, fragment = urlsplit(root)
    return urlunsplit((scheme, netloc, "/".join([path.rstrip("/"), *parts]), query, fragment))


def with_endpoint(root: str, endpoint_override: str | None) -> str:
    """An object-store root with `endpoint_override` (http://host:port or host:port) in its query."""
    if not endpoint_override or not is_remote(root):
        return root
    scheme, netloc, path, query, fragment = urlsplit(root)
    options = dict(parse_qsl(query))
    endpoint = urlsplit(endpoint_override if "://" in endpoint_override else f"https://{endpoint_override}")
    options.update(endpoint_override=endpoint.netloc, scheme=endpoint.scheme)
    return urlunsplit((scheme, netloc, path, urlencode(options), fragment))


def display(root: str) -> str:
    """A root for messages: its scheme and path, without query options."""
    if not is_remote(root):
        return str(root)
    scheme, netloc, path, _, _ = urlsplit(root)
    return f"{scheme}://{netloc}{path}"


def open_root(root: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path on it) of a local path or a filesystem URI (file:// included)."""
    if "://" not in root:
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(root))
    try:
        return pafs.FileSystem.from_uri(root)
    except Exception as err:  # pyarrow raises several types for bad or unreachable URIs
        raise StorageError(f"storage.root {display(root)}: cannot open it as a filesystem: {err}") from err


def location(root: str | os.PathLike) -> Path | ObjectPath:
    """A folder of storage.root as a Path (local) or an ObjectPath (object store)."""
    if not is_remote(root):
        return Path(root).expanduser()
    fs, path = open_root(str(root))
    bucket = ObjectPath(fs, path.split("/", 1)[0], str(root))
    if not bucket_exists(bucket):
        raise StorageError(
            f"storage.root {display(str(root))}: bucket {bucket.name} does not exist (or is not visible "
            "with these credentials); create it first"
        )
    return ObjectPath(fs, path.rstrip("/"), str(root))


def ray_storage(folder: Path | ObjectPath) -> tuple[str, pafs.FileSystem | None]:
    """(storage_path, storage_filesystem) as Ray Train and Tune take them for a folder: the filesystem is given
    only for an object store (a URI's query options would otherwise be lost)."""
    if isinstance(folder, ObjectPath):
        return folder.path, folder.fs
    return str(folder), None


_BUCKETS_SEEN: set[str] = set()


def bucket_exists(bucket: ObjectPath) -> bool:
    """Whether the bucket is there; asked of the store once per process and bucket, once it is."""
    key = str(bucket)
    if key not in _BUCKETS_SEEN and bucket.is_dir():
        _BUCKETS_SEEN.add(key)
    return key in _BUCKETS_SEEN


class ObjectPath:
    """A file or folder on an object store, with the part of pathlib.Path's interface the registry uses.

    Folders exist only through the objects under them: `mkdir` does nothing, and an empty folder is not there."""

    def __init__(self, fs: pafs.FileSystem, path: str, root_uri: str):
        self.fs, self.path, self.root_uri = fs, path, root_uri

    def __truediv__(self, part: str) -> ObjectPath:
        return ObjectPath(self.fs, f"{self.path}/{part}", self.root_uri)

    def __str__(self) -> str:
        return f"{urlsplit(self.root_uri).scheme}://{self.path}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectPath) and (self.fs, self.path) == (other.fs, other.path)

    def __hash__(self) -> int:
        return hash(self.path)

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def parent(self) -> ObjectPath:
        return ObjectPath(self.fs, self.path.rsplit("/", 1)[0], self.root_uri)

    @property
    def parents(self) -> list[ObjectPath]:
        parts = self.path.split("/")
        return [ObjectPath(self.fs, "/".join(parts[:i]), self.root_uri) for i in range(len(parts) - 1, 0, -1)]

    def with_name(self, name: str) -> ObjectPath:
        return self.parent / name

    def _info(self) -> pafs.FileInfo:
        return self._call("inspect", self.fs.get_file_info, self.path)

    def exists(self) -> bool:
        return self._info().type != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self._info().type == pafs.FileType.File

    def is_dir(self) -> bool:
        return self._info().type == pafs.FileType.Directory

    def iterdir(self) -> Iterator[ObjectPath]:
        selector = pafs.FileSelector(self.path, allow_not_found=True)
        for info in self._call("list", self.fs.get_file_info, selector):
            yield ObjectPath(self.fs, info.path.rstrip("/"), self.root_uri)

    def files(self) -> list[tuple[str, int]]:
        """(path relative to this folder, size) of every file under it."""
        selector = pafs.FileSelector(self.path, recursive=True, allow_not_found=True)
        infos = self._call("list", self.fs.get_file_info, selector)
        return sorted((i.path[len(self.path) + 1 :], i.size) for i in infos if i.type == pafs.FileType.File)

    def stat_size(self) -> int:
        return self._info().size

    def read_bytes(self) -> bytes:
        def read(path: str) -> bytes:
            with self.fs.open_input_stream(path) as f:
                return f.read()

        return self._call("read", read, self.path)

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def write_bytes(self, content: bytes) -> None:
        """One PUT: readers see the old object or the new one."""

        def write(path: str) -> None:
            with self.fs.open_output_stream(path) as f:
                f.write(content)

        self._call("write", write, self.path)

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode())

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Nothing to do: an object store has no folders, only keys."""

    def unlink(self, missing_ok: bool = False) -> None:
        try:
            self.fs.delete_file(self.path)
        except FileNotFoundError:
            if not missing_ok:
                raise
        except OSError as err:
            raise StorageError(f"storage.root {display(self.root_uri)}: cannot delete {self}: {err}") from None

    def remove_tree(self) -> None:
        self._call("delete", self.fs.delete_dir_contents, self.path, missing_dir_ok=True)

    def upload(self, local: Path) -> None:
        """Copy a local folder's files under this folder (each one a whole-object PUT)."""
        for file in sorted(p for p in Path(local).rglob("*") if p.is_file()):
            (self / file.relative_to(local).as_posix()).write_bytes(file.read_bytes())

    def download(self, local: Path) -> None:
        """Copy every file under this folder into a local folder."""
        for relative, _ in self.files():
            target = Path(local) / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes((self / relative).read_bytes())

    def _call(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FileNotFoundError:
            raise
        except OSError as err:
            raise StorageError(f"storage.root {display(self.root_uri)}: cannot {what} {self}: {err}") from None


# ---------------------------------------------------------------- lock


@contextmanager
def object_lock(folder: ObjectPath, *, timeout_s: float = 60.0) -> Iterator[None]:
    """Mutual exclusion among processes that change `folder`, on a store with read-after-write and list
    consistency (S3 since 2020, GCS, MinIO) but no rename or conditional write through pyarrow.

    Each contender PUTs its own ticket under `folder/.locks/`, then lists them: it holds the lock only when its
    ticket is the only live one; otherwise it deletes its ticket and tries again after a random pause. Two
    contenders that both see each other both back off, so at most one ever holds it. A ticket older than
    LOCK_STALE_AFTER_S (by the store's clock) belongs to a process that died and is deleted."""
    tickets = folder / ".locks"
    mine = tickets / f"{uuid.uuid4().hex}.ticket"
    deadline = time.monotonic() + timeout_s
    while True:
        mine.write_bytes(str(os.getpid()).encode())
        if live_tickets(tickets, mine.name) == [mine.name]:
            break
        mine.unlink(missing_ok=True)
        if time.monotonic() > deadline:
            raise StorageError(f"{folder}: another process holds the registry lock ({tickets}) for {timeout_s:.0f} s")
        time.sleep(random.uniform(0.05, 0.4))
    try:
        yield
    finally:
        mine.unlink(missing_ok=True)


def live_tickets(tickets: ObjectPath, mine: str) -> list[str]:
    """The tickets under `tickets` of processes that may still hold or want the lock (ours always counts)."""
    selector = pafs.FileSelector(tickets.path, allow_not_found=True)
    infos = tickets._call("list", tickets.fs.get_file_info, selector)
    now = time.time()
    live = []
    for info in infos:
        written = info.mtime.timestamp() if info.mtime is not None else now
        if now - written > LOCK_STALE_AFTER_S and not info.path.endswith(f"/{mine}"):
            ObjectPath(tickets.fs, info.path, tickets.root_uri).unlink(missing_ok=True)
        else:
            live.append(info.path.rsplit("/", 1)[-1])
    return sorted(live)


# ---------------------------------------------------------------- node cache


def cached_copy(folder: ObjectPath, content_key: str) -> Path:
    """A local copy of an object-store folder, kept on this node under the hash of `content_key` (e.g. its
    manifest, which names every file's sha256): a folder whose content changed gets a new copy."""
    base = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "rayline") / "objects"
    target = base / hashlib.sha256(f"{folder}\n{content_key}".encode()).hexdigest()[:32]
    if (target / ".complete").is_file():
        return target
    staging = base / f".{target.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}"
    folder.download(staging)
    (staging / ".complete").write_text(str(folder))
    try:
        staging.rename(target)
    except OSError:  # another process on this node finished the same copy first
        shutil.rmtree(staging, ignore_errors=True)
    return target
