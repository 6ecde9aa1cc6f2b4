"""The model registry: named models, their numbered versions and which version of each name to serve.

The registry lives under `<storage.root>/registry/` and holds named models, the way MLflow's registry
does: `models/<name>/<version>/` holds a copy of a run's best checkpoint (checkpoint.py has its format)
plus `record.json` (metrics, config, data fingerprint, code version), and `models/<name>/serving.json`
names the version of that name to serve. Versions are numbered per name (registry_layout.py has the
formats and files).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

from rayline.checkpoint import (
    CONFIG_FILE,
    MANIFEST_FILE,
    STATE_FILE,
    LoadedModel,
    load_checkpoint,
    verify_checkpoint,
)
from rayline.registry_layout import (
    RECORD_FILE,
    ModelVersion,
    RegisteredModel,
    RegistryError,
    check_name,
    claim_next_version,
    is_name,
    migrate_unnamed_layout,
    now,
    read_json,
    split_model_spec,
    write_json,
)
from rayline.storage import ObjectPath, cached_copy, location

# ---------------------------------------------------------------- registry


class Registry:
    """Named models under `<root>/registry`, each with its own versions and serving marker (registry_layout.py)."""

    def __init__(self, root: str | Path):
        self.path = location(root) / "registry"
        if isinstance(self.path, Path):  # object-store registries never had the layout from before names
            self._migrate()

    def names(self) -> list[str]:
        models = self.path / "models"
        if not models.is_dir():
            return []
        return sorted(
            p.name for p in models.iterdir() if p.is_dir() and is_name(p.name) and self.model(p.name).versions()
        )

    def model(self, name: str) -> RegisteredModel:
        """One name's versions and marker (which may have none yet)."""
        return RegisteredModel(self.path, name)

    def versions(self) -> list[ModelVersion]:
        """Every version of every name, by name then number."""
        return [ModelVersion(name, v) for name in self.names() for v in self.model(name).versions()]

    def records(self, name: str | None = None) -> list[dict[str, Any]]:
        """The records of one name's versions, or of every name's."""
        names = [self.require(name)] if name else self.names()
        return [record for n in names for record in self.model(n).records()]

    def record(self, ref: ModelVersion) -> dict[str, Any]:
        return self.model(self.require(ref.name)).record(ref.version)

    def record_export(self, ref: ModelVersion, entry: dict[str, Any]) -> None:
        """Add an exported file (its format, sha256, opset, exporter, quantization, parity) to the version's
        record, under "exports"; earlier exports stay listed."""
        self.model(self.require(ref.name)).add_to_record(ref.version, "exports", entry)

    def checkpoint_dir(self, ref: ModelVersion) -> Path:
        """A version's checkpoint as a local folder: on an object store, this node's copy of it, made once per
        manifest (which names every file's sha256), so a changed version is fetched again."""
        folder = self.model(self.require(ref.name)).checkpoint_dir(ref.version)
        if isinstance(folder, ObjectPath):
            return cached_copy(folder, (folder / MANIFEST_FILE).read_text())
        return folder

    def require(self, name: str) -> str:
        """`name` if the registry holds versions of it; else a RegistryError listing the names it holds."""
        check_name(name)
        names = self.names()
        if name not in names:
            raise RegistryError(f"no model named {name!r} in {self.path} (models: {', '.join(names) or 'none yet'})")
        return name

    def resolve(self, name: str | None = None, version: str | None = None) -> ModelVersion:
        """The version to use: of `name`, or of the registry's only name; the one asked for, else the serving
        one, else the newest."""
        if name is None:
            names = self.names()
            if not names:
                raise RegistryError(f"the registry at {self.path} has no models yet; run `rayline train` first")
            if len(names) > 1:
                raise RegistryError(
                    f"the registry at {self.path} holds several models ({', '.join(names)}); name the one to use"
                )
            name = names[0]
        return self.model(self.require(name)).resolve(version)

    def find(self, spec: str | None) -> ModelVersion:
        """`NAME` or `NAME/vN` as a user writes it (None: the only name's serving version)."""
        return self.resolve(*split_model_spec(spec)) if spec else self.resolve()

    def load(self, ref: ModelVersion | None = None) -> LoadedModel:
        ref = self.resolve(ref.name, ref.version) if ref else self.resolve()
        return load_checkpoint(self.checkpoint_dir(ref), version=ref)

    def register(
        self,
        checkpoint_dir: str | Path,
        *,
        run_name: str,
        data_fingerprint: str,
        test_metrics: dict[str, float] | None = None,
        params: dict[str, Any] | None = None,
        evaluation: dict[str, Any] | None = None,
        artifacts: dict[str, bytes] | None = None,
        serve: bool = True,
        tracking: dict[str, Any] | None = None,
    ) -> ModelVersion:
        """Copy a checkpoint in as the next version of its model name, record how it was made, and (by default)
        serve it. The name is the checkpoint config's `registry.model_name`, else its pipeline name.

        `evaluation` (JSON-able: confusion matrix, baseline comparison, ...) is stored in the record under that
        key; `artifacts` are files (name -> bytes, e.g. a PNG) written beside the record; `tracking` says where
        the run is tracked (its MLflow run id)."""
        verify_checkpoint(checkpoint_dir)
        config = read_json(Path(checkpoint_dir) / CONFIG_FILE)
        name = check_name(registered_name(config), f"{checkpoint_dir}: registry.model_name")
        entry = self.model(name)
        version, version_dir = claim_next_version(entry.path)
        if isinstance(version_dir, ObjectPath):
            (version_dir / "checkpoint").upload(Path(checkpoint_dir))
        else:
            shutil.copytree(checkpoint_dir, version_dir / "checkpoint")
        state = read_json(Path(checkpoint_dir) / STATE_FILE)
        record = {
            "name": name,
            "version": version,
            "pipeline": config["name"],
            "run_name": run_name,
            "created_at": now(),
            "epoch": state["epoch"],
            "metrics": state["metrics"],
            "test_metrics": test_metrics or {},
            "selected_by": config["train"]["checkpoint"],
            "data_fingerprint": data_fingerprint,
            "code_version": code_version(),
            "source_checkpoint": str(checkpoint_dir),
            "params": params or {},
            "history": state["history"],
            "evaluation": evaluation or {},
            "tracking": tracking or {},
        }
        for file_name, content in (artifacts or {}).items():
            (version_dir / file_name).write_bytes(content)
        write_json(version_dir / RECORD_FILE, record)  # written last: a version without it is not listed
        if serve:
            entry.serve_registered(version)
        return ModelVersion(name, version)

    def _migrate(self) -> None:
        try:
            message = migrate_unnamed_layout(self.path)
        except OSError as err:
            raise RegistryError(
                f"the registry at {self.path} uses the layout from before model names and could not be moved "
                f"to the named one ({err}); open it once with write access (e.g. `rayline models --root ...`)"
            ) from err
        if message:
            print(message, flush=True)


def registered_name(config: dict[str, Any]) -> str:
    """The name a checkpoint's config registers under (checkpoints from before names have no registry key)."""
    return (config.get("registry") or {}).get("model_name") or config["name"]


# ---------------------------------------------------------------- helpers


def code_version() -> str:
    """The git commit of the rayline source (with '+dirty' for local edits), else the package version."""
    repo = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        if commit.returncode == 0:
            dirty = subprocess.run(
                ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout.strip()
            return commit.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"rayline-{version('rayline')}"
    except PackageNotFoundError:
        return "unknown"
