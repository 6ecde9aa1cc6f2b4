"""The model registry: the only code that knows the checkpoint layout.

A checkpoint directory holds everything serving, batch prediction and evaluation need:

    model.pt           weights of the whole plain model, whatever the strategy (a state dict; weights_only=True)
    optimizer.pt       optimizer state for resuming ddp (empty for sharded strategies: see sharded/)
    state.json         epoch and the metrics reported with this checkpoint
    preprocessor.json  the fitted preprocessor (feature statistics, label map)
    config.json        the full pipeline config that produced it
    sharded/           fsdp/tensor/pipeline/hybrid only: model + optimizer state as torch.distributed.checkpoint
                       shards, each written by the rank that holds it, for resuming with the same strategy
    manifest.json      sha256 of every file above (each shard included), written last

The registry lives under `<storage.root>/registry/` and holds named models, the way MLflow's registry
does: `models/<name>/<version>/` holds a copy of a run's best checkpoint plus `record.json` (metrics,
config, data fingerprint, code version), and `models/<name>/serving.json` names the version of that
name to serve. Versions are numbered per name (registry_layout.py has the formats and files).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rayline.config import PipelineConfig
from rayline.data.preprocess import Preprocessor
from rayline.models import build_model
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

MODEL_FILE = "model.pt"
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "state.json"
PREPROCESSOR_FILE = "preprocessor.json"
CONFIG_FILE = "config.json"
MANIFEST_FILE = "manifest.json"
SHARDED_DIR = "sharded"
CHECKPOINT_FILES = (MODEL_FILE, OPTIMIZER_FILE, STATE_FILE, PREPROCESSOR_FILE, CONFIG_FILE)


# ---------------------------------------------------------------- checkpoints


def save_checkpoint(
    directory: str | Path,
    *,
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    epoch: int,
    metrics: dict[str, float],
    history: list[dict[str, float]],
    preprocessor: Preprocessor,
    config: PipelineConfig,
    sharded_sha256: dict[str, str] | None = None,
) -> None:
    """Write a self-sufficient checkpoint; `history` is every epoch's metrics up to this one.

    `sharded_sha256` lists the sharded copy's files (from `save_sharded_state` on every rank), which the
    manifest covers although other ranks write them.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(model_state, directory / MODEL_FILE)
    torch.save(optimizer_state, directory / OPTIMIZER_FILE)
    write_json(directory / STATE_FILE, {"epoch": epoch, "metrics": metrics, "history": history})
    write_json(directory / PREPROCESSOR_FILE, preprocessor.to_dict())
    write_json(directory / CONFIG_FILE, config.model_dump(mode="json"))
    digests = {f: file_sha256(directory / f) for f in CHECKPOINT_FILES}
    write_json(directory / MANIFEST_FILE, {"sha256": {**digests, **(sharded_sha256 or {})}})


def save_sharded_state(directory: str | Path, state: dict[str, Any]) -> dict[str, str]:
    """Every rank calls this (a collective): writes its shards of `state` under SHARDED_DIR and returns the
    sha256 of the files it wrote, keyed by their path in the checkpoint."""
    import torch.distributed.checkpoint as dcp

    sharded = Path(directory) / SHARDED_DIR
    dcp.save(state, checkpoint_id=str(sharded))
    return {f"{SHARDED_DIR}/{p.name}": file_sha256(p) for p in sorted(sharded.iterdir()) if p.is_file()}


def load_sharded_state(directory: str | Path, state: dict[str, Any]) -> tuple[int, list[dict]]:
    """Every rank calls this (a collective): loads the sharded copy into `state` in place (tensors laid out
    as this rank holds them); returns (epoch, history)."""
    import torch.distributed.checkpoint as dcp

    directory = Path(directory)
    verify_checkpoint(directory)
    if not (directory / SHARDED_DIR).is_dir():
        raise RegistryError(f"{directory}: has no {SHARDED_DIR}/ copy; it was written by strategy ddp")
    dcp.load(state, checkpoint_id=str(directory / SHARDED_DIR))
    progress = read_json(directory / STATE_FILE)
    return int(progress["epoch"]), progress["history"]


def checkpoint_config(directory: str | Path) -> PipelineConfig:
    """The pipeline config that wrote a checkpoint."""
    return PipelineConfig.model_validate(read_json(Path(directory) / CONFIG_FILE))


