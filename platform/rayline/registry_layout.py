"""The registry's names and files: model names, version numbers, markers, locks, and the one-time move
from the unnamed layout. Standard library only; registry.py builds the Registry on top of it.

    <storage.root>/registry/
        models/<name>/<version>/   checkpoint/ (a copy of a run's best checkpoint), record.json, artifacts
        models/<name>/serving.json the version of <name> to serve, and the ones served before it
        models/<name>/.lock        held while the marker changes (versions are claimed by an atomic mkdir)

The layout before names (every pipeline in one sequence) was `models/<version>/` and one
`serving.json` beside `models/`; `migrate_unnamed_layout` moves such a registry into this one.
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import json
import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rayline.errors import RaylineError
from rayline.storage import ObjectPath, object_lock

NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")
"""A model name: letters, digits, '_', '.', '-', at most 100, not starting with '.' or '-', not a version."""
VERSION = re.compile(r"v[1-9][0-9]{0,8}")
"""A version of a model: v1, v2, ... numbered per name."""
MARKER_FILE = "serving.json"
RECORD_FILE = "record.json"
LOCK_FILE = ".lock"
SERVING_HISTORY = 20
"""Earlier serving versions kept in a name's marker for rollback."""
UNNAMED_MARKER_KEPT = "serving.json.migrated"
"""What the unnamed layout's marker is renamed to once its content lives in the per-name markers."""
UNNAMED_INCOMPLETE = "incomplete-unnamed"
"""Where the unnamed layout's versions without a record (a registration cut short) are kept."""
UNLOCKABLE = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS}
"""flock errors of file systems that have no locks."""


class RegistryError(RaylineError, ValueError):
    """A missing, partial or tampered checkpoint, or an unknown model name or version."""


@dataclass(frozen=True)
class ModelVersion:
    """One registered model version: the model's name and its version within that name."""

    name: str
    version: str

    def __str__(self) -> str:
        return f"{self.name}/{self.version}"


def is_version(text: object) -> bool:
    return isinstance(text, str) and bool(VERSION.fullmatch(text))


def is_name(text: str) -> bool:
    return bool(NAME.fullmatch(text)) and not is_version(text)


def check_name(name: str, where: str = "model name") -> str:
    if not isinstance(name, str) or not is_name(name):
        raise RegistryError(
            f"{where} {name!r} is not a model name: use letters, digits, '_', '.' and '-' (at most 100, "
            "not starting with '.' or '-'), and not a version such as v3"
        )
    return name


def check_version(version: str, known: list[str], name: str) -> str:
    if not is_version(version):
        shown = ", ".join(known) or "none yet"
        raise RegistryError(f"{version!r} is not a model version; versions look like v3 ({name} has: {shown})")
    return version


def version_number(name: str) -> int:
    return int(name[1:]) if is_version(name) else 0


def split_model_spec(spec: str) -> tuple[str, str | None]:
    """'digits/v3' -> ('digits', 'v3'); 'digits' -> ('digits', None). Checks the forms, not existence."""
    name, slash, version = spec.partition("/")
    check_name(name, "--model")
    if slash and not is_version(version):
        raise RegistryError(f"--model {spec!r}: {version!r} is not a version; write NAME or NAME/v3")
    return name, version or None


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------- files


def read_json(path: Path | ObjectPath) -> Any:
    return json.loads((path if isinstance(path, ObjectPath) else Path(path)).read_text())


def write_json(path: Path | ObjectPath, obj: Any) -> None:
    """Write via a temporary file of its own and rename, so readers never see half a file and two writers
    never share a temporary file; on an object store, in one PUT, which readers see whole or not at all."""
    text = json.dumps(obj, indent=2, sort_keys=False, default=float)
    if isinstance(path, ObjectPath):
        path.write_text(text)
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkstemp: its files are private to the writer (0600), and replicas may read as another user.
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(tmp, "x") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def locked(path: Path | ObjectPath) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if needed) across processes on this file system; on an object
    store, the lock of the folder `path` is in."""
    if isinstance(path, ObjectPath):
        with object_lock(path.parent):
            yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        held = lock_exclusively(f)
        try:
            yield
        finally:
            if held:
                fcntl.flock(f, fcntl.LOCK_UN)


def lock_exclusively(f: Any) -> bool:
    """Wait for an exclusive lock; False on a file system without locks (some FUSE mounts), where every write
    is still a whole-file rename and versions are still claimed by mkdir: only two marker changes at the same
    moment can lose one history entry there."""
    try:
        fcntl.flock(f, fcntl.LOCK_EX)
        return True
    except OSError as err:
        if err.errno not in UNLOCKABLE:
            raise
        return False


def claim_next_version(name_dir: Path | ObjectPath) -> tuple[str, Path | ObjectPath]:
    """Create the next free version directory of a name; mkdir is atomic, so no two callers share one. An
    object store has no mkdir: there the version is claimed under the name's lock by an object in it."""
    if isinstance(name_dir, ObjectPath):
        with locked(name_dir / LOCK_FILE):
            number = max((version_number(p.name) for p in name_dir.iterdir()), default=0) + 1
            claimed = name_dir / f"v{number}"
            (claimed / ".claimed").write_text(now())
            return claimed.name, claimed
    name_dir.mkdir(parents=True, exist_ok=True)
    number = max((version_number(p.name) for p in name_dir.iterdir()), default=0) + 1
    while True:
        candidate = name_dir / f"v{number}"
        try:
            candidate.mkdir()
            return candidate.name, candidate
        except FileExistsError:
            number += 1


