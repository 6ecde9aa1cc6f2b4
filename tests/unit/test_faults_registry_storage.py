"""The registry on storage that fills up or turns read-only (a real tmpfs, no Ray): registering fails with
the operating system's reason, and no earlier version, checkpoint or serving marker is damaged."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from faults import fill, remount_read_only, tmpfs, tmpfs_unavailable
from rayline.checkpoint import file_sha256, save_checkpoint
from rayline.config import validate_config
from rayline.data.preprocess import NumericStat, Preprocessor
from rayline.models import build_model
from rayline.registry import Registry

CONFIG = validate_config(
    {
        "name": "disk",
        "data": {"source": "/x.parquet", "task": "classification", "label": "y", "features": ["a", "b"]},
        "model": {"hidden_sizes": [256]},
    }
)
PREPROCESSOR = Preprocessor(
    "classification", "y", [NumericStat("a", 0.0, 1.0), NumericStat("b", 0.0, 1.0)], ["n", "y"], None, None
)
MESSAGES = {"full": "No space left on device", "read-only": "Read-only file system"}


def write_checkpoint(directory: Path) -> None:
    model = build_model(CONFIG.model, num_inputs=2, num_outputs=2)
    metrics = {"epoch": 0, "val_loss": 1.0}
    save_checkpoint(
        directory,
        model_state=model.state_dict(),
        optimizer_state=torch.optim.AdamW(model.parameters()).state_dict(),
        epoch=0,
        metrics=metrics,
        history=[metrics],
        preprocessor=PREPROCESSOR,
        config=CONFIG,
    )


def digests(root: Path) -> dict[Path, str]:
    return {p.relative_to(root): file_sha256(p) for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    if reason := tmpfs_unavailable():
        pytest.skip(reason)
    with tmpfs(tmp_path / "mount", 1 << 20) as mount:
        yield mount


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_registering_onto_bad_storage_fails_clearly_and_damages_nothing(small_disk, tmp_path, fault):
    registry = Registry(small_disk)
    write_checkpoint(tmp_path / "first")
    write_checkpoint(tmp_path / "second")
    v1 = registry.register(tmp_path / "first", run_name="r", data_fingerprint="sha256:1")
    before = digests(registry.path)

    if fault == "full":
        fill(small_disk)
    else:
        remount_read_only(small_disk)
    with pytest.raises(OSError, match=MESSAGES[fault]):
        registry.register(tmp_path / "second", run_name="r", data_fingerprint="sha256:2")

    assert registry.versions() == [v1], "a version whose copy failed is not listed"
    assert registry.model(v1.name).serving_version() == v1.version
    after = digests(registry.path)
    assert {path: after.get(path) for path in before} == before, "every file written before is unchanged"
    assert registry.load().version == v1
