import json
import subprocess
import sys

import pytest
import torch

from rayline.checkpoint import load_checkpoint, load_training_state, save_checkpoint
from rayline.config import validate_config
from rayline.data.preprocess import NumericStat, Preprocessor
from rayline.models import build_model
from rayline.registry import ModelVersion, Registry, RegistryError

CONFIG = validate_config(
    {
        "name": "reg",
        "data": {"source": "/x.parquet", "task": "classification", "label": "y", "features": ["a", "b"]},
        "model": {"hidden_sizes": [8]},
    }
)
PREPROCESSOR = Preprocessor(
    task="classification",
    label="y",
    features=[NumericStat("a", 1.0, 2.0), NumericStat("b", 0.0, 1.0)],
    classes=["cat", "dog", "eel"],
    target_mean=None,
    target_std=None,
)


def write_checkpoint(directory, epoch=0, val_loss=1.0):
    torch.manual_seed(epoch)
    model = build_model(CONFIG.model, num_inputs=2, num_outputs=3)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 2)).sum().backward()
    optimizer.step()
    metrics = {"epoch": epoch, "val_loss": val_loss}
    save_checkpoint(
        directory,
        model_state=model.state_dict(),
        optimizer_state=optimizer.state_dict(),
        epoch=epoch,
        metrics=metrics,
        history=[metrics],
        preprocessor=PREPROCESSOR,
        config=CONFIG,
    )
    return model


def test_checkpoint_round_trip_is_self_sufficient(tmp_path):
    model = write_checkpoint(tmp_path / "ck", epoch=3)
    loaded = load_checkpoint(tmp_path / "ck")
    x = torch.randn(5, 2)
    model.eval()
    assert torch.allclose(loaded.model(x), model(x))
    assert loaded.preprocessor == PREPROCESSOR
    assert loaded.config == CONFIG
    _, optimizer_state, epoch, history = load_training_state(tmp_path / "ck")
    assert epoch == 3 and history == [{"epoch": 3, "val_loss": 1.0}]
    assert optimizer_state["state"], "optimizer moments are saved for resuming"


def test_tampered_checkpoint_is_refused(tmp_path):
    write_checkpoint(tmp_path / "ck")
    weights = tmp_path / "ck" / "model.pt"
    weights.write_bytes(weights.read_bytes() + b"\0")
    with pytest.raises(RegistryError, match="model.pt: contents do not match"):
        load_checkpoint(tmp_path / "ck")


def test_partial_checkpoint_is_refused(tmp_path):
    write_checkpoint(tmp_path / "ck")
    (tmp_path / "ck" / "preprocessor.json").unlink()
    with pytest.raises(RegistryError, match="partial, preprocessor.json is missing"):
        load_checkpoint(tmp_path / "ck")
    (tmp_path / "ck" / "manifest.json").unlink()
    with pytest.raises(RegistryError, match="not a complete rayline checkpoint"):
        load_checkpoint(tmp_path / "ck")


def test_registry_versions_records_and_serving(tmp_path):
    registry = Registry(tmp_path)
    assert registry.versions() == []
    with pytest.raises(RegistryError, match="no models yet"):
        registry.resolve(None)
    write_checkpoint(tmp_path / "a", epoch=1, val_loss=0.5)
    write_checkpoint(tmp_path / "b", epoch=2, val_loss=0.4)
    v1 = registry.register(tmp_path / "a", run_name="r1", data_fingerprint="sha256:aa", test_metrics={"x": 1})
    v2 = registry.register(tmp_path / "b", run_name="r2", data_fingerprint="sha256:bb", serve=False)
    assert (v1, v2) == (ModelVersion("reg", "v1"), ModelVersion("reg", "v2"))
    assert (str(v1), v2.name, v2.version) == ("reg/v1", "reg", "v2")
    assert registry.versions() == [v1, v2]
    reg = registry.model("reg")
    assert reg.versions() == ["v1", "v2"]
    assert reg.serving_version() == "v1"
    record = registry.record(v2)
    assert record == reg.record("v2")
    assert record["name"] == "reg" and record["version"] == "v2"
    assert record["pipeline"] == "reg" and record["epoch"] == 2
    assert record["metrics"]["val_loss"] == 0.4
    assert record["data_fingerprint"] == "sha256:bb"
    assert record["code_version"]
    assert record["history"] == [{"epoch": 2, "val_loss": 0.4}]
    reg.set_serving("v2")
    assert registry.load().version == v2
    with pytest.raises(RegistryError, match=r"no model version 'v9' of 'reg'.*known: v1, v2"):
        registry.load(ModelVersion("reg", "v9"))


