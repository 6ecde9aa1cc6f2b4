"""Federated learning on the session's Ray cluster, with real ClientGroup actors and the real aggregation: FedAvg
against centralized SGD, weighting by sample counts, secure aggregation's masks as the server receives them,
differential privacy's budget, a client actor killed mid-round, a driver killed and resumed, and the federated
model served over HTTP and used for batch prediction."""

from __future__ import annotations

import re
import signal
import subprocess
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from clusters import VENV_BIN, metric_samples, read_metrics
from faults import wait_until
from http_client import http
from pipelines import PIXELS, digits_config, digits_pipeline, digits_source, write_pipeline
from rayline.checkpoint import (
    MODEL_FILE,
    checkpoint_metrics,
    complete_checkpoints,
    last_complete_checkpoint,
    load_training_state,
)
from rayline.config import ConfigError, ServeConfig
from rayline.data import prepare_datasets
from rayline.federated import secure
from rayline.federated.client import rows_at
from rayline.federated.driver import make_clients, start_groups
from rayline.federated.privacy import epsilon_after
from rayline.federated.rounds import aggregate, collect
from rayline.federated.state import initial_model, load_vector, to_vector
from rayline.pipeline import train_and_register
from rayline.predict import predict_files
from rayline.registry import Registry
from rayline.runtime import free_port

SGD = {"name": "sgd", "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0}
EXACT = {
    "model": {"kind": "mlp", "hidden_sizes": [32], "dropout": 0.0},
    "train": {"optimizer": SGD, "baseline": False},
}
"""Plain SGD without dropout: one local step is the centralized step, to float rounding."""


def fed_config(directory: Path, name: str, federated: dict, **sections):
    base = {
        "model": EXACT["model"],
        "train": {**EXACT["train"], "checkpoint": {"metric": "val_accuracy", "mode": "max"}},
    }
    return digits_config(directory, name, **{**base, **sections}, federated=federated)


def sgd_step(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, lr: float) -> np.ndarray:
    loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y).long())
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= lr * p.grad
    return to_vector(model)


def registered_vector(cfg, report, data) -> np.ndarray:
    model = initial_model(cfg, data.preprocessor)
    directory = Registry(cfg.storage.uri).checkpoint_dir(report.version)
    model.load_state_dict(torch.load(directory / MODEL_FILE, weights_only=True))
    return to_vector(model)


def test_fedavg_of_one_client_one_full_batch_step_is_one_centralized_sgd_step(ray_cluster, tmp_path):
    federated = {"clients": 1, "holdout": 0.0, "rounds": 1, "local_batch_size": 100_000}
    cfg = fed_config(tmp_path, "one-client", federated)
    report = train_and_register(cfg, log=lambda _: None)
    data = prepare_datasets(cfg.data, storage_root=cfg.storage.uri, log=lambda _: None)
    x, y = (np.concatenate(parts) for parts in zip(*data.train.iter_arrays(), strict=True))
    centralized = sgd_step(initial_model(cfg, data.preprocessor), x, y, SGD["lr"])
    federated_model = registered_vector(cfg, report, data)
    assert np.abs(federated_model - to_vector(initial_model(cfg, data.preprocessor))).max() > 1e-3, "it trained"
    assert np.abs(federated_model - centralized).max() < 1e-6