def verify_checkpoint(directory: str | Path) -> None:
    """Refuse a checkpoint whose files are missing, differ from the manifest written at save time, or (in the
    sharded copy) are not in it."""
    directory = Path(directory)
    manifest_path = directory / MANIFEST_FILE
    if not manifest_path.is_file():
        raise RegistryError(f"{directory}: not a complete rayline checkpoint (no {MANIFEST_FILE})")
    try:
        expected = json.loads(manifest_path.read_text())["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        # A write cut short leaves an empty or half-written manifest: the checkpoint is partial, not a crash.
        raise RegistryError(f"{manifest_path}: checkpoint manifest is partial or corrupt ({err!r})") from err
    if not isinstance(expected, dict):
        raise RegistryError(f"{manifest_path}: checkpoint manifest is corrupt (sha256 is not a mapping)")
    for name in dict.fromkeys([*CHECKPOINT_FILES, *expected]):
        path = directory / name
        if not path.is_file():
            raise RegistryError(f"{directory}: checkpoint is partial, {name} is missing")
        if file_sha256(path) != expected.get(name):
            raise RegistryError(f"{path}: contents do not match the checkpoint manifest (tampered or corrupt)")
    sharded = directory / SHARDED_DIR
    unlisted = (
        [p.name for p in sharded.iterdir() if f"{SHARDED_DIR}/{p.name}" not in expected] if sharded.is_dir() else []
    )
    if unlisted:
        raise RegistryError(f"{sharded}: files not in the checkpoint manifest: {sorted(unlisted)}")


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """The checkpoints of a Train run that pass verify_checkpoint, by name (oldest first). One being written,
    cut short, or pruned while it is looked at is left out."""
    complete = []
    for directory in sorted(Path(run_dir).glob("checkpoint_*")):
        if not directory.is_dir():  # Ray Train's checkpoint_manager_snapshot.json
            continue
        try:
            verify_checkpoint(directory)
        except (RegistryError, OSError):
            continue
        complete.append(directory)
    return complete


def last_complete_checkpoint(run_dir: str | Path) -> Path | None:
    """The complete checkpoint of a Train run with the highest epoch; None when it has none."""
    return max(complete_checkpoints(run_dir), key=lambda d: int(checkpoint_metrics(d)["epoch"]), default=None)


def load_training_state(directory: str | Path) -> tuple[dict, dict, int, list[dict]]:
    """(model state, optimizer state, epoch, history) of a checkpoint, for resuming training."""
    directory = Path(directory)
    verify_checkpoint(directory)
    model_state = torch.load(directory / MODEL_FILE, weights_only=True, map_location="cpu")
    optimizer_state = torch.load(directory / OPTIMIZER_FILE, weights_only=True, map_location="cpu")
    state = read_json(directory / STATE_FILE)
    return model_state, optimizer_state, int(state["epoch"]), state["history"]


def checkpoint_metrics(directory: str | Path) -> dict[str, float]:
    return read_json(Path(directory) / STATE_FILE)["metrics"]


@dataclass(frozen=True)
class LoadedModel:
    """A checkpoint made ready for inference: the model in eval mode and how to feed it."""

    model: nn.Module
    preprocessor: Preprocessor
    config: PipelineConfig
    metrics: dict[str, float]
    version: ModelVersion | None = None
    """The registry version it was loaded as; None for a checkpoint loaded from a run directory."""


def load_checkpoint(directory: str | Path, version: ModelVersion | None = None) -> LoadedModel:
    directory = Path(directory)
    verify_checkpoint(directory)
    config = PipelineConfig.model_validate(read_json(directory / CONFIG_FILE))
    preprocessor = Preprocessor.from_dict(read_json(directory / PREPROCESSOR_FILE))
    model = build_model(config.model, **preprocessor.model_shape())
    model.load_state_dict(torch.load(directory / MODEL_FILE, weights_only=True, map_location="cpu"))
    model.eval()
    return LoadedModel(model, preprocessor, config, checkpoint_metrics(directory), version)


# ---------------------------------------------------------------- registry


class Registry:
    """Named models under `<root>/registry`, each with its own versions and serving marker (registry_layout.py)."""

    def __init__(self, root: str | Path):
        self.path = Path(root) / "registry"
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

    def checkpoint_dir(self, ref: ModelVersion) -> Path:
        return self.model(self.require(ref.name)).checkpoint_dir(ref.version)

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
    ) -> ModelVersion:
        """Copy a checkpoint in as the next version of its model name, record how it was made, and (by default)
        serve it. The name is the checkpoint config's `registry.model_name`, else its pipeline name.

        `evaluation` (JSON-able: confusion matrix, baseline comparison, ...) is stored in the record under that
        key; `artifacts` are files (name -> bytes, e.g. a PNG) written beside the record."""
        verify_checkpoint(checkpoint_dir)
        config = read_json(Path(checkpoint_dir) / CONFIG_FILE)
        name = check_name(registered_name(config), f"{checkpoint_dir}: registry.model_name")
        entry = self.model(name)
        version, version_dir = claim_next_version(entry.path)
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


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
