"""One federated round on the server: choose clients, send the global model through the object store once,
collect the answers that come back in time, aggregate them (unmasking and noising as configured), and step the
global model. A round without enough answers, or a masked round missing any, is tried again."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rayline.config import FederatedConfig
from rayline.errors import RaylineError
from rayline.federated import privacy, secure
from rayline.federated.partition import round_clients


class FederatedError(RaylineError):
    """A federated run that cannot go on (a round without enough clients after every try)."""


@dataclass
class Group:
    """A ClientGroup actor and the clients it holds; `busy` is a straggler's task from an earlier round."""

    actor: Any
    client_ids: list[int]
    busy: Any = None


@dataclass
class RoundResult:
    average: np.ndarray
    """The weighted mean update (noised under dp)."""
    answered: list[dict[str, Any]]
    chosen: int
    attempts: int
    bytes_moved: int
    lost: list[int] = field(default_factory=list)


def run_round(
    groups: list[Group], global_vector: np.ndarray, round_index: int, fed: FederatedConfig, num_clients: int, log
) -> RoundResult:
    import ray

    excluded: set[int] = set()
    chosen: list[int] = []
    moved = 0
    for attempt in range(fed.max_round_attempts):
        free_stragglers(groups)
        retry_same = attempt > 0 and fed.secure_aggregation and len(chosen) - len(excluded) >= fed.min_clients
        pool = chosen if retry_same else round_clients(fed, num_clients, round_index, attempt)
        chosen = [c for c in pool if c not in excluded and not holder(groups, c).busy]
        started = time.monotonic()
        global_ref = ray.put(np.asarray(global_vector, dtype=np.float32))
        answered, lost, sent_bytes = collect(groups, chosen, global_ref, global_vector.nbytes, round_index, fed)
        moved += sent_bytes
        excluded.update(lost)
        where = f"round {round_index + 1}, try {attempt + 1}"
        if lost and fed.secure_aggregation:
            log(
                f"  {where}: client(s) {lost} did not answer a masked round; their masks would not cancel, so the "
                "round is tried again without them"
            )
            continue
        if len(answered) < fed.min_clients:
            log(
                f"  {where}: {len(answered)} of {len(chosen)} clients answered, fewer than min_clients "
                f"{fed.min_clients}; trying again"
            )
            continue
        average = aggregate(answered, fed, round_index)
        result = RoundResult(average, answered, len(chosen), attempt + 1, moved, sorted(lost))
        if time.monotonic() - started > fed.round_timeout_s:
            log(f"  {where}: closed at round_timeout_s with {len(answered)} clients")
        return result
    raise FederatedError(
        f"federated round {round_index + 1}: no try of {fed.max_round_attempts} had min_clients {fed.min_clients} "
        f"answers (clients lost: {sorted(excluded)}); raise federated.round_timeout_s or lower min_clients"
    )


def collect(
    groups: list[Group], chosen: list[int], global_ref, global_bytes: int, round_index: int, fed: FederatedConfig
) -> tuple[list[dict[str, Any]], list[int], int]:
    """Send the round to the groups holding the chosen clients; (answers, clients lost, bytes moved)."""
    import ray

    deadline = time.monotonic() + fed.round_timeout_s
    asked = {id(g): (g, [c for c in g.client_ids if c in chosen]) for g in groups}
    asked = {k: (g, ids) for k, (g, ids) in asked.items() if ids}
    lost: list[int] = []
    publics = None
    moved = 0
    if fed.secure_aggregation:
        publics, lost = gather_keys(asked.values(), deadline)
        asked = {k: (g, ids) for k, (g, ids) in asked.items() if not set(ids) & set(lost)}
        moved += 32 * len(publics) * (len(asked) + 1)
    calls = {g.actor.train.remote(global_ref, round_index, ids, publics): (g, ids) for g, ids in asked.values()}
    moved += global_bytes * len(calls)
    ready, pending = ray.wait(list(calls), num_returns=len(calls), timeout=max(0.0, deadline - time.monotonic()))
    answered = []
    for ref in ready:
        try:
            answers = ray.get(ref)
        except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError):  # a client actor died mid-round
            lost += calls[ref][1]
            continue
        answered += answers
        moved += sum(a["sent"].nbytes for a in answers)
    for ref in pending:  # stragglers: their actor sits out until it has finished
        group, ids = calls[ref]
        group.busy = ref
        lost += ids
    return answered, lost, moved


def gather_keys(asked, deadline: float) -> tuple[dict[int, bytes], list[int]]:
    import ray

    calls = {g.actor.public_keys.remote(ids): ids for g, ids in asked}
    ready, pending = ray.wait(list(calls), num_returns=len(calls), timeout=max(0.0, deadline - time.monotonic()))
    publics: dict[int, bytes] = {}
    lost = [c for ref in pending for c in calls[ref]]
    for ref in ready:
        try:
            publics.update(ray.get(ref))
        except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError):
            lost += calls[ref]
    return publics, lost


def aggregate(answered: list[dict[str, Any]], fed: FederatedConfig, round_index: int) -> np.ndarray:
    """The weighted mean of the round's updates: from the masked sum under secure aggregation (the server
    never sees one client's update), with the Gaussian mechanism's noise on the sum under dp."""
    sent = [a["sent"] for a in answered]
    total = secure.unmasked_sum(sent) if fed.secure_aggregation else np.stack(sent).astype(np.float64).sum(axis=0)
    if fed.dp is not None:
        total = privacy.noised_sum(total, fed.dp, np.random.default_rng([fed.seed, round_index, 7]))
    return (total / sum(a["weight"] for a in answered)).astype(np.float32)


def server_step(
    global_vector: np.ndarray, average: np.ndarray, momentum: np.ndarray | None, fed: FederatedConfig
) -> tuple[np.ndarray, np.ndarray | None]:
    """FedAvg / FedProx: w + server_lr * mean update; FedAvgM: the update through server momentum."""
    if fed.algorithm == "fedavgm":
        momentum = average if momentum is None else fed.server_momentum * momentum + average
        return global_vector + fed.server_lr * momentum, momentum
    return global_vector + fed.server_lr * average, momentum


def holder(groups: list[Group], client: int) -> Group:
    return next(g for g in groups if client in g.client_ids)


def free_stragglers(groups: list[Group]) -> None:
    import ray

    for group in groups:
        if group.busy is not None and ray.wait([group.busy], timeout=0)[0]:
            group.busy = None
