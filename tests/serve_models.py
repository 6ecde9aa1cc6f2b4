"""Test helpers: small registries of untrained models for the serving tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rayline.checkpoint import save_checkpoint
from rayline.config import FeatureConfig, ModelConfig, PipelineConfig, ServeConfig
from rayline.data.preprocess import CategoricalStat, NumericStat, Preprocessor
from rayline.models import build_model
from rayline.registry import ModelVersion, Registry

CLASSES = ["cat", "dog", "eel"]
COLORS = ["red", "green", "blue"]
NUMERIC = ["x1", "x2", "pixel_7"]
FEATURES = [*NUMERIC, "color"]


def preprocessor(task: str) -> Preprocessor:
    # pixel_7's small std makes huge but float32-valid inputs overflow once scaled.
    stats = [NumericStat(n, mean=1.0, std=0.1 if n == "pixel_7" else 2.0) for n in NUMERIC]
    stats.append(CategoricalStat("color", COLORS))
    if task == "classification":
        return Preprocessor(task, "animal", stats, CLASSES, None, None)
    return Preprocessor(task, "weight", stats, None, 50.0, 10.0)


def model_name(task: str) -> str:
    """The registry name `register` uses for a task."""
    return f"tiny-{task}"


def register(
    root: str | Path,
    task: str = "classification",
    *,
    seed: int = 0,
    serve: ServeConfig | None = None,
    name: str | None = None,
    metrics: dict[str, float] | None = None,
    evaluation: dict | None = None,
) -> ModelVersion:
    """Register one small untrained model under root (seed picks its weights); returns its version.

    The model is registered as `name`, else `tiny-<task>` (model_name(task))."""
    root = Path(root)
    checkpoint = write_checkpoint(root, task, seed=seed, serve=serve, name=name, metrics=metrics)
    return Registry(root).register(
        checkpoint, run_name="t", data_fingerprint="sha256:test", test_metrics={"loss": 1.5}, evaluation=evaluation
    )


def write_checkpoint(
    root: Path,
    task: str,
    *,
    seed: int = 0,
    serve: ServeConfig | None = None,
    name: str | None = None,
    metrics: dict[str, float] | None = None,
) -> Path:
    """A checkpoint of a small untrained model under root, written by a pipeline called `name`."""
    pre = preprocessor(task)
    config = PipelineConfig(
        name=name or model_name(task),
        data={
            "source": "unused.csv",
            "task": task,
            "label": pre.label,
            "features": [FeatureConfig(name=f["name"], kind=f["kind"]) for f in pre.feature_schema()],
        },
        model=ModelConfig(hidden_sizes=[8], dropout=0.5),
        serve=serve or ServeConfig(),
    )
    torch.manual_seed(seed)
    model = build_model(config.model, **pre.model_shape())
    checkpoint = root / f"ckpt-{config.name}-{seed}"
    save_checkpoint(
        checkpoint,
        model_state=model.state_dict(),
        optimizer_state={},
        epoch=0,
        metrics=metrics or {"val_loss": 1.25, "val_accuracy": float("nan")},
        history=[],
        preprocessor=pre,
        config=config,
    )
    return checkpoint


def make_unnamed_registry(root: str | Path, task: str = "classification") -> str:
    """A registry as rayline wrote it before model names: models/v1/{checkpoint/, record.json} and one
    serving.json beside models/. Returns root."""
    import json
    import shutil

    root = Path(root)
    source = write_checkpoint(root, task)
    version_dir = root / "registry" / "models" / "v1"
    shutil.copytree(source, version_dir / "checkpoint")
    record = {
        "version": "v1",
        "pipeline": model_name(task),
        "run_name": "t",
        "created_at": "2026-11-30T10:00:00+00:00",
        "epoch": 0,
        "metrics": {"val_loss": 1.25},
        "test_metrics": {},
        "selected_by": {"metric": "val_loss", "mode": "min"},
        "data_fingerprint": "sha256:test",
        "code_version": "before-names",
        "source_checkpoint": str(source),
        "params": {},
        "history": [],
    }
    (version_dir / "record.json").write_text(json.dumps(record))
    marker = {"version": "v1", "history": [], "changed_at": "2026-11-30T10:00:00+00:00"}
    (root / "registry" / "serving.json").write_text(json.dumps(marker))
    return str(root)


def make_registry(root: str | Path, task: str = "classification", versions: int = 1) -> str:
    """A registry with `versions` versions of model_name(task) (v1 ... vN, each with other weights), serving
    the last; returns root."""
    for seed in range(versions):
        register(root, task, seed=seed)
    return str(root)


def deploy_apps(
    configs: dict[str, ServeConfig], roots: dict[str, str], *, secured: str, token: str, timeout_s: float = 180
) -> dict[str, str]:
    """Deploy each app (configs' keys name them) from its registry root without waiting, RAYLINE_API_TOKEN set to
    `token` for the app `secured` only and unset for the others, then wait until every one runs; their URLs."""
    from rayline.serve import deploy
    from rayline.serve.control import wait_until_running

    urls = {}
    with pytest.MonkeyPatch.context() as env:
        for name, cfg in configs.items():
            if name == secured:
                env.setenv("RAYLINE_API_TOKEN", token)
            else:
                env.delenv("RAYLINE_API_TOKEN", raising=False)
            urls[name] = deploy(roots[name], serve_cfg=cfg, wait=False)
    for cfg in configs.values():
        wait_until_running(cfg.app_name, timeout_s=timeout_s)
    return urls


def tamper(root: str | Path, version: str, name: str = "model.pt", task: str = "classification") -> None:
    """Change one file of a registered version of model_name(task)."""
    path = Registry(root).model(model_name(task)).path / version / "checkpoint" / name
    path.write_bytes(path.read_bytes() + b"\0")


def row(i: int = 0) -> dict:
    return {"x1": 0.5 * i, "x2": -1.0, "pixel_7": 3, "color": COLORS[i % 3]}


async def flood(url: str, burst: int = 24) -> list:
    """One request whose body trickles in for about a second holds the replica while `burst` more arrive.

    Returns the responses, the slow one first.
    """
    import asyncio
    import json

    import httpx

    body = json.dumps({"rows": [row(0)]}).encode()

    async def trickle():
        for i in range(0, len(body), 8):
            yield body[i : i + 8]
            await asyncio.sleep(0.1)

    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        slow = asyncio.create_task(
            client.post("/predict", content=trickle(), headers={"content-type": "application/json"})
        )
        await asyncio.sleep(0.3)
        responses = await asyncio.gather(*(client.post("/predict", json={"rows": [row(i)]}) for i in range(burst)))
        return [await slow, *responses]
