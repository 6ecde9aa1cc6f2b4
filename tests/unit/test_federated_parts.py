"""Federated learning's parts that need no cluster: the settings refused with the field named, partitions,
round choice, pairwise masks, clipping and the privacy accountant."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from pipelines import digits_config
from rayline.config import ConfigError, FederatedConfig, PrivacyConfig
from rayline.federated import secure
from rayline.federated.partition import (
    column_clients,
    dirichlet_shares,
    round_clients,
    simulated_clients,
)
from rayline.federated.privacy import clipped, epsilon_after


def test_settings_that_cannot_work_are_refused_naming_the_field(tmp_path):
    with pytest.raises(ValidationError, match="give one of partition_by"):
        FederatedConfig()
    with pytest.raises(ValidationError, match="give one of partition_by"):
        FederatedConfig(partition_by="site", clients=4)
    with pytest.raises(ValidationError, match="give one of partition_by"):
        FederatedConfig(client_files=True, clients=4)
    with pytest.raises(ValidationError, match="min_clients 5 is more than the 4 clients"):
        FederatedConfig(clients=4, min_clients=5)
    with pytest.raises(ValidationError, match=r"min_clients 3 is more than the 2 clients chosen per round"):
        FederatedConfig(clients=10, clients_per_round=0.2, min_clients=3)
    with pytest.raises(ConfigError, match=r"federated\.alpha: Input should be greater than 0"):
        digits_config(tmp_path, federated={"clients": 4, "partition": "dirichlet", "alpha": 0})
    with pytest.raises(ConfigError, match=r"federated\.dp\.clip_norm: required field is missing"):
        digits_config(tmp_path, federated={"clients": 4, "dp": {"noise_multiplier": 1.0}})
    with pytest.raises(ValidationError, match="use it with clients: N"):
        FederatedConfig(partition_by="site", partition="dirichlet")
    with pytest.raises(ConfigError, match="federated: and tune: cannot be combined"):
        digits_config(tmp_path, federated={"clients": 4}, tune={"search_space": str(tmp_path / "s.yaml")})
    with pytest.raises(ConfigError, match=r"drop train\.strategy \(fsdp\)"):
        digits_config(tmp_path, federated={"clients": 4}, train={"strategy": "fsdp"})
    with pytest.raises(ConfigError, match="partition_by 'label' is the label"):
        digits_config(tmp_path, federated={"partition_by": "label"})


def test_iid_clients_share_every_row_once_and_hold_some_out():
    clients = simulated_clients(FederatedConfig(clients=5, holdout=0.2), None, 103)
    rows = np.concatenate([np.concatenate([c.train_rows, c.holdout_rows]) for c in clients])
    assert sorted(rows.tolist()) == list(range(103)), "every training row belongs to exactly one client"
    assert all(len(c.holdout_rows) == round(0.2 * (c.num_samples + len(c.holdout_rows))) for c in clients)
    again = simulated_clients(FederatedConfig(clients=5, holdout=0.2), None, 103)
    assert all((a.train_rows == b.train_rows).all() for a, b in zip(clients, again, strict=True)), "seeded"


def test_a_small_dirichlet_alpha_skews_labels_and_a_large_one_does_not():
    labels = np.repeat(np.arange(10), 100)

    def label_share(alpha: float) -> float:
        """The mean share of each client's rows that are of its most common label."""
        shares = dirichlet_shares(labels, 10, alpha, np.random.default_rng(0))
        return float(np.mean([np.bincount(labels[s], minlength=10).max() / len(s) for s in shares]))

    assert label_share(0.1) > 0.6 > 0.2 > label_share(100.0)


def test_a_dirichlet_partition_that_leaves_a_client_without_rows_is_refused_naming_it():
    with pytest.raises(ConfigError, match=r"federated\.alpha 0\.001: .* client-\d+ got \d"):
        simulated_clients(FederatedConfig(clients=50, partition="dirichlet", alpha=0.001), np.arange(120) % 3, 120)
    with pytest.raises(ConfigError, match="regression has none"):
        simulated_clients(FederatedConfig(clients=2, partition="dirichlet"), None, 100)


def test_a_partition_column_needs_two_values():
    cfg = FederatedConfig(partition_by="site")
    clients = column_clients(cfg, np.array(["b", "a", "b", "b", "a"]))
    assert [c.name for c in clients] == ["a", "b"]
    assert [c.num_samples + len(c.holdout_rows) for c in clients] == [2, 3]
    with pytest.raises(ConfigError, match=r"partition_by 'site': .* 1 distinct value\(s\) \(\['x'\]\)"):
        column_clients(cfg, np.array(["x", "x"]))


def test_each_round_chooses_the_same_clients_run_after_run():
    cfg = FederatedConfig(clients=20, clients_per_round=0.25, seed=3)
    first = [round_clients(cfg, 20, r, 0) for r in range(5)]
    assert first == [round_clients(cfg, 20, r, 0) for r in range(5)]
    assert all(len(chosen) == 5 for chosen in first) and len({tuple(c) for c in first}) > 1
    assert round_clients(cfg, 20, 0, 1) != first[0], "a retry chooses again"
    assert round_clients(FederatedConfig(clients=20, clients_per_round=7), 20, 0, 0).__len__() == 7


def test_pairwise_masks_hide_each_update_and_cancel_in_the_sum():
    rng = np.random.default_rng(0)
    updates = [rng.normal(size=1000) for _ in range(4)]
    keys = [secure.new_key() for _ in updates]
    publics = {i: public for i, (_, public) in enumerate(keys)}
    sent = [secure.masked(u, i, keys[i][0], publics, b"round-0") for i, u in enumerate(updates)]
    for update, vector in zip(updates, sent, strict=True):
        seen = secure.decode(vector)
        assert np.abs(seen - update).min() > 1.0, "no coordinate of a masked update is its true value"
    total = secure.unmasked_sum(sent)
    assert np.abs(total - np.sum(updates, axis=0)).max() < 4 / secure.SCALE
    assert np.abs(secure.unmasked_sum(sent[:3]) - np.sum(updates[:3], axis=0)).min() > 1.0, "3 of 4: no sum"


def test_clipping_bounds_the_norm_and_leaves_small_updates_alone():
    big, was = clipped(np.full(4, 10.0), 1.0)
    assert was and np.linalg.norm(big) == pytest.approx(1.0)
    small, was = clipped(np.full(4, 0.1), 1.0)
    assert not was and (small == 0.1).all()


def test_epsilon_is_the_rdp_accountants_for_the_rounds_run():
    from opacus.accountants import RDPAccountant

    dp = PrivacyConfig(clip_norm=1.0, noise_multiplier=1.1, delta=1e-5)
    accountant = RDPAccountant()
    for _ in range(30):
        accountant.step(noise_multiplier=1.1, sample_rate=0.1)
    assert epsilon_after(dp, 0.1, 30) == pytest.approx(accountant.get_epsilon(delta=1e-5))
    assert epsilon_after(dp, 0.1, 10) < epsilon_after(dp, 0.1, 30), "the budget grows with every round"
    assert epsilon_after(PrivacyConfig(clip_norm=1.0, noise_multiplier=0), 0.1, 3) == float("inf")
