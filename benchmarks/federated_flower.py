"""Flower's side of benchmarks/federated_bench.py, run by Flower's own virtualenv (benchmarks/flower_venv.py):

    .flower-venv/bin/python federated_flower.py --settings settings.json --output flower.json

Flower 1.42's Message API as its PyTorch quickstart writes it: a ClientApp whose @train() loads the global
ArrayRecord into the model, trains locally and replies with the new arrays and "num-examples"; a ServerApp whose
@main() runs the FedAvg strategy's start() with a centralized evaluate_fn; the two driven by
flwr.simulation.run_simulation on Flower's Ray backend (client_resources num_cpus 1 on a Ray of num_cpus 2: two
ClientApp actors). Federated evaluation is off (fraction_evaluate 0): rayline evaluates only the global model
on the validation split each round, and so does evaluate_fn here.

The data, each client's rows, round 0's weights and the model (rayline.models.build_model, from the checkout on
PYTHONPATH) are rayline's, handed over in the .npz and the settings. Each client seeds its batch order and
dropout as rayline's ClientGroup does, so with all clients in every round both sides compute the same FedAvg.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from flower_client import build_model, client_app
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords
from flwr.simulation import run_simulation


def make_server_app(settings: dict, timings: dict) -> ServerApp:
    server_app = ServerApp()
    x_val, y_val = validation_arrays(settings["inputs"])
    actors: set[int] = set()
    threads: set[int] = set()

    def record_clients(records: list[RecordDict], weight_key: str) -> MetricRecord:
        """FedAvg's own metric averaging, after noting which actor processes trained the round."""
        timings["client_updates"] += len(records)
        for record in records:
            actors.add(int(record["metrics"]["pid"]))
            threads.add(int(record["metrics"]["torch-threads"]))
        return aggregate_metricrecords(records, weight_key)

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model = build_model(settings["model_spec"])
        model.load_state_dict(arrays.to_torch_state_dict())
        model.eval()
        with torch.no_grad():
            accuracy = float((model(x_val).argmax(dim=1) == y_val).float().mean())
        timings["evaluated_at"].append(time.perf_counter())
        timings["val_accuracy"].append(accuracy)
        return MetricRecord({"accuracy": accuracy})

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = FedAvg(
            fraction_train=settings["fraction_train"], fraction_evaluate=0.0, train_metrics_aggr_fn=record_clients
        )
        result = strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(initial_state(settings["inputs"])),
            num_rounds=settings["rounds"],
            train_config=ConfigRecord(train_config(settings)),
            evaluate_fn=evaluate_fn,
        )
        timings["final_state"] = result.arrays.to_torch_state_dict()
        timings["actor_pids"] = sorted(actors)
        timings["client_torch_threads"] = sorted(threads)

    return server_app


def train_config(settings: dict) -> dict:
    return {
        "inputs": settings["inputs"],
        "model-spec": settings["model_spec"],
        "lr": settings["lr"],
        "momentum": settings["momentum"],
        "weight-decay": settings["weight_decay"],
        "batch-size": settings["local_batch_size"],
        "local-epochs": settings["local_epochs"],
        "seed": settings["seed"],
    }


def validation_arrays(inputs: str) -> tuple[torch.Tensor, torch.Tensor]:
    with np.load(inputs) as stored:
        return torch.from_numpy(stored["x_validation"]), torch.from_numpy(stored["y_validation"])


def initial_state(inputs: str) -> dict[str, torch.Tensor]:
    with np.load(inputs) as stored:
        return {
            key.removeprefix("initial/"): torch.from_numpy(stored[key]) for key in stored if key.startswith("initial/")
        }


def simulate(settings: dict) -> dict:
    """One run_simulation; the evaluate_fn's clock gives each round's wall time (round 0: before training)."""
    timings: dict = {"evaluated_at": [], "val_accuracy": [], "client_updates": 0}
    backend = {
        "client_resources": {"num_cpus": settings["client_num_cpus"], "num_gpus": 0.0},
        "init_args": {"num_cpus": settings["num_cpus"], "num_gpus": 0, "logging_level": "ERROR"},
    }
    started = time.perf_counter()
    run_simulation(
        server_app=make_server_app(settings, timings),
        client_app=client_app,
        num_supernodes=settings["clients"],
        backend_config=backend,
    )
    ended = time.perf_counter()
    marks = timings["evaluated_at"]
    return {
        "simulation_wall_s": round(ended - started, 3),
        "to_first_evaluation_s": round(marks[0] - started, 3),
        "round_wall_s": [round(b - a, 4) for a, b in zip(marks, marks[1:], strict=False)],
        "after_last_round_s": round(ended - marks[-1], 3),
        "val_accuracy_by_round": [round(a, 4) for a in timings["val_accuracy"][1:]],
        "client_updates": timings["client_updates"],
        "actor_processes": len(timings["actor_pids"]),
        "client_torch_threads": timings["client_torch_threads"],
        "backend_config": backend,
        "final_state": timings["final_state"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    settings = json.loads(args.settings.read_text())
    result = simulate(settings)
    final = result.pop("final_state")
    np.savez(args.output.with_suffix(".npz"), **{key: t.numpy() for key, t in final.items()})
    result["final_state"] = str(args.output.with_suffix(".npz"))
    args.output.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