def marker(name: str, version: str, history: list[str]) -> dict[str, Any]:
    return {"name": name, "version": version, "history": history[-SERVING_HISTORY:], "changed_at": now()}


# ---------------------------------------------------------------- one name


class RegisteredModel:
    """One model name's versions under `<root>/registry/models/<name>`, and which of them is served."""

    def __init__(self, registry_path: Path | ObjectPath, name: str):
        self.name = check_name(name)
        self.path = registry_path / "models" / name

    def versions(self) -> list[str]:
        if not self.path.is_dir():
            return []
        found = [p.name for p in self.path.iterdir() if is_version(p.name) and (p / RECORD_FILE).is_file()]
        return sorted(found, key=version_number)

    def record(self, version: str) -> dict[str, Any]:
        if not is_version(version):
            check_version(version, self.versions(), self.name)
        path = self.path / version / RECORD_FILE
        if not path.is_file():
            known = self.versions()
            raise RegistryError(
                f"no model version {version!r} of {self.name!r} in {self.path.parents[1]} "
                f"(known: {', '.join(known) or 'none yet'})"
            )
        return {**read_json(path), "name": self.name}  # records moved from before names have no name

    def records(self) -> list[dict[str, Any]]:
        return [self.record(v) for v in self.versions()]

    def add_to_record(self, version: str, key: str, entry: dict[str, Any]) -> None:
        """Append `entry` to the list under `key` in a version's record (e.g. "exports"), under the name's lock so
        two writers at the same moment both land."""
        self.record(version)
        path = self.path / version / RECORD_FILE
        with locked(self.path / LOCK_FILE):
            record = read_json(path)
            record[key] = [*record.get(key, []), entry]
            write_json(path, record)

    def checkpoint_dir(self, version: str) -> Path | ObjectPath:
        self.record(version)
        return self.path / version / "checkpoint"

    def ref(self, version: str) -> ModelVersion:
        return ModelVersion(self.name, version)

    def serving_version(self) -> str | None:
        return self._marker().get("version")

    def serving_history(self) -> list[str]:
        """Versions served before the current one, oldest first: what `rollback_serving` walks back through."""
        return list(self._marker().get("history", []))

    def set_serving(self, version: str) -> None:
        """Mark a version as the one to serve; the one it replaces joins the history."""
        self.record(version)
        with locked(self.path / LOCK_FILE):
            state = self._marker()
            current, history = state.get("version"), state.get("history", [])
            if current and current != version:
                history = [*history, current]
            write_json(self.path / MARKER_FILE, marker(self.name, version, history))

    def serve_registered(self, version: str) -> None:
        """Serve a version just registered, unless one registered after it (at the same moment) already is:
        then it joins the history, as if the two had registered one after the other."""
        with locked(self.path / LOCK_FILE):
            state = self._marker()
            current, history = state.get("version"), state.get("history", [])
            if current and version_number(current) > version_number(version):
                version, current = current, version
            if current and current != version:
                history = [*history, current]
            write_json(self.path / MARKER_FILE, marker(self.name, version, history))

    def rollback_serving(self) -> str:
        """Serve the previously served version again (dropping it from the history); returns it."""
        with locked(self.path / LOCK_FILE):
            history = self.serving_history()
            if not history:
                raise RegistryError(f"nothing to roll back to: model {self.name!r} has no earlier serving version")
            previous = history[-1]
            self.record(previous)
            write_json(self.path / MARKER_FILE, marker(self.name, previous, history[:-1]))
        return previous

    def resolve(self, version: str | None = None) -> ModelVersion:
        """The version to use: the one asked for, else the serving one, else the newest."""
        if version:
            self.record(version)
            return self.ref(version)
        chosen = self.serving_version() or (self.versions() or [None])[-1]
        if chosen is None:
            raise RegistryError(f"model {self.name!r} has no versions in {self.path.parents[1]} yet")
        return self.ref(chosen)

    def _marker(self) -> dict[str, Any]:
        path = self.path / MARKER_FILE
        return read_json(path) if path.is_file() else {}


# ---------------------------------------------------------------- the unnamed layout


def unnamed_versions(registry: Path) -> dict[str, Path]:
    models = registry / "models"
    if not models.is_dir():
        return {}
    return {p.name: p for p in models.iterdir() if p.is_dir() and is_version(p.name)}


def has_unnamed_layout(registry: Path) -> bool:
    return (registry / MARKER_FILE).is_file() or bool(unnamed_versions(registry))