def test_fedavgm_steps_the_global_model_through_server_momentum_across_rounds(ray_cluster, tmp_path):
    server_lr, beta = 1.5, 0.5
    federated = {"clients": 1, "holdout": 0.0, "rounds": 2, "local_batch_size": 100_000}
    federated |= {"algorithm": "fedavgm", "server_lr": server_lr, "server_momentum": beta}
    cfg = fed_config(tmp_path, "momentum", federated)
    report = train_and_register(cfg, log=lambda _: None)
    data = prepare_datasets(cfg.data, storage_root=cfg.storage.uri, log=lambda _: None)
    x, y = (np.concatenate(parts) for parts in zip(*data.train.iter_arrays(), strict=True))

    def client_average(w: np.ndarray) -> np.ndarray:
        """One client, one full-batch step: the round's average update is that SGD step."""
        model = initial_model(cfg, data.preprocessor)
        load_vector(model, w)
        return sgd_step(model, x, y, SGD["lr"]).astype(np.float64) - w

    w0 = to_vector(initial_model(cfg, data.preprocessor)).astype(np.float64)
    average_1 = client_average(w0)
    w1 = w0 + server_lr * average_1  # momentum starts as the first average
    average_2 = client_average(w1)
    momentum_2 = beta * average_1 + average_2
    w2 = w1 + server_lr * momentum_2
    federated_model = registered_vector(cfg, report, data)
    assert np.abs(federated_model - w2).max() < 1e-5
    assert np.abs(federated_model - (w1 + server_lr * average_2)).max() > 1e-3, "not FedAvg's step"
    _, server, _, _ = load_training_state(last_complete_checkpoint(tmp_path / "store" / "runs" / "momentum"))
    assert np.abs(server["server_momentum"].numpy() - momentum_2).max() < 1e-5, "kept for a resumed run"


def test_clients_of_unequal_size_are_averaged_by_their_sample_counts(ray_cluster, tmp_path):
    frame = pd.read_parquet(digits_source(tmp_path))
    frame["site"] = np.where(np.arange(len(frame)) < 400, "north", "south")
    frame.to_parquet(tmp_path / "sites.parquet")
    federated = {"partition_by": "site", "holdout": 0.0, "rounds": 1, "local_batch_size": 100_000}
    cfg = fed_config(tmp_path, "sites", federated, data={"source": str(tmp_path / "sites.parquet")})
    report = train_and_register(cfg, log=lambda _: None)
    data = prepare_datasets(cfg.data, storage_root=cfg.storage.uri, log=lambda _: None, client_column="site")
    x, y = (np.concatenate(parts) for parts in zip(*data.train.iter_arrays(), strict=True))
    site = data.train.read_column("client")
    counts = {name: int((site == name).sum()) for name in ("north", "south")}
    assert 250 < counts["north"] < counts["south"] / 3, counts
    steps = {n: sgd_step(initial_model(cfg, data.preprocessor), x[site == n], y[site == n], SGD["lr"]) for n in counts}
    weighted = sum(counts[n] * steps[n].astype(np.float64) for n in counts) / sum(counts.values())
    federated_model = registered_vector(cfg, report, data)
    assert np.abs(federated_model - weighted).max() < 1e-6
    assert np.abs(federated_model - (steps["north"] + steps["south"]) / 2).max() > 1e-4, "not the plain mean"
    record = Registry(cfg.storage.uri).record(report.version)
    assert record["evaluation"]["federated"]["clients"] == {}, "holdout 0: no rows to score each client on"
    assert record["evaluation"]["federated"]["settings"]["partition_by"] == "site"


def test_a_folder_of_files_is_one_client_per_file(ray_cluster, tmp_path):
    frame = pd.read_parquet(digits_source(tmp_path))
    folder = tmp_path / "clinics"
    folder.mkdir()
    for name, part in (
        ("north.parquet", frame[:300]),
        ("south.parquet", frame[300:900]),
        ("east.parquet", frame[900:]),
    ):
        part.to_parquet(folder / name)
    federated = {"client_files": True, "rounds": 2}
    cfg = fed_config(tmp_path, "clinics", federated, data={"source": str(folder)})
    lines: list[str] = []
    report = train_and_register(cfg, log=lines.append)
    assert any(line.startswith("federated: 3 clients") for line in lines), lines
    clients = Registry(cfg.storage.uri).record(report.version)["evaluation"]["federated"]["clients"]
    assert sorted(clients["clients"]) == ["east.parquet", "north.parquet", "south.parquet"]
    rows = {name: m["rows"] for name, m in clients["clients"].items()}
    assert rows["north.parquet"] < rows["south.parquet"] < rows["east.parquet"], rows
    with pytest.raises(ConfigError, match="data.source .* is 1 file"):
        train_and_register(fed_config(tmp_path, "one-file", federated), log=lambda _: None)


