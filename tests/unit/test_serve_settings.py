"""The serve path in one direction, without a cluster: ServeConfig -> replica_settings -> the replica, the
checkpoint read once per process, and no import circle between the serve modules."""

from __future__ import annotations

import ast
import asyncio
import types
from collections import Counter
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from rayline.config import ServeConfig
from rayline.registry import ModelVersion, Registry, RegistryError
from rayline.serve.settings import FIXED_FIELDS, HOT_FIELDS, fixed_settings, hot_settings, replica_settings
from serve_models import make_registry, model_name, tamper

NAME = model_name("classification")
SERVE = Path(__file__).resolve().parents[2] / "platform" / "rayline" / "serve"


def test_replica_settings_are_a_subset_of_serve_config_read_back_by_it():
    cfg = ServeConfig(max_batch_size=8, request_timeout_s=2.0, torch_threads=2, max_models_per_replica=5, port=9)
    settings = replica_settings(cfg, ModelVersion("m", "v2"))
    assert set(settings.fixed) == FIXED_FIELDS
    assert set(settings.user_config) == HOT_FIELDS | {"model_name", "model_version"}
    hot = hot_settings(settings.user_config)
    assert (hot.model_name, hot.model_version) == ("m", "v2")
    assert all(getattr(hot.serve, f) == getattr(cfg, f) for f in HOT_FIELDS)
    assert all(getattr(fixed_settings(settings.fixed), f) == getattr(cfg, f) for f in FIXED_FIELDS)


def test_replica_settings_take_serve_configs_defaults_and_bounds():
    assert hot_settings(None).serve == ServeConfig()  # one declaration of every default
    assert fixed_settings({}).torch_threads == ServeConfig().torch_threads
    with pytest.raises(ValidationError, match="max_batch_size"):
        hot_settings({"max_batch_size": 0})
    with pytest.raises(ValueError, match="port cannot be set there"):
        hot_settings({"port": 8001})  # fixed when Serve starts: not something a running replica can take
    with pytest.raises(ValueError, match="max_batch_size cannot be set there"):
        fixed_settings({"max_batch_size": 4})
    with pytest.raises(RegistryError, match="not a model version"):
        hot_settings({"model_version": "3"})


class Reads:
    """Counts what is read from checkpoints: files hashed (by name) and torch.load calls."""

    def __init__(self, monkeypatch):
        import rayline.checkpoint as checkpoint

        self.hashed: Counter[str] = Counter()
        self.torch_loads = 0
        hash_file, torch_load = checkpoint.file_sha256, torch.load

        def counting_hash(path):
            self.hashed[Path(path).name] += 1
            return hash_file(path)

        def counting_load(*args, **kwargs):
            self.torch_loads += 1
            return torch_load(*args, **kwargs)

        monkeypatch.setattr(checkpoint, "file_sha256", counting_hash)
        monkeypatch.setattr(torch, "load", counting_load)

    def take(self) -> tuple[dict[str, int], int]:
        seen = dict(self.hashed), self.torch_loads
        self.hashed.clear()
        self.torch_loads = 0
        return seen


def replica(monkeypatch, root: str, bound_args: tuple):
    """The replica class built as Serve would, outside Serve (no replica context, no Ray metrics)."""
    from rayline.serve import replica as module

    context = types.SimpleNamespace(app_name="test")
    monkeypatch.setattr(module.serve, "get_replica_context", lambda: context)
    monkeypatch.setattr(module, "ServeMetrics", lambda app: types.SimpleNamespace(observe_batch=lambda *a: None))
    wrapped = module.ModelServer.func_or_class  # @serve.ingress subclasses ours with an async __init__
    return wrapped.__mro__[1](*bound_args)


def test_the_checkpoint_is_read_once_per_process(tmp_path, monkeypatch):
    from rayline.serve import app, control

    root = make_registry(tmp_path, versions=2)
    deployed = {}
    monkeypatch.setattr(control.serve, "start", lambda **kwargs: None)
    monkeypatch.setattr(control, "apply_apps", deployed.update)
    monkeypatch.setattr(control, "alive_nodes", lambda: [{"CPU": 2.0}])  # no Ray cluster in a unit test
    reads = Reads(monkeypatch)

    # The driver: checks every file against the manifest once, reads the config, loads no weights.
    control.deploy(root, wait=False)
    hashed, loads = reads.take()
    assert loads == 0 and set(hashed.values()) == {1} and "model.pt" in hashed
    [config] = deployed.values()
    assert config["args"]["version"] == "v2"

    # Serve's build task: no weights read, nothing hashed.
    application = app.build(config["args"])
    assert reads.take() == ({}, 0)

    # A replica: loads and checks the model once, and again only when it is told to switch.
    deployment = application._bound_deployment
    server = replica(monkeypatch, root, deployment.init_args)
    user_config = deployment._deployment_config.user_config
    asyncio.run(server.reconfigure(user_config))
    hashed, loads = reads.take()
    assert loads == 1 and set(hashed.values()) == {1} and "model.pt" in hashed
    asyncio.run(server.reconfigure({**user_config, "max_batch_size": 4}))  # settings only: no reload
    assert reads.take() == ({}, 0) and server.batcher.max_rows == 4
    asyncio.run(server.reconfigure({**user_config, "model_version": "v1"}))
    assert reads.take()[1] == 1 and server.primary.version == "v1"


def test_a_tampered_checkpoint_is_refused_by_the_driver_before_serve_starts(tmp_path, monkeypatch):
    from rayline.serve import control

    root = make_registry(tmp_path)
    tamper(root, "v1")
    monkeypatch.setattr(control.serve, "start", lambda **kwargs: pytest.fail("Serve started"))
    with pytest.raises(RegistryError, match="model.pt: contents do not match the checkpoint manifest"):
        control.deploy(root, wait=False)


def test_a_same_size_change_is_left_to_the_replica(tmp_path, monkeypatch):
    """The build task reads no weights; a change that keeps every size is caught where the weights are read."""
    from rayline.serve import app

    root = make_registry(tmp_path)
    path = Registry(root).checkpoint_dir(ModelVersion(NAME, "v1")) / "model.pt"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    deployment = app.build({"storage_root": root})._bound_deployment
    server = replica(monkeypatch, root, deployment.init_args)
    with pytest.raises(RegistryError, match="model.pt: contents do not match"):
        asyncio.run(server.reconfigure(deployment._deployment_config.user_config))


def serve_imports(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rayline.serve."):
            modules.add(node.module.rsplit(".", 1)[1])
    return modules


def test_the_serve_modules_import_one_way():
    graph = {path.stem: serve_imports(path) for path in SERVE.glob("*.py") if path.stem != "__init__"}

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        return any(m == target or (m not in seen and reaches(m, target, seen | {m})) for m in graph.get(start, ()))

    assert [m for m in graph if reaches(m, m, set())] == []
    assert "replica" not in graph["api"] and "app" not in graph["replica"]
