"""Test helpers: small registries of untrained models for the serving tests."""

from __future__ import annotations

from pathlib import Path

import torch

from rayline.config import FeatureConfig, ModelConfig, PipelineConfig, ServeConfig
from rayline.data.preprocess import CategoricalStat, NumericStat, Preprocessor
from rayline.models import build_model
from rayline.registry import Registry, save_checkpoint

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


def register(root: str | Path, task: str = "classification", *, seed: int = 0, serve: ServeConfig | None = None) -> str:
    """Register one small untrained model under root (seed picks its weights); returns its version."""
    root = Path(root)
    pre = preprocessor(task)
    config = PipelineConfig(
        name=f"tiny-{task}",
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
    checkpoint = root / f"ckpt-{task}-{seed}"
    save_checkpoint(
        checkpoint,
        model_state=model.state_dict(),
        optimizer_state={},
        epoch=0,
        metrics={"val_loss": 1.25, "val_accuracy": float("nan")},
        history=[],
        preprocessor=pre,
        config=config,
    )
    return Registry(root).register(checkpoint, run_name="t", data_fingerprint="sha256:test", test_metrics={"loss": 1.5})


def make_registry(root: str | Path, task: str = "classification", versions: int = 1) -> str:
    """A registry with `versions` models (v1 ... vN, each with other weights), serving the last; returns root."""
    for seed in range(versions):
        register(root, task, seed=seed)
    return str(root)


def tamper(root: str | Path, version: str, name: str = "model.pt") -> None:
    path = Path(root) / "registry" / "models" / version / "checkpoint" / name
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
