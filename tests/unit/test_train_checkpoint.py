"""Checkpoints with a sharded copy: the manifest covers every shard, and the copy loads back (one process)."""

import pytest
import torch

from rayline.checkpoint import (
    SHARDED_DIR,
    checkpoint_config,
    load_checkpoint,
    load_sharded_state,
    save_checkpoint,
    save_sharded_state,
    verify_checkpoint,
)
from rayline.config import validate_config
from rayline.data.preprocess import NumericStat, Preprocessor
from rayline.models import build_model
from rayline.registry import RegistryError

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")

CONFIG = validate_config(
    {
        "name": "sharded",
        "data": {"source": "/x.parquet", "task": "classification", "label": "y", "features": ["a", "b"]},
        "model": {"kind": "transformer", "token_size": 1, "d_model": 8, "n_heads": 2, "n_layers": 2, "ffn_size": 16},
        "train": {"strategy": "pipeline", "batch_size": 8},
    }
)
PREPROCESSOR = Preprocessor(
    "classification", "y", [NumericStat("a", 0.0, 1.0), NumericStat("b", 0.0, 1.0)], ["n", "y"], None, None
)


def trained_model():
    torch.manual_seed(0)
    model = build_model(CONFIG.model, num_inputs=2, num_outputs=2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 2)).sum().backward()
    optimizer.step()
    return model, optimizer


def write(directory):
    model, optimizer = trained_model()
    digests = save_sharded_state(directory, {"model": model.state_dict(), "optimizer": optimizer.state_dict()})
    metrics = {"epoch": 4, "val_loss": 0.5}
    save_checkpoint(
        directory,
        model_state=model.state_dict(),
        optimizer_state={},
        epoch=4,
        metrics=metrics,
        history=[metrics],
        preprocessor=PREPROCESSOR,
        config=CONFIG,
        sharded_sha256=digests,
    )
    return model, digests


def test_manifest_lists_every_shard_and_serving_ignores_them(tmp_path):
    model, digests = write(tmp_path / "ck")
    assert f"{SHARDED_DIR}/.metadata" in digests
    verify_checkpoint(tmp_path / "ck")
    loaded = load_checkpoint(tmp_path / "ck")
    x = torch.randn(3, 2)
    model.eval()
    assert torch.allclose(loaded.model(x), model(x))
    assert checkpoint_config(tmp_path / "ck").train.strategy == "pipeline"


def test_sharded_copy_loads_back_in_place(tmp_path):
    model, _ = write(tmp_path / "ck")
    fresh = build_model(CONFIG.model, num_inputs=2, num_outputs=2)
    state = {"model": fresh.state_dict()}
    epoch, history = load_sharded_state(tmp_path / "ck", state)
    fresh.load_state_dict(state["model"])
    assert (epoch, history) == (4, [{"epoch": 4, "val_loss": 0.5}])
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values(), strict=True))


def shard_file(directory):
    return next(p for p in (directory / SHARDED_DIR).iterdir() if p.suffix == ".distcp")


def test_tampered_shard_is_refused(tmp_path):
    write(tmp_path / "ck")
    shard = shard_file(tmp_path / "ck")
    shard.write_bytes(shard.read_bytes()[:-1] + b"\1")
    with pytest.raises(RegistryError, match=r"\.distcp: contents do not match"):
        load_checkpoint(tmp_path / "ck")


def test_missing_shard_is_refused(tmp_path):
    write(tmp_path / "ck")
    shard = shard_file(tmp_path / "ck")
    shard.unlink()
    with pytest.raises(RegistryError, match=f"partial, {SHARDED_DIR}/{shard.name} is missing"):
        load_sharded_state(tmp_path / "ck", {})


def test_shard_not_in_the_manifest_is_refused(tmp_path):
    write(tmp_path / "ck")
    (tmp_path / "ck" / SHARDED_DIR / "__9_0.distcp").write_bytes(b"stray")
    with pytest.raises(RegistryError, match=r"files not in the checkpoint manifest: \['__9_0.distcp'\]"):
        verify_checkpoint(tmp_path / "ck")


def test_a_ddp_checkpoint_has_no_sharded_copy_to_resume_from(tmp_path):
    model, optimizer = trained_model()
    save_checkpoint(
        tmp_path / "ck",
        model_state=model.state_dict(),
        optimizer_state=optimizer.state_dict(),
        epoch=0,
        metrics={},
        history=[],
        preprocessor=PREPROCESSOR,
        config=CONFIG,
    )
    with pytest.raises(RegistryError, match="no sharded/ copy"):
        load_sharded_state(tmp_path / "ck", {})


DDP_WORKER = """
import sys, tempfile, torch, torch.distributed as dist
dist.init_process_group("gloo", init_method=f"file://{tempfile.mktemp()}", rank=0, world_size=1)
from rayline.train.checkpointing import full_model_state
from rayline.train.strategies import Parallelized
model = torch.nn.Linear(3, 2)
state = full_model_state(Parallelized(model, model, "ddp", 0, 1, True))
assert set(state) == {"weight", "bias"}, state
print(",".join(m for m in SHARDING if m in sys.modules))
"""


def test_a_ddp_worker_checkpoints_without_importing_the_sharding_libraries():
    """FSDP, DTensor, pipelining and distributed checkpointing cost a worker about a second of imports; a ddp
    worker loads its loop and gathers its checkpoint without any of them."""
    import subprocess
    import sys

    sharding = ["torch.distributed.fsdp", "torch.distributed.tensor", "torch.distributed.pipelining"]
    sharding += ["torch.distributed.checkpoint"]
    script = f"SHARDING = {sharding!r}\nimport rayline.train.loop\n" + DDP_WORKER
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "", f"imported: {done.stdout.strip()}"
