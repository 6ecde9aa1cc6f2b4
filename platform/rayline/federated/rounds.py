"""One federated round on the server: choose clients, send the global model through the object store once,
collect the answers that come back in time, aggregate them (unmasking and noising as configured), and step the
global model. A round without enough answers, or a masked round missing any, is tried again."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rayline.config import FederatedConfig
from rayline.errors import RaylineError
from rayline.federated import privacy, secure
from rayline.federated.partition import round_clients

PROBE_S = 1.0
"""How often a round that waits for actors to come back looks again."""


class FederatedError(RaylineError):
    """A federated run that cannot go on (a round without enough clients after every try)."""


@dataclass
class Group:
    """A ClientGroup actor and the clients it holds. `busy`: a straggler's task from an earlier round, or the
    readiness call of an actor Ray is restarting; its clients sit out until it is done. `start` makes a new actor
    for the same clients, for an actor that has used up its restarts."""

    actor: Any
    client_ids: list[int]
    start: Callable[[], Any]
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

    excluded: set[int] = set()  # secure aggregation: clients a masked try lost, left out of its retries
    chosen: list[int] = []
    moved = 0
    for attempt in range(fed.max_round_attempts):
        remaining = [c for c in chosen if c not in excluded]
        retry_same = attempt > 0 and fed.secure_aggregation and len(remaining) >= fed.min_clients
        chosen = remaining if retry_same else round_clients(fed, num_clients, round_index, attempt)
        reachable = wait_for_reachable(groups, chosen, fed)
        sitting_out = [c for c in chosen if c not in reachable]  # straggling, or their actor is restarting
        global_ref = ray.put(np.asarray(global_vector, dtype=np.float32))
        answered, lost, sent_bytes = collect(groups, reachable, global_ref, global_vector.nbytes, round_index, fed)
        moved += sent_bytes
        missing = sorted([*lost, *sitting_out])
        where = f"round {round_index + 1}, try {attempt + 1}"
        if missing and fed.secure_aggregation:
            excluded.update(missing)
            log(
                f"  {where}: client(s) {missing} did not answer a masked round; their masks would not cancel, so "
                "the round is tried again without them"
            )
            continue
        if len(answered) < fed.min_clients:
            log(
                f"  {where}: {len(answered)} of {len(chosen)} clients answered, fewer than min_clients "
                f"{fed.min_clients}; trying again"
            )
            continue
        return RoundResult(aggregate(answered, fed, round_index), answered, len(chosen), attempt + 1, moved, missing)
    raise FederatedError(
        f"federated round {round_index + 1}: no try of {fed.max_round_attempts} had federated.min_clients "
        f"{fed.min_clients} answers; raise federated.round_timeout_s or federated.max_round_attempts, or lower "
        "federated.min_clients"
    )


def wait_for_reachable(groups: list[Group], chosen: list[int], fed: FederatedConfig) -> list[int]:
    """The chosen clients whose actor can take the round now. When fewer than min_clients can, wait (at most
    round_timeout_s) for straggling or restarting actors to come back, rather than spend the round's tries."""
    import ray

    deadline = time.monotonic() + fed.round_timeout_s
    while True:
        free_stragglers(groups)
        reachable = [c for c in chosen if holder(groups, c).busy is None]
        waiting = {id(g.busy): g.busy for g in groups if g.busy is not None and set(g.client_ids) & set(chosen)}
        if len(reachable) >= fed.min_clients or not waiting or time.monotonic() >= deadline:
            return reachable
        # A restarting actor's probe fails at once; probe again after a moment.
        ray.wait(list(waiting.values()), num_returns=1, timeout=min(PROBE_S, max(0.0, deadline - time.monotonic())))
        time.sleep(PROBE_S / 4)


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
        except ray.exceptions.RayActorError as error:  # the actor died mid-round
            recover(calls[ref][0], error)
            lost += calls[ref][1]
            continue
        except ray.exceptions.RayTaskError:
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

    asked = list(asked)
    calls = {g.actor.public_keys.remote(ids): ids for g, ids in asked}
    group_of = {ref: g for ref, (g, _) in zip(calls, asked, strict=True)}
    ready, pending = ray.wait(list(calls), num_returns=len(calls), timeout=max(0.0, deadline - time.monotonic()))
    publics: dict[int, bytes] = {}
    lost = [c for ref in pending for c in calls[ref]]
    for ref in ready:
        try:
            publics.update(ray.get(ref))
        except ray.exceptions.RayActorError as error:
            recover(group_of[ref], error)
            lost += calls[ref]
        except ray.exceptions.RayTaskError:
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


def recover(group: Group, error: Exception) -> None:
    """A group whose actor failed sits out until it answers again: Ray restarts it (probed each round), or, gone
    for good (its restarts used up), its clients get a new actor."""
    import ray

    if isinstance(error, ray.exceptions.ActorUnavailableError):  # restarting
        group.busy = group.actor.ready.remote()
    else:
        group.actor = group.start()
        group.busy = group.actor.ready.remote()  # waits for the new actor to be created


def wait_until_back(group: Group, timeout_s: float) -> None:
    """Wait (at most timeout_s) for a straggling, restarting or replaced actor to be ready again."""
    deadline = time.monotonic() + timeout_s
    while group.busy is not None and time.monotonic() < deadline:
        free_stragglers([group])
        if group.busy is not None:
            time.sleep(PROBE_S / 4)


def free_stragglers(groups: list[Group]) -> None:
    """Groups whose straggling task, restart or replacement has finished take part again."""
    import ray

    for group in groups:
        if group.busy is None or not ray.wait([group.busy], timeout=0)[0]:
            continue
        try:
            ray.get(group.busy)
        except ray.exceptions.RayActorError as error:
            recover(group, error)
            continue
        except ray.exceptions.RayTaskError:
            pass
        group.busy = None
