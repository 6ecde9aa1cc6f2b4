"""The checkpoint format: what training workers write and serving, batch prediction and evaluation read.

A checkpoint directory holds everything those need:

    model.pt           weights of the whole plain model, whatever the strategy (a state dict; weights_only=True)
    optimizer.pt       optimizer state for resuming ddp (empty for sharded strategies: see sharded/)
    state.json         epoch and the metrics reported with this checkpoint
    preprocessor.json  the fitted preprocessor (feature statistics, label map)
    config.json        the full pipeline config that produced it
    sharded/           fsdp/tensor/pipeline/hybrid only: model + optimizer state as torch.distributed.checkpoint
                       shards, each written by the rank that holds it, for resuming with the same strategy
    manifest.json      sha256 of every file above (each shard included), written last

The registry (registry.py) keeps copies of such directories as named, numbered model versions.

torch is imported only by the functions that read or write weights: the registry, the CLI's registry commands
and Serve's app builder read JSON and hashes only, and a torch import costs each of them about a CPU-second.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rayline.config import ConfigError, PipelineConfig
from rayline.data.preprocess import Preprocessor
from rayline.registry_layout import ModelVersion, RegistryError, read_json, write_json

MODEL_FILE = "model.pt"
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "state.json"
PREPROCESSOR_FILE = "preprocessor.json"
CONFIG_FILE = "config.json"
MANIFEST_FILE = "manifest.json"
SHARDED_DIR = "sharded"
CHECKPOINT_FILES = (MODEL_FILE, OPTIMIZER_FILE, STATE_FILE, PREPROCESSOR_FILE, CONFIG_FILE)

if TYPE_CHECKING:
    import torch
    from torch import nn


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
    import torch

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(model_state, directory / MODEL_FILE)
    torch.save(optimizer_state, directory / OPTIMIZER_FILE)
    write_json(directory / STATE_FILE, {"epoch": epoch, "metrics": metrics, "history": history})
    write_json(directory / PREPROCESSOR_FILE, preprocessor.to_dict())
    write_json(directory / CONFIG_FILE, config.model_dump(mode="json"))
    digests = {f: file_sha256(directory / f) for f in CHECKPOINT_FILES}
    sizes = {f: (directory / f).stat().st_size for f in CHECKPOINT_FILES}
    write_json(directory / MANIFEST_FILE, {"sha256": {**digests, **(sharded_sha256 or {})}, "bytes": sizes})


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


def verify_checkpoint(directory: str | Path, *, contents: bool = True) -> None:
    """Refuse a checkpoint whose files are missing, differ from the manifest written at save time, or (in the
    sharded copy) are not in it.

    contents=False reads no file but the manifest: every file must be there, at the size it was written
    (where the manifest has sizes), so a partial or cut-short copy is refused without hashing the weights.
    """
    directory = Path(directory)
    manifest_path = directory / MANIFEST_FILE
    if not manifest_path.is_file():
        raise RegistryError(f"{directory}: not a complete rayline checkpoint (no {MANIFEST_FILE})")
    try:
        manifest = json.loads(manifest_path.read_text())
        expected, sizes = manifest["sha256"], manifest.get("bytes", {})
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        # A write cut short leaves an empty or half-written manifest: the checkpoint is partial, not a crash.
        raise RegistryError(f"{manifest_path}: checkpoint manifest is partial or corrupt ({err!r})") from err
    if not isinstance(expected, dict) or not isinstance(sizes, dict):
        raise RegistryError(f"{manifest_path}: checkpoint manifest is corrupt (sha256 or bytes is not a mapping)")
    for name in dict.fromkeys([*CHECKPOINT_FILES, *expected]):
        path = directory / name
        if not path.is_file():
            raise RegistryError(f"{directory}: checkpoint is partial, {name} is missing")
        wrong_size = name in sizes and path.stat().st_size != sizes[name]
        if wrong_size or (contents and file_sha256(path) != expected.get(name)):
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
    return [d for d in checkpoint_dirs(run_dir) if is_complete(d)]


def last_complete_checkpoint(run_dir: str | Path) -> Path | None:
    """The complete checkpoint of a Train run with the highest epoch; None when it has none. Checked newest
    first, so only the one returned (and any cut short after it) is hashed, not every checkpoint kept."""
    return next((d for d in sorted(checkpoint_dirs(run_dir), key=saved_epoch, reverse=True) if is_complete(d)), None)


def checkpoint_dirs(run_dir: str | Path) -> list[Path]:
    """Checkpoint folders of a Train run by name (oldest first); Ray Train's snapshot file is not one."""
    return [d for d in sorted(Path(run_dir).glob("checkpoint_*")) if d.is_dir()]


def is_complete(directory: Path) -> bool:
    try:
        verify_checkpoint(directory)
    except (RegistryError, OSError):
        return False
    return True


def saved_epoch(directory: Path) -> int:
    """The epoch a checkpoint folder says it holds; -1 when it cannot say (cut short before its state)."""
    try:
        return int(checkpoint_metrics(directory)["epoch"])
    except (OSError, ValueError, KeyError):
        return -1


def require_same_strategy(directory: Path, cfg: PipelineConfig) -> None:
    """Refuse to resume a run under another strategy than the one its checkpoint was written with."""
    saved = checkpoint_config(directory).train
    if strategy_label(saved) != strategy_label(cfg.train):
        raise ConfigError(
            f"run {cfg.run_name!r} was trained with train.strategy {strategy_label(saved)!r}; resuming it needs "
            f"the same strategy, not {strategy_label(cfg.train)!r}. Keep the strategy, or start a new run with "
            "another storage.run_name"
        )


def strategy_label(train) -> str:
    return f"hybrid {train.hybrid}" if train.strategy == "hybrid" else train.strategy


def load_training_state(directory: str | Path) -> tuple[dict, dict, int, list[dict]]:
    """(model state, optimizer state, epoch, history) of a checkpoint, for resuming training."""
    import torch

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
    import torch

    from rayline.models import build_model

    directory = Path(directory)
    verify_checkpoint(directory)
    config = checkpoint_config(directory)
    preprocessor = Preprocessor.from_dict(read_json(directory / PREPROCESSOR_FILE))
    model = build_model(config.model, **preprocessor.model_shape())
    model.load_state_dict(torch.load(directory / MODEL_FILE, weights_only=True, map_location="cpu"))
    model.eval()
    return LoadedModel(model, preprocessor, config, checkpoint_metrics(directory), version)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
