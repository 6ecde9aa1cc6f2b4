"""One federated round on real ClientGroup actors when clients straggle or drop out: a round closes at
round_timeout_s with the clients that answered, is tried again with fewer than min_clients, fails the run naming
the settings after max_round_attempts, and a masked round that lost a client is tried again without it. Also:
clients spread over actors by the free CPUs, and a partition_by column the source lacks refused before any round."""

from __future__ import annotations

import numpy as np
import pytest

from faults import disturb_federated_clients
from pipelines import digits_config
from rayline.config import ConfigError
from rayline.data import prepare_datasets
from rayline.federated.driver import make_clients, start_groups
from rayline.federated.rounds import FederatedError, collect, run_round, wait_until_back
from rayline.federated.state import initial_model, to_vector
from rayline.pipeline import train_and_register

CLIENTS = 4
AWAY = [2, 3]
"""The clients of the actor a test disturbs (two clients per actor)."""


@pytest.fixture(scope="module")
def rounds(ray_cluster, tmp_path_factory):
    """Four clients, two per ClientGroup actor, and the global model of round 0; warmed by one undisturbed
    round."""
    import ray

    directory = tmp_path_factory.mktemp("federated-rounds")
    federated = {"clients": CLIENTS, "clients_per_actor": 2, "cpus_per_actor": 0.5, "local_batch_size": 64}
    model = {"kind": "mlp", "hidden_sizes": [32], "dropout": 0.0}
    cfg = digits_config(directory, "straggle", model=model, federated=federated)
    data = prepare_datasets(cfg.data, storage_root=cfg.storage.uri, log=lambda _: None)
    groups = start_groups(cfg, data, make_clients(cfg, data), None)
    vector = to_vector(initial_model(cfg, data.preprocessor))
    try:
        warm = run_round(groups, vector, 0, cfg.federated, CLIENTS, log=print)
        assert len(warm.answered) == CLIENTS and warm.attempts == 1
        yield cfg, groups, vector, data
    finally:
        for group in groups:
            ray.kill(group.actor)


@pytest.fixture
def settled(rounds):
    """The module's actors, undisturbed and all free again after the test."""
    cfg, groups, vector, _ = rounds
    yield cfg, groups, vector
    disturb_federated_clients(straggler(groups).actor)  # waits for the straggler's last task: calls run in turn
    for group in groups:
        wait_until_back(group, 60)
        assert group.busy is None


def straggler(groups):
    [group] = [g for g in groups if g.client_ids == AWAY]
    return group


def mean_update(groups, clients: list[int], vector: np.ndarray, round_index: int, fed) -> np.ndarray:
    """The weighted mean of these clients' plain updates for this round, collected afresh."""
    import ray

    plain = fed.model_copy(update={"secure_aggregation": False, "round_timeout_s": 60.0})
    answers, lost, _ = collect(groups, clients, ray.put(vector), vector.nbytes, round_index, plain)
    assert not lost and sorted(a["client"] for a in answers) == clients
    return np.sum([a["sent"].astype(np.float64) for a in answers], axis=0) / sum(a["weight"] for a in answers)


def test_a_round_closes_at_its_timeout_with_the_clients_that_answered(settled):
    cfg, groups, vector = settled
    fed = cfg.federated.model_copy(update={"round_timeout_s": 3.0, "min_clients": 2})
    disturb_federated_clients(straggler(groups).actor, delay_s=5.0, times=1)
    lines: list[str] = []
    result = run_round(groups, vector, 1, fed, CLIENTS, log=lines.append)
    assert straggler(groups).busy is not None, "the round closed while the straggler was still training"
    assert result.attempts == 1 and not lines
    assert sorted(a["client"] for a in result.answered) == [0, 1] and result.lost == AWAY
    assert result.chosen == CLIENTS
    wait_until_back(straggler(groups), 60)
    answered = mean_update(groups, [0, 1], vector, 1, fed)
    assert np.abs(result.average - answered).max() < 1e-6, "the average of the clients that answered"
    everyone = mean_update(groups, list(range(CLIENTS)), vector, 1, fed)
    assert np.abs(result.average - everyone).max() > 1e-4, "the straggler's update is not in it"