def test_the_server_receives_only_masked_updates_whose_sum_is_the_true_sum(ray_cluster, tmp_path):
    import ray

    cfg = fed_config(tmp_path, "masked", {"clients": 6, "secure_aggregation": True, "clients_per_actor": 3})
    data = prepare_datasets(cfg.data, storage_root=cfg.storage.uri, log=lambda _: None)
    groups = start_groups(cfg, data, make_clients(cfg, data), None)
    try:
        vector = to_vector(initial_model(cfg, data.preprocessor))
        ref = ray.put(vector)
        masked, lost, _ = collect(groups, list(range(6)), ref, vector.nbytes, 0, cfg.federated)
        plain_cfg = cfg.federated.model_copy(update={"secure_aggregation": False})
        plain, _, _ = collect(groups, list(range(6)), ref, vector.nbytes, 0, plain_cfg)
    finally:
        for group in groups:
            ray.kill(group.actor)
    assert not lost and len(masked) == len(plain) == 6
    by_client = {a["client"]: a["sent"] for a in plain}
    for answer in masked:
        assert answer["sent"].dtype == np.uint64
        seen = secure.decode(answer["sent"])
        assert np.median(np.abs(seen - by_client[answer["client"]])) > 1e3, "what the server holds hides the update"
    true_sum = np.sum([a["sent"].astype(np.float64) for a in plain], axis=0)
    assert np.abs(secure.unmasked_sum([a["sent"] for a in masked]) - true_sum).max() < 1e-4
    assert np.abs(aggregate(masked, cfg.federated, 0) - aggregate(plain, plain_cfg, 0)).max() < 1e-6


def test_a_private_run_records_the_accountants_epsilon_and_is_tracked(ray_cluster, tmp_path, mlflow_server):
    from mlflow.tracking import MlflowClient

    dp = {"clip_norm": 1.0, "noise_multiplier": 0.8, "delta": 1e-4}
    federated = {"clients": 10, "clients_per_round": 0.5, "rounds": 3, "secure_aggregation": True, "dp": dp}
    tracking = {"mlflow": {"uri": mlflow_server.uri, "experiment": "federated"}, "tensorboard": True}
    cfg = fed_config(tmp_path, "private", federated, tracking=tracking)
    lines: list[str] = []
    report = train_and_register(cfg, log=lines.append)
    expected = epsilon_after(cfg.federated.dp, 0.5, 3)
    record = Registry(cfg.storage.uri).record(report.version)
    assert record["evaluation"]["federated"]["privacy"] == {"epsilon": expected, "delta": 1e-4, "rounds": 3}
    assert [h["epsilon"] for h in record["history"]] == [epsilon_after(cfg.federated.dp, 0.5, r) for r in (1, 2, 3)]
    assert any(f"epsilon {expected:.2f}" in line and line.startswith("round 3/3") for line in lines), lines
    assert any(line.startswith(f"privacy: epsilon {expected:.2f} at delta 0.0001 after 3 rounds") for line in lines)

    client = MlflowClient(mlflow_server.uri)
    [run] = client.search_runs([client.get_experiment_by_name("federated").experiment_id])
    assert record["tracking"] == {"mlflow_run_id": run.info.run_id}
    assert run.info.status == "FINISHED" and run.data.tags["rayline.version"] == "private/v1"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == [0, 1, 2], "per round"
    assert run.data.metrics["epsilon"] == pytest.approx(expected)
    assert run.data.params["federated.dp.noise_multiplier"] == "0.8"
    assert list((tmp_path / "store" / "runs" / "private" / "tensorboard").glob("events.out.tfevents.*"))


ROUNDS = 40


def answers(lines: list[str]) -> dict[int, int]:
    """Clients that answered each round so far, from the progress lines ("round 3/40: 4/8 clients answered")."""
    found = {}
    for line in lines:
        if match := re.match(r"round (\d+)/\d+: (\d+)/\d+ clients answered", line):
            found[int(match[1])] = int(match[2])
    return found


