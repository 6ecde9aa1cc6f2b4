"""What FedProx and FedAvgM change, without a cluster: a real ClientGroup (the class the actors run) trains one
client's rows from a prepared split file, and the server steps the global model as each algorithm defines."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines import digits_config
from rayline.config import FederatedConfig
from rayline.data.prepared import SplitFiles, write_split_file
from rayline.data.preprocess import NumericStat, Preprocessor
from rayline.federated.client import ClientGroup
from rayline.federated.rounds import server_step
from rayline.federated.state import to_vector

LR = 0.1
ROWS, INPUTS = 96, 6


@pytest.fixture
def one_client(tmp_path):
    """A classification split of ROWS rows written as rayline prepares it, and a function that makes the
    ClientGroup holding all of them as client 0 under given federated settings."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(ROWS, INPUTS)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0.5)
    sizes = write_split_file(x, y, str(tmp_path / "prepared"), "train/part-0.parquet")
    split = SplitFiles(str(tmp_path / "prepared"), ["train/part-0.parquet"], [sizes], INPUTS)
    features = [NumericStat(f"f{i}", 0.0, 1.0) for i in range(INPUTS)]
    preprocessor = Preprocessor("classification", "label", features, ["a", "b", "c"], None, None)
    threads = torch.get_num_threads()

    def make(**federated) -> ClientGroup:
        cfg = digits_config(
            tmp_path,
            "algorithms",
            model={"kind": "mlp", "hidden_sizes": [16], "dropout": 0.0},
            train={"optimizer": {"name": "sgd", "lr": LR, "momentum": 0.0, "weight_decay": 0.0}, "baseline": False},
            federated={"clients": 2, "holdout": 0.0, **federated},
        )
        rows = {0: {"train": np.arange(ROWS), "holdout": np.zeros(0, dtype=np.int64)}}
        return ClientGroup(cfg.model_dump(mode="json"), preprocessor.to_dict(), split.to_dict(), rows, None, threads)

    yield make
    torch.set_num_threads(threads)


def update(group: ClientGroup) -> np.ndarray:
    """Client 0's round-0 update from the initial global model (the same for every algorithm and mu)."""
    global_vector = to_vector(group.model).copy()
    change, _ = group._local_update(global_vector, 0, 0)
    return change


def test_fedprox_with_mu_0_is_fedavg_exactly(one_client):
    settings = {"local_epochs": 2, "local_batch_size": 16}
    fedavg = update(one_client(**settings))
    assert np.linalg.norm(fedavg) > 1e-2, "the client trained"
    assert np.array_equal(update(one_client(algorithm="fedprox", mu=0.0, **settings)), fedavg)


def test_fedprox_adds_mu_times_the_drift_from_the_global_model_to_each_local_gradient(one_client):
    """Two full-batch steps: the first starts at the global model, where the proximal term's gradient is 0; the
    second's gradient gains mu * (w1 - w0), so FedProx's update is FedAvg's minus lr * mu * the first step."""
    full_batch = {"local_batch_size": ROWS}
    one_step = update(one_client(local_epochs=1, **full_batch))
    two_steps = update(one_client(local_epochs=2, **full_batch))
    mu = 3.0
    prox = update(one_client(algorithm="fedprox", mu=mu, local_epochs=2, **full_batch))
    assert np.abs(prox - (two_steps - LR * mu * one_step)).max() < 1e-6
    assert np.abs(prox - two_steps).max() > 1e-3, "the proximal term changed the update"


def test_a_larger_fedprox_mu_keeps_the_client_closer_to_the_global_model(one_client):
    settings = {"local_epochs": 4, "local_batch_size": 16}  # 24 local steps
    norms = [np.linalg.norm(update(one_client(**settings)))]
    for mu in (0.1, 1.0, 5.0):
        norms.append(np.linalg.norm(update(one_client(algorithm="fedprox", mu=mu, **settings))))
    assert norms == sorted(norms, reverse=True), f"update norms by mu (0 = FedAvg, 0.1, 1, 5): {norms}"
    assert norms[-1] < 0.5 * norms[0], f"mu 5 pulls the client towards the global model: {norms}"


def test_fedavgm_applies_the_averages_through_server_momentum_round_after_round():
    fed = FederatedConfig(clients=2, algorithm="fedavgm", server_lr=2.0, server_momentum=0.5)
    w0 = np.array([1.0, 2.0, -1.0])
    average_1 = np.array([0.5, -1.0, 0.25])
    average_2 = np.array([0.25, 0.5, -0.5])
    # By hand: m1 = a1, w1 = w0 + 2 * m1; m2 = 0.5 * m1 + a2, w2 = w1 + 2 * m2.
    w1, m1 = server_step(w0, average_1, None, fed)
    assert w1 == pytest.approx([2.0, 0.0, -0.5]) and m1 == pytest.approx([0.5, -1.0, 0.25])
    w2, m2 = server_step(w1, average_2, m1, fed)
    assert m2 == pytest.approx([0.5, 0.0, -0.375])
    assert w2 == pytest.approx([3.0, 0.0, -1.25])
    plain = FederatedConfig(clients=2, algorithm="fedavg", server_lr=2.0)
    fedavg_w2, momentum = server_step(server_step(w0, average_1, None, plain)[0], average_2, None, plain)
    assert momentum is None and fedavg_w2 == pytest.approx([2.5, 1.0, -1.5]), "FedAvg: w + server_lr * average"
    prox = FederatedConfig(clients=2, algorithm="fedprox", server_lr=2.0)
    assert server_step(w0, average_1, None, prox)[0] == pytest.approx(w1), "FedProx's server step is FedAvg's"
