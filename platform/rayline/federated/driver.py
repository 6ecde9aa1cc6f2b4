"""The federated run: clients dealt from the prepared training split, ClientGroup actors started, rounds run
and checkpointed, a stopped run resumed from its last round, and each client's metrics on its held-out rows."""

from __future__ import annotations

import math
import posixpath
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rayline.checkpoint import (
    checkpoint_config,
    complete_checkpoints,
    last_complete_checkpoint,
    load_training_state,
    save_checkpoint,
)
from rayline.config import ConfigError, PipelineConfig, round_size
from rayline.data import PreparedData
from rayline.federated.client import ClientGroup
from rayline.federated.partition import Client, check_clients, column_clients, simulated_clients
from rayline.federated.privacy import epsilon_after
from rayline.federated.rounds import Group, RoundResult, run_round, server_step, wait_until_back
from rayline.federated.state import initial_model, load_vector, to_vector
from rayline.metrics import record_epoch, record_round
from rayline.tracking.runs import epoch_logger
from rayline.train.evaluate import evaluate

TRAINING_SETTINGS = (
    "partition_by", "client_files", "clients", "partition", "alpha", "seed", "holdout", "clients_per_round",
    "local_epochs", "local_batch_size", "algorithm", "mu", "server_lr", "server_momentum", "secure_aggregation", "dp",
)  # fmt: skip
"""What a resumed run must keep: the clients and what a round does. rounds, timeouts and actor sizes may change."""
CLIENT_COLUMN = "client"
"""The prepared files' column holding each row's partition_by value (prepare_datasets(client_column=...))."""


@dataclass(frozen=True)
class FederatedOutcome:
    final_checkpoint: Path
    final_metrics: dict[str, float]
    rounds_trained: int
    """Rounds this start trained (0 when the run had already finished)."""
    clients: dict[str, Any]
    """Per-client metrics of the final model on each client's held-out rows, with their mean and worst."""
    privacy: dict[str, float] | None

    def summary(self) -> list[str]:
        """The run's lines for the terminal and the registry record: per-client metrics and the privacy spent."""
        lines = []
        clients = self.clients
        if clients:
            lines.append(
                f"clients: mean {clients['metric']} {clients['mean']:.4f}, worst {clients['worst']:.4f} "
                f"({clients['worst_client']}) on their own held-out rows"
            )
        if self.privacy is not None:
            p = self.privacy
            lines.append(f"privacy: epsilon {p['epsilon']:.2f} at delta {p['delta']:g} after {p['rounds']} rounds")
        return lines


@dataclass
class ServerState:
    vector: np.ndarray
    momentum: np.ndarray | None
    rounds_done: int
    history: list[dict[str, float]]


def train_federated(
    cfg: PipelineConfig, data: PreparedData, *, class_weights: list[float] | None = None, log=print
) -> FederatedOutcome:
    import ray

    fed = cfg.federated
    clients = make_clients(cfg, data)
    check_clients(fed, clients)
    run_dir = Path(cfg.storage.uri) / "runs" / cfg.run_name
    model = initial_model(cfg, data.preprocessor)
    state = resume_state(run_dir, cfg, model, log)
    first_round = state.rounds_done
    sample_rate = round_size(fed, len(clients)) / len(clients)
    log(describe(cfg, clients, sample_rate))
    groups = start_groups(cfg, data, clients, class_weights)
    tracking = {"run_name": cfg.run_name} if cfg.tracking.enabled else None
    try:
        with epoch_logger(cfg, tracking, True, state.history) as log_round:
            run_rounds(groups, state, cfg, data, model, run_dir, len(clients), sample_rate, log, log_round)
        load_vector(model, state.vector)
        per_client = client_metrics(groups, clients, state.vector, data, fed.round_timeout_s)
    finally:
        for group in groups:
            ray.kill(group.actor)
    last = last_complete_checkpoint(run_dir)
    epsilon = None if fed.dp is None else epsilon_after(fed.dp, sample_rate, state.rounds_done)
    privacy = None if fed.dp is None else {"epsilon": epsilon, "delta": fed.dp.delta, "rounds": state.rounds_done}
    return FederatedOutcome(last, state.history[-1], state.rounds_done - first_round, per_client, privacy)