def migrate_unnamed_layout(registry: Path) -> str | None:
    """Move a registry written before names into the named layout, once; returns what moved, else None.

    Each version keeps its number under its pipeline's name (renumbered only if that number is already
    taken there) and the old serving marker becomes per-name markers. Under a lock, and every step is a
    rename or a whole-file write, so two processes starting it at once, or a run cut short and started
    again, lose nothing. Order: markers, then versions, then the old marker last (its presence means
    "not finished", which sends later callers to wait on the lock).
    """
    if not has_unnamed_layout(registry):
        return None
    with locked(registry / LOCK_FILE):
        if not has_unnamed_layout(registry):
            return None  # another process finished it while this one waited
        old = unnamed_versions(registry)
        names = {v: unnamed_name(p) for v, p in old.items()}
        targets = plan_targets(registry, old, names)
        markers = write_split_markers(registry, names, targets)
        moved = move_versions(registry, old, targets)
        kept = registry / UNNAMED_MARKER_KEPT
        if (registry / MARKER_FILE).is_file():
            os.replace(registry / MARKER_FILE, kept)
        return migration_message(registry, moved, markers, kept if kept.is_file() else None)


def unnamed_name(version_dir: Path) -> str | None:
    """The name an unnamed-layout version moves to: its pipeline's; None for one without a record."""
    record = version_dir / RECORD_FILE
    if not record.is_file():
        return None
    pipeline = read_json(record).get("pipeline", "")
    return pipeline if is_name(pipeline) else "unnamed"


def plan_targets(registry: Path, old: dict[str, Path], names: dict[str, str | None]) -> dict[str, Path]:
    """Where each old version goes: models/<name>/<same version>, or the next free number if taken."""
    targets: dict[str, Path] = {}
    for version in sorted(old, key=version_number):
        name = names[version]
        if name is None:
            targets[version] = registry / UNNAMED_INCOMPLETE / version
            continue
        target = registry / "models" / name / version
        if target.exists():
            target = reclaim_or_claim(target.parent, taken=set(targets.values()))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
        targets[version] = target
    return targets


def reclaim_or_claim(folder: Path, taken: set[Path]) -> Path:
    """A new number for a version whose own is taken. A migration cut short has already claimed (and may have
    written into a marker) empty version folders, in this same order: reuse those first, so the markers it wrote
    still name the versions that move there."""
    empty = [p for p in folder.iterdir() if is_version(p.name) and p.is_dir() and not any(p.iterdir())]
    for candidate in sorted(empty, key=lambda p: version_number(p.name)):
        if candidate not in taken:
            return candidate
    return claim_next_version(folder)[1]


def write_split_markers(registry: Path, names: dict[str, str | None], targets: dict[str, Path]) -> dict[str, str]:
    """Per-name markers from the old one: each name serves its last-served version; returns name -> version.

    A name that already has a marker keeps it (a migration started again after writing it)."""
    path = registry / MARKER_FILE
    if not path.is_file():
        return {}
    old = read_json(path)
    sequence = [*old.get("history", []), *([old["version"]] if old.get("version") else [])]
    per_name: dict[str, list[str]] = {}
    for version in sequence:
        if names.get(version):
            per_name.setdefault(names[version], []).append(targets[version].name)
    written = {}
    for name, served in per_name.items():
        target = registry / "models" / name / MARKER_FILE
        if not target.is_file():
            write_json(target, marker(name, served[-1], served[:-1]))
        written[name] = read_json(target)["version"]
    return written


def move_versions(registry: Path, old: dict[str, Path], targets: dict[str, Path]) -> dict[str, list[str]]:
    """Rename every old version into place; returns destination folder -> ['v1', 'v3 (as v4)', ...]."""
    moved: dict[str, list[str]] = {}
    for version, source in sorted(old.items(), key=lambda item: version_number(item[0])):
        target = targets[version]
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)  # onto a missing or just-claimed empty directory
        if target.name != version:
            record_path = target / RECORD_FILE
            write_json(record_path, {**read_json(record_path), "version": target.name})
        label = version if target.name == version else f"{version} (as {target.name}, {version} was taken)"
        moved.setdefault(str(target.parent.relative_to(registry)), []).append(label)
    return moved


def migration_message(registry: Path, moved: dict[str, list[str]], markers: dict[str, str], kept: Path | None) -> str:
    lines = [f"rayline: moved the registry at {registry} to one version sequence per model name:"]
    for folder, versions in moved.items():
        serving = markers.get(Path(folder).name)
        note = f" (serving {serving})" if serving else ""
        if folder == UNNAMED_INCOMPLETE:
            note = " (no record.json: registrations cut short, kept only to inspect)"
        lines.append(f"  models/{', '.join(versions)} -> {folder}/{note}")
    if kept is not None:
        lines.append(
            f"  {MARKER_FILE} -> models/<name>/{MARKER_FILE} for {', '.join(sorted(markers)) or 'no name'}; "
            f"the old file is kept as {kept.relative_to(registry)}"
        )
    return "\n".join(lines)
