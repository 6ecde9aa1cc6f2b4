"""Named models in the registry, without Ray: versions and serving markers per name, user-facing errors,
the move from the layout before names, and registrations from several processes at once."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from pathlib import Path

import pytest
import torch

from rayline.checkpoint import save_checkpoint
from rayline.config import validate_config
from rayline.data.preprocess import NumericStat, Preprocessor
from rayline.models import build_model
from rayline.registry import ModelVersion, Registry, RegistryError
from rayline.registry_layout import (
    migrate_unnamed_layout,
    plan_targets,
    unnamed_name,
    unnamed_versions,
    write_split_markers,
)

PREPROCESSOR = Preprocessor("regression", "y", [NumericStat("a", 0.0, 1.0)], None, 0.0, 1.0)


def checkpoint(directory: Path, name: str, *, model_name: str | None = None, seed: int = 0) -> Path:
    """A real checkpoint of a tiny regression model written by a pipeline called `name`."""
    raw = {
        "name": name,
        "data": {"source": "/x.csv", "task": "regression", "label": "y", "features": ["a"]},
        "model": {"hidden_sizes": [4]},
    }
    if model_name:
        raw["registry"] = {"model_name": model_name}
    config = validate_config(raw)
    torch.manual_seed(seed)
    model = build_model(config.model, num_inputs=1, num_outputs=1)
    metrics = {"epoch": 0, "val_loss": 0.5, "val_rmse": 0.7}
    save_checkpoint(
        directory,
        model_state=model.state_dict(),
        optimizer_state={},
        epoch=0,
        metrics=metrics,
        history=[metrics],
        preprocessor=PREPROCESSOR,
        config=config,
    )
    return directory


def register(registry: Registry, source: Path, run_name: str = "r", **kwargs) -> ModelVersion:
    return registry.register(source, run_name=run_name, data_fingerprint="sha256:t", **kwargs)


# ---------------------------------------------------------------- names, versions, markers


def test_versions_are_numbered_per_name(tmp_path):
    registry = Registry(tmp_path)
    digits, housing = checkpoint(tmp_path / "d", "digits"), checkpoint(tmp_path / "h", "housing")
    assert register(registry, digits) == ModelVersion("digits", "v1")
    assert register(registry, housing) == ModelVersion("housing", "v1")
    assert str(register(registry, digits)) == "digits/v2"
    assert registry.names() == ["digits", "housing"]
    assert registry.versions() == [
        ModelVersion("digits", "v1"),
        ModelVersion("digits", "v2"),
        ModelVersion("housing", "v1"),
    ]
    assert [r["version"] for r in registry.records("digits")] == ["v1", "v2"]
    assert [(r["name"], r["version"]) for r in registry.records()] == [
        ("digits", "v1"),
        ("digits", "v2"),
        ("housing", "v1"),
    ]


def test_registry_model_name_overrides_the_pipeline_name(tmp_path):
    registry = Registry(tmp_path)
    model = register(registry, checkpoint(tmp_path / "c", "experiment-7", model_name="house-prices"))
    assert model == ModelVersion("house-prices", "v1")
    assert registry.record(model)["pipeline"] == "experiment-7"


def test_each_name_has_its_own_marker_and_rollback(tmp_path):
    registry = Registry(tmp_path)
    for name in ("digits", "digits", "housing", "digits"):
        register(registry, checkpoint(tmp_path / name, name))
    digits, housing = registry.model("digits"), registry.model("housing")
    assert (digits.serving_version(), digits.serving_history()) == ("v3", ["v1", "v2"])
    assert (housing.serving_version(), housing.serving_history()) == ("v1", [])
    digits.set_serving("v1")
    assert digits.rollback_serving() == "v3"
    assert housing.serving_version() == "v1", "promoting and rolling back one name leaves the others alone"
    with pytest.raises(RegistryError, match="nothing to roll back to: model 'housing'"):
        housing.rollback_serving()
    assert registry.resolve("housing") == ModelVersion("housing", "v1")
    assert registry.load(ModelVersion("digits", "v2")).version == ModelVersion("digits", "v2")


def test_registering_with_serve_false_leaves_the_marker(tmp_path):
    registry = Registry(tmp_path)
    register(registry, checkpoint(tmp_path / "a", "digits"))
    register(registry, checkpoint(tmp_path / "b", "digits"), serve=False)
    assert registry.resolve("digits") == ModelVersion("digits", "v1")
    assert registry.resolve("digits", "v2") == ModelVersion("digits", "v2")


def test_bad_names_and_versions_name_the_problem_and_list_what_exists(tmp_path):
    registry = Registry(tmp_path)
    register(registry, checkpoint(tmp_path / "a", "digits"))
    assert registry.resolve() == ModelVersion("digits", "v1"), "one name: it needs no naming"
    register(registry, checkpoint(tmp_path / "b", "housing"))
    with pytest.raises(RegistryError, match=r"holds several models \(digits, housing\); name the one"):
        registry.resolve()
    with pytest.raises(RegistryError, match=r"no model named 'digit' .*\(models: digits, housing\)"):
        registry.resolve("digit")
    with pytest.raises(
        RegistryError, match=r"'latest' is not a model version; versions look like v3 \(digits has: v1\)"
    ):
        registry.resolve("digits", "latest")
    with pytest.raises(RegistryError, match=r"no model version 'v7' of 'digits'.*known: v1"):
        registry.resolve("digits", "v7")
    for bad in ("../x", "v3", ".hidden", "a/b", ""):
        with pytest.raises(RegistryError, match="is not a model name"):
            registry.resolve(bad)
    assert registry.find("housing/v1") == ModelVersion("housing", "v1")
    assert registry.find("housing") == ModelVersion("housing", "v1")
    with pytest.raises(RegistryError, match=r"--model 'housing/1': '1' is not a version; write NAME or NAME/v3"):
        registry.find("housing/1")


def test_a_name_the_registry_cannot_hold_is_refused_when_the_pipeline_is_loaded():
    from rayline.config import ConfigError, validate_config

    raw = {"name": "digits", "data": {"source": "x.csv", "task": "regression", "label": "y"}}
    with pytest.raises(ConfigError, match=r"name \(the default registry.model_name\) 'v2' cannot name"):
        validate_config({**raw, "name": "v2"})
    with pytest.raises(ConfigError, match=r"registry.model_name '-x' cannot name"):
        validate_config({**raw, "registry": {"model_name": "-x"}})


def test_marker_writes_leave_no_temporary_files(tmp_path):
    registry = Registry(tmp_path)
    for seed in range(3):
        register(registry, checkpoint(tmp_path / f"c{seed}", "digits", seed=seed))
    leftovers = [p.name for p in registry.model("digits").path.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


# ---------------------------------------------------------------- the layout before names


def write_unnamed_version(registry: Path, version: str, source: Path, pipeline: str) -> None:
    """One version as the registry wrote it before names: models/<version>/{checkpoint/, record.json}."""
    target = registry / "models" / version
    shutil.copytree(source, target / "checkpoint")
    record = {
        "version": version,
        "pipeline": pipeline,
        "run_name": pipeline,
        "created_at": "2026-11-30T10:00:00+00:00",
        "epoch": 0,
        "metrics": {"val_loss": 0.5},
        "test_metrics": {},
        "selected_by": {"metric": "val_loss", "mode": "min"},
        "data_fingerprint": "sha256:old",
        "code_version": "old",
        "source_checkpoint": str(source),
        "params": {},
        "history": [],
    }
    (target / "record.json").write_text(json.dumps(record, indent=2))


def unnamed_registry(root: Path) -> Path:
    """digits v1, housing v2, digits v3 (served after v1, v2), and v4 cut short before its record."""
    registry = root / "registry"
    digits, housing = checkpoint(root / "run-d", "digits"), checkpoint(root / "run-h", "housing")
    write_unnamed_version(registry, "v1", digits, "digits")
    write_unnamed_version(registry, "v2", housing, "housing")
    write_unnamed_version(registry, "v3", digits, "digits")
    shutil.copytree(digits, registry / "models" / "v4" / "checkpoint")
    (registry / "models" / "v4" / "checkpoint" / "manifest.json").unlink()
    marker = {"version": "v3", "history": ["v1", "v2"], "changed_at": "2026-11-30T10:00:00+00:00"}
    (registry / "serving.json").write_text(json.dumps(marker))
    return registry


def assert_migrated(registry: Registry) -> None:
    assert registry.names() == ["digits", "housing"]
    digits, housing = registry.model("digits"), registry.model("housing")
    assert digits.versions() == ["v1", "v3"] and housing.versions() == ["v2"], "versions keep their numbers"
    assert (digits.serving_version(), digits.serving_history()) == ("v3", ["v1"])
    assert (housing.serving_version(), housing.serving_history()) == ("v2", [])
    assert digits.record("v3")["data_fingerprint"] == "sha256:old"
    assert digits.record("v3")["name"] == "digits", "records from before names are read with their name"
    registry.load(ModelVersion("housing", "v2"))  # the moved checkpoint still verifies and loads
    assert (registry.path / "incomplete-unnamed" / "v4" / "checkpoint").is_dir(), "nothing is lost"
    old_marker = json.loads((registry.path / "serving.json.migrated").read_text())
    assert old_marker["version"] == "v3"
    assert not (registry.path / "serving.json").exists()
    assert sorted(p.name for p in (registry.path / "models").iterdir()) == ["digits", "housing"]


def test_a_registry_from_before_names_is_moved_once_with_one_message(tmp_path, capsys):
    unnamed_registry(tmp_path)
    registry = Registry(tmp_path)
    message = capsys.readouterr().out
    assert "moved the registry at" in message
    assert "models/v1, v3 -> models/digits/ (serving v3)" in message
    assert "models/v2 -> models/housing/ (serving v2)" in message
    assert "models/v4 -> incomplete-unnamed/" in message
    assert "kept as serving.json.migrated" in message
    assert_migrated(registry)
    assert_migrated(Registry(tmp_path))
    assert capsys.readouterr().out == "", "only once"
    new = register(registry, checkpoint(tmp_path / "again", "digits"))
    assert new == ModelVersion("digits", "v4"), "numbering continues after the moved versions"


def test_a_move_cut_short_is_finished_by_the_next_start(tmp_path):
    registry_path = unnamed_registry(tmp_path)
    old = unnamed_versions(registry_path)
    names = {v: unnamed_name(p) for v, p in old.items()}
    targets = plan_targets(registry_path, old, names)
    write_split_markers(registry_path, names, targets)
    os.replace(old["v1"], targets["v1"])  # ... and then the process died
    assert_migrated(Registry(tmp_path))


def test_a_move_cut_short_after_renumbering_serves_the_version_its_marker_names(tmp_path):
    # digits already has a v1 in the named layout, so the old v1 is renumbered; the process dies after the
    # markers are written and before anything moves.
    registry_path = unnamed_registry(tmp_path)
    existing = registry_path / "models" / "digits" / "v1"
    shutil.copytree(registry_path / "models" / "v3", existing)
    record = json.loads((existing / "record.json").read_text())
    (existing / "record.json").write_text(json.dumps({**record, "version": "v1", "run_name": "already-named"}))
    old = unnamed_versions(registry_path)
    names = {v: unnamed_name(p) for v, p in old.items()}
    targets = plan_targets(registry_path, old, names)
    assert targets["v1"].name == "v2", "the old v1 is renumbered into a claimed, empty v2"
    write_split_markers(registry_path, names, targets)  # ... and then the process died

    digits = Registry(tmp_path).model("digits")
    assert digits.versions() == ["v1", "v2", "v3"], "the claimed v2 is reused, not left empty beside a new v4"
    assert (digits.serving_version(), digits.serving_history()) == ("v3", ["v2"])
    assert digits.record("v1")["run_name"] == "already-named"
    assert (digits.record("v2")["run_name"], digits.record("v2")["version"]) == ("digits", "v2"), "the old v1"


def migrate_at_barrier(registry_path: str, barrier) -> str | None:
    barrier.wait()
    return migrate_unnamed_layout(Path(registry_path))


def test_two_processes_starting_the_move_at_once_lose_nothing(tmp_path):
    registry_path = unnamed_registry(tmp_path)
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        barrier = manager.Barrier(2)
        with context.Pool(2) as pool:
            messages = pool.starmap(migrate_at_barrier, [(str(registry_path), barrier)] * 2)
    assert sum(m is not None for m in messages) == 1, "one process moves it, the other finds it done"
    assert_migrated(Registry(tmp_path))


# ---------------------------------------------------------------- registering from processes at once


def register_at_barrier(root: str, sources: list[str], barrier) -> list[str]:
    barrier.wait()
    registry = Registry(root)
    return [str(register(registry, Path(s), run_name=Path(s).name)) for s in sources]


@pytest.mark.parametrize("names", [("alpha", "alpha"), ("alpha", "beta")], ids=["same name", "two names"])
def test_processes_registering_at_once_never_collide(tmp_path, names):
    per_process = 3
    sources = [
        [str(checkpoint(tmp_path / f"{name}-{p}-{i}", name, seed=i)) for i in range(per_process)]
        for p, name in enumerate(names)
    ]
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        barrier = manager.Barrier(len(names))
        with context.Pool(len(names)) as pool:
            results = pool.starmap(register_at_barrier, [(str(tmp_path), s, barrier) for s in sources])

    registered = [m for result in results for m in result]
    assert len(set(registered)) == len(registered) == per_process * len(names), "no version was handed out twice"
    registry = Registry(tmp_path)
    run_names = {Path(s).name for group in sources for s in group}
    assert {r["run_name"] for r in registry.records()} == run_names, "no record was lost"
    for name in set(names):
        entry = registry.model(name)
        count = per_process * names.count(name)
        assert entry.versions() == [f"v{i}" for i in range(1, count + 1)]
        assert entry.serving_version() == f"v{count}", "the newest registration serves"
        served = [*entry.serving_history(), entry.serving_version()]
        assert sorted(served) == sorted(entry.versions()), "each registration reached the marker once"
        registry.load(entry.ref(f"v{count}"))