@pytest.fixture(scope="module")
def survived_a_kill(ray_cluster, tmp_path_factory):
    """Rounds over 8 clients in 2 actors. One actor is killed after round 2 and Ray restarts it; once its clients
    are back, the other is killed for good and rayline starts a new actor for its clients."""
    import ray

    directory = tmp_path_factory.mktemp("federated-kill")
    federated = {"clients": 8, "rounds": ROUNDS, "clients_per_actor": 4, "local_epochs": 40, "local_batch_size": 16}
    cfg = fed_config(directory, "kill", federated)
    lines: list[str] = []
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(report=train_and_register(cfg, log=lines.append)))
    thread.start()
    kills: list[int] = []
    for actor, restart in ((0, True), (1, False)):
        after = max(answers(lines), default=0) if kills else 2

        def all_back(after=after) -> bool:
            done = answers(lines)
            return any(r > after and n == 8 for r, n in done.items()) or not thread.is_alive()

        wait_until(all_back, 300, f"all 8 clients answering after round {after}")
        kills.append(max(answers(lines)))
        ray.kill(ray.get_actor(f"rayline-federated-kill-{actor}"), no_restart=not restart)
        wait_until(lambda k=kills[-1]: any(r > k and n < 8 for r, n in answers(lines).items()), 300, "a short round")
    thread.join(timeout=300)
    assert "report" in outcome, "\n".join(lines[-20:])
    return cfg, outcome["report"], lines, kills


def test_client_actors_killed_mid_round_cost_their_clients_only_until_they_are_replaced(survived_a_kill):
    cfg, report, lines, kills = survived_a_kill
    history = Registry(cfg.storage.uri).record(report.version)["history"]
    assert [int(h["round"]) for h in history] == list(range(1, ROUNDS + 1)), "every round ran once"
    answered = {int(h["round"]): h["clients_answered"] for h in history}
    assert all(h["clients_chosen"] == 8 for h in history)
    for killed_after, how in zip(kills, ("restarted by Ray", "replaced by a new actor"), strict=True):
        gap = min(r for r, n in answered.items() if r > killed_after and n < 8)
        assert gap <= killed_after + 2, f"the kill after round {killed_after} cost the next rounds: {answered}"
        assert answered[gap] == 4, "only the killed actor's 4 clients were missing"
        assert any(n == 8 for r, n in answered.items() if r > gap), f"{how}, its clients came back: {answered}"
    assert report.test_metrics["test_accuracy"] > 0.6, "the run trained on (chance is 0.1)"


def test_a_federated_model_is_served_and_batch_predicted(ray_cluster, survived_a_kill, tmp_path):
    from rayline.serve import deploy, shutdown

    cfg, report, _, _ = survived_a_kill
    rows = pd.read_parquet(digits_source(tmp_path)).head(8)
    serve_cfg = ServeConfig(port=free_port(), app_name="federated", route_prefix="/fed", cpus_per_replica=0.25)
    url = deploy(cfg.storage.uri, report.version, serve_cfg)
    try:
        answer = http.post(f"{url}/predict", json={"rows": rows[PIXELS].to_dict("records")}, timeout=60)
        assert answer.status_code == 200, answer.text
        served = [p["label"] for p in answer.json()["predictions"]]
    finally:
        shutdown()
    rows.to_csv(tmp_path / "in.csv", index=False)
    used, written = predict_files(
        cfg.storage.uri, str(report.version), str(tmp_path / "in.csv"), str(tmp_path / "out.parquet")
    )
    assert (used, written) == (report.version, 8)
    batch = pd.read_parquet(tmp_path / "out.parquet")
    assert batch["prediction"].astype(str).tolist() == [str(label) for label in served]
    assert np.mean(np.array(served).astype(int) == rows["label"].to_numpy()) > 0.5