def test_a_round_with_fewer_than_min_clients_answering_is_tried_again(settled):
    cfg, groups, vector = settled
    fed = cfg.federated.model_copy(update={"round_timeout_s": 3.0, "min_clients": CLIENTS})
    # Late for the first try (3 s); back within the second try's wait for it (by 6 s).
    disturb_federated_clients(straggler(groups).actor, delay_s=4.5, times=1)
    lines: list[str] = []
    result = run_round(groups, vector, 2, fed, CLIENTS, log=lines.append)
    assert result.attempts == 2 and len(result.answered) == CLIENTS, lines
    assert lines == ["  round 3, try 1: 2 of 4 clients answered, fewer than min_clients 4; trying again"]
    assert np.abs(result.average - mean_update(groups, list(range(CLIENTS)), vector, 2, fed)).max() < 1e-6


@pytest.mark.timeout(120)  # a round that hangs fails here in 2 minutes
def test_a_round_that_never_gets_min_clients_fails_the_run_naming_the_settings(settled):
    cfg, groups, vector = settled
    fed = cfg.federated.model_copy(update={"round_timeout_s": 1.0, "min_clients": CLIENTS, "max_round_attempts": 3})
    disturb_federated_clients(straggler(groups).actor, delay_s=7.0, times=1)  # away for longer than 3 tries
    lines: list[str] = []
    with pytest.raises(FederatedError) as error:
        run_round(groups, vector, 3, fed, CLIENTS, log=lines.append)
    assert straggler(groups).busy is not None, "the run failed without waiting for the straggler"
    assert str(error.value) == (
        "federated round 4: no try of 3 had federated.min_clients 4 answers; raise federated.round_timeout_s or "
        "federated.max_round_attempts, or lower federated.min_clients"
    )
    assert [line.split(":")[0] for line in lines] == [f"  round 4, try {t}" for t in (1, 2, 3)]


def test_a_masked_round_that_loses_a_client_is_tried_again_without_it(settled):
    cfg, groups, vector = settled
    fed = cfg.federated.model_copy(update={"secure_aggregation": True, "min_clients": 2, "round_timeout_s": 30.0})
    disturb_federated_clients(straggler(groups).actor, fail=True, times=1)
    lines: list[str] = []
    result = run_round(groups, vector, 4, fed, CLIENTS, log=lines.append)
    assert result.attempts == 2 and sorted(a["client"] for a in result.answered) == [0, 1]
    assert len(lines) == 1 and lines[0].startswith("  round 5, try 1: client(s) [2, 3] did not answer a masked round")
    assert all(a["sent"].dtype == np.uint64 for a in result.answered), "the retry was masked too"
    # The retry's clients exchanged keys among themselves only, so their masks cancel in their sum.
    assert np.abs(result.average - mean_update(groups, [0, 1], vector, 4, fed)).max() < 1e-6


def test_without_clients_per_actor_the_clients_are_spread_over_one_actor_per_free_cpu_share(rounds):
    import ray

    cfg, _, vector, data = rounds
    free = ray.available_resources().get("CPU", 0.0)
    assert free >= 1.0, "the module's two actors hold 1 of the session's 4 CPUs"
    # Actors of half the free CPUs each: room for two of them.
    fed = cfg.federated.model_copy(update={"clients": 10, "clients_per_actor": None, "cpus_per_actor": free / 2})
    storage = cfg.storage.model_copy(update={"run_name": "auto-sized"})
    sized = cfg.model_copy(update={"federated": fed, "storage": storage})
    groups = start_groups(sized, data, make_clients(sized, data), None)
    try:
        assert [g.client_ids for g in groups] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
        result = run_round(groups, vector, 0, fed, 10, log=print)
        assert sorted(a["client"] for a in result.answered) == list(range(10)), "every client trained"
    finally:
        for group in groups:
            ray.kill(group.actor)


def test_a_partition_column_the_source_lacks_is_refused_before_any_round(ray_cluster, tmp_path):
    import ray

    cfg = digits_config(tmp_path, "no-site", federated={"partition_by": "hospital"})
    lines: list[str] = []
    with pytest.raises(ConfigError, match=r"federated\.partition_by 'hospital' is not a column of .*digits\.parquet"):
        train_and_register(cfg, log=lines.append)
    assert lines == [], "refused before the data was prepared"
    assert not (tmp_path / "store" / "runs").exists() and not (tmp_path / "store" / "prepared").exists()
    with pytest.raises(ValueError):
        ray.get_actor("rayline-federated-no-site-0")