def test_registered_copy_survives_the_run_directory(tmp_path):
    write_checkpoint(tmp_path / "a")
    version = Registry(tmp_path).register(tmp_path / "a", run_name="r", data_fingerprint="f")
    for f in (tmp_path / "a").iterdir():
        f.unlink()
    assert Registry(tmp_path).load(version).version == version


def test_version_without_record_is_invisible(tmp_path):
    (tmp_path / "registry" / "models" / "reg" / "v1").mkdir(parents=True)
    registry = Registry(tmp_path)
    assert registry.versions() == [] and registry.names() == []
    write_checkpoint(tmp_path / "a")
    assert registry.register(tmp_path / "a", run_name="r", data_fingerprint="f") == ModelVersion("reg", "v2")
    marker = json.loads((tmp_path / "registry" / "models" / "reg" / "serving.json").read_text())
    assert (marker["name"], marker["version"]) == ("reg", "v2")


@pytest.mark.parametrize("manifest", [b"", b'{"sha256": {"model.pt"', b"[]", b'{"sha256": 3}'])
def test_a_cut_short_or_garbled_manifest_is_a_partial_checkpoint(tmp_path, manifest):
    write_checkpoint(tmp_path / "ck")
    (tmp_path / "ck" / "manifest.json").write_bytes(manifest)
    with pytest.raises(RegistryError, match="manifest.json: checkpoint manifest is (partial or )?corrupt"):
        load_checkpoint(tmp_path / "ck")


def test_a_search_picks_the_best_checkpoint_that_verifies(tmp_path):
    from rayline.tune.driver import best_checkpoint_in

    write_checkpoint(tmp_path / "checkpoint_000000", epoch=0, val_loss=0.5)
    write_checkpoint(tmp_path / "checkpoint_000001", epoch=1, val_loss=0.1)
    cut = tmp_path / "checkpoint_000001" / "model.pt"
    cut.write_bytes(cut.read_bytes()[:100])
    assert best_checkpoint_in(tmp_path, "val_loss", "min") == tmp_path / "checkpoint_000000"


def test_a_cut_short_run_record_is_moved_aside_and_the_last_complete_checkpoint_named(tmp_path):
    from rayline.checkpoint import last_complete_checkpoint
    from rayline.train.driver import RUN_SNAPSHOT, recover_run_state

    write_checkpoint(tmp_path / "checkpoint_000000", epoch=0)
    write_checkpoint(tmp_path / "checkpoint_000001", epoch=1)
    write_checkpoint(tmp_path / "checkpoint_000002", epoch=2)
    (tmp_path / "checkpoint_000002" / "manifest.json").write_bytes(b"")  # the write the full disk cut short
    (tmp_path / RUN_SNAPSHOT).write_text('{"checkpoints": [')
    assert recover_run_state(tmp_path, last_complete_checkpoint(tmp_path)) == str(tmp_path / "checkpoint_000001")
    assert not (tmp_path / RUN_SNAPSHOT).exists() and (tmp_path / f"{RUN_SNAPSHOT}.corrupt").is_file()


def test_a_sound_run_record_is_left_to_ray_train(tmp_path):
    from rayline.checkpoint import last_complete_checkpoint
    from rayline.train.driver import RUN_SNAPSHOT, recover_run_state

    write_checkpoint(tmp_path / "checkpoint_000000", epoch=0)
    assert recover_run_state(tmp_path, last_complete_checkpoint(tmp_path)) is None, "no record: a new run"
    (tmp_path / RUN_SNAPSHOT).write_text("{}")
    assert recover_run_state(tmp_path, last_complete_checkpoint(tmp_path)) is None
    assert (tmp_path / RUN_SNAPSHOT).read_text() == "{}"


def test_the_registry_and_serves_app_builder_import_no_torch():
    """`rayline models`, promote and rollback, and the task in which Serve builds every deployment, read JSON and
    hashes only: a torch import would cost each about a CPU-second."""
    code = "import sys, rayline.registry, rayline.serve.app; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert done.stdout.strip() == "False"