def run_rounds(groups, state: ServerState, cfg, data, model, run_dir: Path, num_clients, sample_rate, log, log_round):
    """The rounds left: each one run, the global model stepped and evaluated, checkpointed, printed, exported and
    tracked (MLflow, TensorBoard) as training's epochs are."""
    fed = cfg.federated
    for round_index in range(state.rounds_done, fed.rounds):
        started = time.perf_counter()
        result = run_round(groups, state.vector, round_index, fed, num_clients, log)
        state.vector, state.momentum = server_step(state.vector, result.average, state.momentum, fed)
        load_vector(model, state.vector)
        metrics = round_metrics(model, data, result, round_index, fed, sample_rate)
        metrics["round_seconds"] = time.perf_counter() - started
        state.history.append(metrics)
        state.rounds_done = round_index + 1
        save_round(run_dir, model, state, cfg, data)
        log(progress_line(metrics, result, cfg))
        record_epoch(cfg.run_name, {**metrics, "epochs_done": state.rounds_done})
        record_round(cfg.run_name, metrics)
        log_round(round_index, metrics)


def make_clients(cfg: PipelineConfig, data: PreparedData) -> list[Client]:
    fed = cfg.federated
    if fed.partition_by is not None:
        return column_clients(fed, data.train.read_column(CLIENT_COLUMN))
    if fed.client_files:
        files = [posixpath.basename(str(path)) for path in data.train.read_column(CLIENT_COLUMN)]
        return column_clients(fed, np.array(files), what="federated.client_files")
    labels = data.train.read_column("y") if data.preprocessor.task == "classification" else None
    return simulated_clients(fed, labels, data.train.rows)


def describe(cfg: PipelineConfig, clients: list[Client], sample_rate: float) -> str:
    fed = cfg.federated
    sizes = [c.num_samples for c in clients]
    extras = [fed.algorithm]
    if fed.secure_aggregation:
        extras.append("secure aggregation")
    if fed.dp is not None:
        extras.append(f"dp clip {fed.dp.clip_norm} noise {fed.dp.noise_multiplier}")
    return (
        f"federated: {len(clients)} clients ({min(sizes)}-{max(sizes)} training rows each), "
        f"{round_size(fed, len(clients))} per round (rate {sample_rate:.2f}), {fed.rounds} rounds of "
        f"{fed.local_epochs} local epoch(s); {', '.join(extras)}"
    )


def start_groups(
    cfg: PipelineConfig, data: PreparedData, clients: list[Client], class_weights: list[float] | None
) -> list[Group]:
    """One ClientGroup actor per `clients_per_actor` clients (default: spread over the free CPUs). Restarted by
    Ray if it dies; the round it was in goes on without its clients."""
    import ray

    fed = cfg.federated
    per_actor = fed.clients_per_actor or math.ceil(len(clients) / actor_count(fed.cpus_per_actor, len(clients)))
    config, preprocessor, split = cfg.model_dump(mode="json"), data.preprocessor.to_dict(), data.train.to_dict()
    remote = ray.remote(ClientGroup)
    options = {"num_cpus": fed.cpus_per_actor, "max_restarts": 3, "max_task_retries": 0}
    threads = max(1, int(fed.cpus_per_actor))
    groups = []
    for first in range(0, len(clients), per_actor):
        ids = list(range(first, min(first + per_actor, len(clients))))
        rows = ray.put({i: {"train": clients[i].train_rows, "holdout": clients[i].holdout_rows} for i in ids})
        name = f"rayline-federated-{cfg.run_name}-{first // per_actor}"

        def start(name=name, rows=rows):
            actor = remote.options(name=name, get_if_exists=False, **options)
            return actor.remote(config, preprocessor, split, rows, class_weights, threads)

        groups.append(Group(start(), ids, start))
    ray.get([g.actor.ready.remote() for g in groups])  # a client that cannot read its rows fails here
    return groups


