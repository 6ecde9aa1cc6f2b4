"""User-level differential privacy for federated averaging (DP-FedAvg, McMahan et al. 2018): each client's
update is clipped to clip_norm on the client, and the server adds Gaussian noise of standard deviation
noise_multiplier * clip_norm to the sum of a round's updates. Epsilon comes from Opacus's RDP accountant,
which analyses each round as the subsampled Gaussian mechanism with sampling rate clients_per_round / clients
(the uniform choice of a fixed number of clients taken as Poisson sampling at that rate, as DP-FedAvg
implementations do)."""

from __future__ import annotations

import numpy as np

from rayline.config import PrivacyConfig


def clipped(update: np.ndarray, clip_norm: float) -> tuple[np.ndarray, bool]:
    """The update scaled down to L2 norm clip_norm if above it; and whether it was."""
    norm = float(np.linalg.norm(update))
    if norm <= clip_norm:
        return update, False
    return update * (clip_norm / norm), True


def noised_sum(total: np.ndarray, dp: PrivacyConfig, rng: np.random.Generator) -> np.ndarray:
    """The round's sum of clipped updates with the Gaussian mechanism's noise added."""
    if dp.noise_multiplier == 0:
        return total
    return total + rng.normal(0.0, dp.noise_multiplier * dp.clip_norm, size=total.shape)


def epsilon_after(dp: PrivacyConfig, sample_rate: float, rounds: int) -> float:
    """The (epsilon, dp.delta) guarantee of `rounds` noisy rounds; inf without noise."""
    if dp.noise_multiplier == 0 or rounds == 0:
        return float("inf") if rounds else 0.0
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = [(dp.noise_multiplier, sample_rate, rounds)]
    return float(accountant.get_epsilon(delta=dp.delta))