def test_each_round_reports_the_bytes_it_moved_to_the_log_and_prometheus_and_the_record_scores_each_client(
    ray_cluster, survived_a_kill
):
    cfg, report, lines, _ = survived_a_kill
    registry = Registry(cfg.storage.uri)
    record = registry.record(report.version)
    history = record["history"]
    data = prepare_datasets(cfg.data, storage_root=cfg.storage.uri, log=lambda _: None)
    model = initial_model(cfg, data.preprocessor)
    model.load_state_dict(torch.load(registry.checkpoint_dir(report.version) / MODEL_FILE, weights_only=True))
    model_bytes = to_vector(model).nbytes

    # Bytes moved: the global model once to each of the round's (at most 2) actors, and each answer's update.
    progress = {int(m[1]): line for line in lines if (m := re.match(r"round (\d+)/\d+: ", line))}
    for h in history:
        actors_called = h["bytes_moved"] / model_bytes - h["clients_answered"]
        assert actors_called in ((2,) if h["clients_answered"] == 8 else (1, 2)), h
        assert f", {h['bytes_moved'] / 1e6:.2f} MB moved, " in progress[int(h["round"])]
    assert any(h["bytes_moved"] == 10 * model_bytes for h in history)

    # The round gauges, as Prometheus scrapes them from the node's metrics agent.
    last = history[-1]
    wanted = {
        "ray_rayline_federated_round": ROUNDS,
        "ray_rayline_federated_clients_answered": last["clients_answered"],
        "ray_rayline_federated_bytes_moved": last["bytes_moved"],
        "ray_rayline_train_epoch": ROUNDS,
    }
    port = ray_cluster.address_info["metrics_export_port"]

    def exported() -> dict[str, float | None]:
        text = read_metrics(port)
        return {name: {s.get("run"): v for s, v in metric_samples(text, name)}.get("kill") for name in wanted}

    wait_until(lambda: exported() == wanted, 60, f"the gauges of run kill to read {wanted}")
    assert "kill" not in {s.get("run") for s, _ in metric_samples(read_metrics(port), "ray_rayline_federated_epsilon")}

    # Each client's accuracy on its own held-out rows, their mean and the worst client.
    clients = record["evaluation"]["federated"]["clients"]
    assert clients["metric"] == "accuracy"
    model.eval()
    for client in make_clients(cfg, data):
        x, y = rows_at(data.train, client.holdout_rows)
        with torch.no_grad():
            accuracy = float(np.mean(model(torch.from_numpy(x)).argmax(dim=1).numpy() == y))
        assert clients["clients"][client.name]["accuracy"] == pytest.approx(accuracy), client.name
        assert clients["clients"][client.name]["rows"] == len(y) > 0
    accuracies = {name: m["accuracy"] for name, m in clients["clients"].items()}
    assert len(accuracies) == 8
    assert clients["mean"] == pytest.approx(np.mean(list(accuracies.values())))
    assert clients["worst"] == min(accuracies.values()) == accuracies[clients["worst_client"]]
    summary = f"clients: mean accuracy {clients['mean']:.4f}, worst {clients['worst']:.4f} ({clients['worst_client']})"
    assert any(line.startswith(summary) for line in lines), summary


def test_a_killed_driver_resumes_from_its_last_round(ray_cluster, tmp_path):
    federated = {"clients": 4, "rounds": 6, "local_epochs": 15, "local_batch_size": 16}
    pipeline = digits_pipeline(tmp_path, "resumed", **EXACT, federated=federated)
    write_pipeline(tmp_path / "pipeline.yaml", pipeline)
    command = [
        str(VENV_BIN / "rayline"),
        "train",
        "pipeline.yaml",
        "--ray-address",
        ray_cluster.address_info["address"],
    ]
    runs = tmp_path / "store" / "runs" / "resumed"
    with (tmp_path / "first.log").open("w") as out:
        first = subprocess.Popen(command, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: len(rounds_saved(runs)) >= 2 or first.poll() is not None, 300, "two rounds saved")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    finally:
        first.kill()
    done_before = max(rounds_saved(runs))
    assert done_before < 6, (tmp_path / "first.log").read_text()[-2000:]
    second = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert f"resuming resumed after round {done_before}" in second.stdout
    printed = [line.split(":")[0] for line in second.stdout.splitlines() if line.startswith("round ")]
    assert printed == [f"round {r}/6" for r in range(done_before + 1, 7)], "only the rounds left were trained"
    record = Registry(tmp_path / "store").record(Registry(tmp_path / "store").model("resumed").ref("v1"))
    assert [int(h["round"]) for h in record["history"]] == list(range(1, 7))


def rounds_saved(runs: Path) -> list[int]:
    return [int(checkpoint_metrics(c)["round"]) for c in complete_checkpoints(runs)] or [0]