def actor_count(cpus_per_actor: float, num_clients: int) -> int:
    import ray

    free = ray.available_resources().get("CPU", 1.0)
    return max(1, min(num_clients, int(free // cpus_per_actor)))


def round_metrics(model, data: PreparedData, result: RoundResult, round_index: int, fed, sample_rate) -> dict:
    validation = evaluate(model, data.validation, data.preprocessor, batch_size=1024, device=torch.device("cpu"))
    metrics: dict[str, float] = {
        "epoch": round_index,
        "round": round_index + 1,
        **validation.named("val"),
        "train_loss": float(np.average([a["train_loss"] for a in result.answered])),
        "clients_answered": len(result.answered),
        "clients_chosen": result.chosen,
        "clients_clipped": sum(a["clipped"] for a in result.answered),
        "round_attempts": result.attempts,
        "bytes_moved": result.bytes_moved,
    }
    if fed.dp is not None and fed.dp.noise_multiplier > 0:
        metrics["epsilon"] = epsilon_after(fed.dp, sample_rate, round_index + 1)
    return metrics


def progress_line(metrics: dict[str, float], result: RoundResult, cfg: PipelineConfig) -> str:
    metric = cfg.train.checkpoint.metric
    parts = [
        f"round {metrics['round']}/{cfg.federated.rounds}: {len(result.answered)}/{result.chosen} clients answered",
        f"{metric} {metrics.get(metric, float('nan')):.4f}",
    ]
    if "val_accuracy" in metrics and metric != "val_accuracy":
        parts.append(f"val_accuracy {metrics['val_accuracy']:.4f}")
    if "epsilon" in metrics:
        parts.append(f"epsilon {metrics['epsilon']:.2f}")
    parts.append(f"{metrics['bytes_moved'] / 1e6:.2f} MB moved")
    parts.append(f"{metrics['round_seconds']:.1f} s")
    if result.attempts > 1:
        parts.append(f"{result.attempts} tries")
    return ", ".join(parts)


def save_round(run_dir: Path, model, state: ServerState, cfg: PipelineConfig, data: PreparedData) -> None:
    """A checkpoint per round (the server momentum as its optimizer state), then the keep policy: the
    train.checkpoint.keep best by its metric, and always the last round, which a resume starts from."""
    directory = run_dir / f"checkpoint_{state.rounds_done:06d}"
    save_checkpoint(
        directory,
        model_state=model.state_dict(),
        optimizer_state={"server_momentum": None if state.momentum is None else torch.from_numpy(state.momentum)},
        epoch=state.rounds_done - 1,
        metrics=state.history[-1],
        history=state.history,
        preprocessor=data.preprocessor,
        config=cfg,
    )
    prune(run_dir, cfg, keep_also=directory)


def prune(run_dir: Path, cfg: PipelineConfig, keep_also: Path) -> None:
    keep = cfg.train.checkpoint
    sign = -1 if keep.mode == "max" else 1
    ranked = sorted(complete_checkpoints(run_dir), key=lambda d: sign * metric_of(d, keep.metric))
    kept = {*ranked[: keep.keep], keep_also}
    for directory in sorted(run_dir.glob("checkpoint_*")):
        if directory.is_dir() and directory not in kept:
            shutil.rmtree(directory, ignore_errors=True)


def metric_of(directory: Path, metric: str) -> float:
    from rayline.checkpoint import checkpoint_metrics

    value = checkpoint_metrics(directory).get(metric)
    return float("inf") if value is None or math.isnan(value) else float(value)


def resume_state(run_dir: Path, cfg: PipelineConfig, model, log) -> ServerState:
    """Round 0's model (the one given), or the last round checkpointed by an earlier start of this run (same
    federated settings but for the number of rounds), loaded into it."""
    last = last_complete_checkpoint(run_dir)
    if last is None:
        return ServerState(to_vector(model), None, 0, [])
    earlier = checkpoint_config(last).federated
    changed = sorted(
        k for k in TRAINING_SETTINGS if earlier is None or getattr(earlier, k) != getattr(cfg.federated, k)
    )
    if changed:
        raise ConfigError(
            f"run {cfg.run_name!r} at {run_dir} was trained with other federated settings ({', '.join(changed)}); "
            "set storage.run_name to start another run"
        )
    model_state, server, epoch, history = load_training_state(last)
    model.load_state_dict(model_state)
    momentum = server.get("server_momentum")
    log(f"federated: resuming {cfg.run_name} after round {epoch + 1} from {last}")
    return ServerState(to_vector(model), None if momentum is None else momentum.numpy(), epoch + 1, history)


def client_metrics(
    groups: list[Group], clients: list[Client], vector: np.ndarray, data: PreparedData, timeout_s: float
) -> dict:
    """The final model on every client's held-out rows: each client's metrics, and the mean and the worst."""
    import ray

    vector_ref = ray.put(vector)
    found: dict[int, dict[str, float]] = {}
    # An actor Ray is restarting (or a new one for its clients) answers once it is back.
    for group in groups:
        try:
            wait_until_back(group, timeout_s)
            found.update(ray.get(group.actor.evaluate.remote(vector_ref)))
        except ray.exceptions.RayActorError:  # gone for good: its clients have no metrics
            continue
    if not found:
        return {}
    name, worst = ("accuracy", min) if data.preprocessor.task == "classification" else ("rmse", max)
    values = {clients[c].name: m for c, m in found.items()}
    scores = {n: m[name] for n, m in values.items()}
    worst_client = worst(scores, key=scores.get)
    return {
        "metric": name,
        "mean": float(np.mean(list(scores.values()))),
        "worst": scores[worst_client],
        "worst_client": worst_client,
        "clients": values,
    }
