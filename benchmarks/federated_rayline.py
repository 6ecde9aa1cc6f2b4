"""rayline's side of benchmarks/federated_bench.py: the shipped digits_federated pipeline with the benchmark's
federated settings, its data prepared once, what Flower is handed (the same prepared arrays and each client's
rows), and one federated run timed and scored.

A run is `rayline.federated.train_federated` on data prepared by `rayline.data.prepare_datasets`, as
`rayline.pipeline.federated_and_register` does it (without the registration and the linear baseline after it).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PIPELINE = REPO / "pipelines" / "digits_federated.yaml"
DIGITS = REPO / "data" / "digits.parquet"


def bench_config(root: Path, run_name: str, federated: dict[str, Any]):
    """The shipped pipeline (model, optimizer, data split) with only storage and federated.* set."""
    from rayline.config import load_config

    overrides = [f"storage.root={root}", f"storage.run_name={run_name}"]
    overrides += [f"federated.{key}={json.dumps(value)}" for key, value in federated.items()]  # JSON is YAML
    return load_config(PIPELINE, overrides)


def prepare(cfg, *, verbose: bool = False):
    """The pipeline's data, prepared as federated_and_register prepares it (Ray Data reads the source, so on an
    embedded cluster that is stopped afterwards: no Ray of rayline's runs beside Flower's)."""
    from rayline.data import prepare_datasets, write_digits
    from rayline.federated import with_client_column
    from rayline.pipeline import model_takes_inputs, preflight
    from rayline.runtime import connect, disconnect

    if not DIGITS.exists():
        write_digits(str(DIGITS))  # scikit-learn's digits, shipped with it: nothing is downloaded
    cfg = preflight(with_client_column(cfg))
    connect(verbose=verbose)
    try:
        return prepare_datasets(cfg.data, storage_root=cfg.storage.uri, check=model_takes_inputs(cfg), log=print)
    finally:
        disconnect()


def with_data(cfg, data):
    return cfg.model_copy(update={"data": data.data_cfg})


def split_arrays(split) -> tuple[np.ndarray, np.ndarray]:
    """A whole prepared split as (x float32, y int64), in file order: the order client rows are positions in."""
    xs, ys = zip(*split.iter_arrays(), strict=True)
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.int64)


def write_flower_inputs(path: Path, cfg, data) -> dict[str, Any]:
    """The prepared splits, each client's training rows (rayline's own partition of them) and round 0's global
    model, in one .npz for the Flower process; returns what it holds, for the JSON."""
    from rayline.federated.driver import make_clients
    from rayline.federated.state import initial_model

    clients = make_clients(cfg, data)
    x_train, y_train = split_arrays(data.train)
    x_val, y_val = split_arrays(data.validation)
    initial = {f"initial/{k}": t.numpy() for k, t in initial_model(cfg, data.preprocessor).state_dict().items()}
    np.savez(
        path,
        x_train=x_train,
        y_train=y_train,
        x_validation=x_val,
        y_validation=y_val,
        client_offsets=np.cumsum([0] + [c.num_samples for c in clients]),
        client_rows=np.concatenate([c.train_rows for c in clients]),
        **initial,
    )
    sizes = [c.num_samples for c in clients]
    return {"clients": len(clients), "client_train_rows": {"min": min(sizes), "max": max(sizes), "sum": sum(sizes)}}


def model_spec(cfg, data) -> dict[str, Any]:
    """What the Flower process needs to build the same network with rayline.models.build_model."""
    return {"model": cfg.model.model_dump(mode="json"), "shape": data.preprocessor.model_shape()}


def run(cfg, data, *, verbose: bool = False) -> dict[str, Any]:
    """One federated run: timings (start-up, every round), updates per second, and the final model's accuracy."""
    from rayline.checkpoint import load_training_state
    from rayline.federated import train_federated

    log = print if verbose else (lambda _: None)
    started = time.perf_counter()
    outcome = train_federated(cfg, data, log=log)
    wall_s = time.perf_counter() - started
    _, _, _, history = load_training_state(outcome.final_checkpoint)
    round_s = [h["round_seconds"] for h in history]
    updates = int(sum(h["clients_answered"] for h in history))
    result = {
        "run_name": cfg.run_name,
        "rounds": len(history),
        "client_updates": updates,
        "wall_time_s": round(wall_s, 3),
        "rounds_time_s": round(sum(round_s), 3),
        "outside_rounds_s": round(wall_s - sum(round_s), 3),
        "client_updates_per_s_rounds": round(updates / sum(round_s), 2),
        "client_updates_per_s_whole_run": round(updates / wall_s, 2),
        "round_wall_s": [round(s, 4) for s in round_s],
        "val_accuracy_by_round": [round(h["val_accuracy"], 4) for h in history],
        "clients_clipped": int(sum(h["clients_clipped"] for h in history)),
        "test": test_metrics_of(outcome.final_checkpoint, data),
        "clients_heldout": {k: v for k, v in outcome.clients.items() if k != "clients"},
        "client_actors": client_actor_count(cfg.run_name),
    }
    if outcome.privacy is not None:
        result["privacy"] = outcome.privacy
    return result


def client_actor_count(run_name: str) -> int:
    """ClientGroup actors the run started, as Ray's State API lists them (rayline names them by run)."""
    from ray.util.state import list_actors

    actors = list_actors(filters=[("class_name", "=", "ClientGroup")], limit=10_000, raise_on_missing_output=False)
    return sum(1 for a in actors if (a.name or "").startswith(f"rayline-federated-{run_name}-"))


def test_metrics_of(checkpoint: Path, data) -> dict[str, float]:
    from rayline.pipeline import score_split

    return {k: round(v, 4) for k, v in score_split(checkpoint, data, "test").named("test").items()}


def test_metrics_of_state(path: Path, cfg, data) -> dict[str, float]:
    """Another framework's final global model (a state dict saved as .npz), scored as rayline's final model is."""
    import torch

    from rayline.federated.state import initial_model
    from rayline.train.evaluate import evaluate

    model = initial_model(cfg, data.preprocessor)
    with np.load(path) as stored:
        model.load_state_dict({key: torch.from_numpy(stored[key]) for key in stored})
    scored = evaluate(model, data.test, data.preprocessor, batch_size=1024, device=torch.device("cpu"))
    return {k: round(v, 4) for k, v in scored.named("test").items()}
