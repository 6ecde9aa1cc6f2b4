"""A training worker's side of strategy parameter_server: `ServerOptimizer` stands where the loop's torch optimizer
stands, and steps by pushing this worker's gradients to the shards and pulling their parameters back.

Rank 0 starts the shards (it owns them, so they end with the worker group; a restarted group starts new ones from
the last checkpoint) and names them with a token it broadcasts; the other ranks look them up by name. Every remote
call is waited on for at most train.parameter_server.timeout_s: a lost shard or worker fails the worker group,
which Ray Train restarts under train.max_failures, rather than hanging it.
"""

from __future__ import annotations

import time
import uuid
import warnings
from collections import Counter
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from rayline.config import TrainConfig
from rayline.train.param_server import Layout, Stats, split_by_size, start_shard
from rayline.train.shared_batches import UnitCounter

NAMESPACE = "rayline-parameter-server"
LOOKUP_INTERVAL_S = 0.1


class ServerOptimizer:
    """What the loop uses of a torch optimizer (param_groups' lr, step, zero_grad, state, state_dict,
    load_state_dict), backed by the parameter-server shards."""

    def __init__(self, model: nn.Module, train: TrainConfig, *, rank: int, world: int):
        self.model, self.rank, self.world = model, rank, world
        self.server, self.optimizer_cfg = train.server, train.optimizer
        self.params = dict(model.named_parameters())
        self.split = split_by_size({n: p.numel() for n, p in self.params.items()}, self.server.shards)
        self.layouts = [Layout.of({n: self.params[n] for n in part}) for part in self.split]
        self.stored = [i for i, layout in enumerate(self.layouts) if not layout.inline]
        """The shards too large for inline pieces: their parameters come back as one object-store reference."""
        self.param_groups = [{"lr": train.optimizer.lr}]
        self.state: dict = {}  # the optimizer state lives on the shards
        self.restored: list[dict[str, Any]] | None = None
        self.shards: list[Any] = []
        self.pushes: list[Any] = []
        self.pulls: list[Any] = []
        self.versions: list[int] = []
        self.counter: Any = None
        """Under async and bounded with several workers: the UnitCounter their training batches are claimed from."""

    @property
    def shares_work(self) -> bool:
        """Whether workers take the epoch's training rows as they are ready (shared_batches.py) rather than an equal
        range each: when no worker waits for another's gradients (not sync) and there is another to share with."""
        return self.server.mode != "sync" and self.world > 1

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Keep a checkpoint's shard states for `connect` (the parameters come from the model, loaded already)."""
        saved = state["parameter_server"]
        if saved["split"] != self.split:
            raise ValueError(
                "the checkpoint's parameter-server shards split the parameters differently; resume with the same "
                "train.parameter_server.shards and model"
            )
        self.restored = saved["shards"]

    def connect(self) -> None:
        """Start (rank 0) or find the shards, then pull their parameters; every rank calls it (a collective)."""
        import ray

        token = [uuid.uuid4().hex if self.rank == 0 else None]
        names = [f"shard-{token[0]}-{i}" for i in range(len(self.split))]
        if self.rank == 0 and self.shares_work:
            self.counter = start_counter(f"units-{token[0]}")
        if self.rank == 0:
            with torch.no_grad():
                self.shards = [
                    start_shard(
                        name,
                        NAMESPACE,
                        {n: self.params[n].detach().cpu().numpy() for n in part},
                        self.optimizer_cfg,
                        self.server,
                        self.world,
                        None if self.restored is None else self.restored[i],
                    )
                    for i, (name, part) in enumerate(zip(names, self.split, strict=True))
                ]
        if self.world > 1:
            dist.broadcast_object_list(token, src=0)
        if self.rank != 0:
            names = [f"shard-{token[0]}-{i}" for i in range(len(self.split))]
            self.shards = [self._look_up(ray, name) for name in names]
            if self.shares_work:
                self.counter = self._look_up(ray, f"units-{token[0]}")
        self._bind_calls()
        self.pull()

    def claim(self, key: int, units: int) -> int | None:
        """The next unclaimed unit of the epoch keyed `key` (shared_batches.SharedReader's claim)."""
        return self._get(self.counter.claim.remote(key, units))

    def _look_up(self, ray, name: str):
        deadline = time.monotonic() + self.server.timeout_s
        while True:
            try:
                return ray.get_actor(name, namespace=NAMESPACE)
            except ValueError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"parameter server: shard {name} did not appear in time") from None
                time.sleep(LOOKUP_INTERVAL_S)

    def _get(self, refs):
        import ray

        return ray.get(refs, timeout=self.server.timeout_s)

    def pull(self) -> None:
        """Copy every shard's latest parameters into the model."""
        self._load(self._answers([pull.remote() for pull in self.pulls]))

    def step(self) -> None:
        """Push this worker's gradients, tagged with the versions they were computed at; each shard answers with
        its latest parameters, which the model takes (a refused gradient's worker too: it goes on from them)."""
        lr = float(self.param_groups[0]["lr"])
        pushes = []
        for push, layout, version in zip(self.pushes, self.layouts, self.versions, strict=True):
            flat = layout.pack({n: gradient(self.params[n]) for n in layout.names})
            pushes.append(push.remote(self.rank, version, lr, *layout.split(flat)))
        self._load([answer[1:] for answer in self._answers(pushes)])

    def _bind_calls(self) -> None:
        """Each shard's push and pull, bound once to return their leading values and then the layout's parts, each
        a return value of its own, so that each small one comes back inline."""
        self.pushes = [
            s.push.options(num_returns=2 + lay.parts) for s, lay in zip(self.shards, self.layouts, strict=True)
        ]
        self.pulls = [
            s.pull.options(num_returns=1 + lay.parts) for s, lay in zip(self.shards, self.layouts, strict=True)
        ]

    def _answers(self, calls: list[list]) -> list[list[Any]]:
        """Every call's return values, waited on together."""
        values = iter(self._get([ref for refs in calls for ref in refs]))
        return [[next(values) for _ in refs] for refs in calls]

    def _load(self, published: list[list[Any]]) -> None:
        """Take each shard's (version, *parts): inline pieces of its parameters, or a reference to their stored copy."""
        self.versions = [version for version, *_ in published]
        fetched = dict(zip(self.stored, self._get([published[i][1] for i in self.stored]), strict=True))
        with torch.no_grad(), warnings.catch_warnings():
            # What a call or the object store hands back is read-only; it is only copied from here.
            warnings.filterwarnings("ignore", "The given NumPy array is not writable")
            for i, ((_, *parts), layout) in enumerate(zip(published, self.layouts, strict=True)):
                flat = fetched[i] if i in fetched else Layout.join(parts)
                for name, values in layout.unpack(flat).items():
                    self.params[name].copy_(torch.from_numpy(values))

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.model.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        """The shards' optimizer states, versions and counters (rank 0 writes them beside model.pt)."""
        states = self._get([shard.state.remote() for shard in self.shards])
        return {"parameter_server": {"split": self.split, "shards": [state for _, state in states]}}

    def epoch_metrics(self) -> dict[str, Any]:
        """The run's staleness so far (every shard's applied updates, summed over shards) for the epoch's report."""
        stats = [Stats.from_dict(s) for s in self._get([shard.stats.remote() for shard in self.shards])]
        staleness = sum((s.staleness for s in stats), Counter())
        applied = sum(staleness.values())
        most = max(staleness, default=0)
        return {
            "ps_version": float(max(self.versions, default=0)),
            "ps_applied": float(applied),
            "ps_refused": float(sum(s.refused for s in stats)),
            "ps_staleness_mean": sum(k * v for k, v in staleness.items()) / applied if applied else 0.0,
            "ps_staleness_max": float(most),
            "ps_staleness_counts": [int(staleness.get(k, 0)) for k in range(most + 1)],
            # Every push reaches every shard: any one shard's count is the worker's.
            "ps_pushes_by_worker": [int(stats[0].pushes.get(rank, 0)) for rank in range(self.world)],
        }


def start_counter(name: str) -> Any:
    """A UnitCounter actor owned by the calling rank (it ends with the worker group, like the shards)."""
    import ray

    actor = ray.remote(num_cpus=0, max_restarts=0)(UnitCounter)
    return actor.options(name=name, namespace=NAMESPACE).remote()


def gradient(p: nn.Parameter) -> np.ndarray:
    """A parameter's gradient as float32 numpy (zeros where this batch did not reach it)."""
    if p.grad is None:
        return np.zeros(tuple(p.shape), dtype=np.float32)
    return p.grad.detach().to(torch.float32).cpu().numpy()
