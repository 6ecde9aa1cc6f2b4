"""Parameter-server shards: each holds a slice of the model's parameters and their optimizer state, and steps them
with the gradients workers push.

`ShardCore` is the bookkeeping (versions, staleness, the sync barrier's sums) without Ray; `ServerShard` is the
Ray actor around it: a threaded actor, so pulls are answered while a gradient is applied, and a sync push can wait
for the other workers' gradients of its version.

Versions: a shard's version counts the updates it applied. A gradient computed from parameters pulled at version
v and arriving at version s has staleness s - v. Under sync every gradient is of the current version (staleness 0);
under async every gradient is applied, whatever its staleness; under bounded one staler than max_staleness is
refused (dropped, counted under `refused`) rather than down-weighted: its worker pulls fresh parameters and goes
on with its next batch, so no update is ever applied from parameters more than max_staleness versions old.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import torch
from torch import nn

from rayline.config import OptimizerConfig, ParameterServerConfig
from rayline.train.optim import make_optimizer

Arrays = dict[str, np.ndarray]
INLINE_BYTES = 100 * 1024
"""Ray's max_direct_call_object_size: an argument or return value this small travels inside the call itself, with
no object-store put (about 1 ms each) nor a lookup at its owner when it is read."""
CHUNK_BYTES = INLINE_BYTES - 4 * 1024
"""A piece of a shard's flat parameters or gradient: under INLINE_BYTES with room for its serialization header."""
INLINE_SHARD_BYTES = 4 * 2**20
"""Up to this size a shard's gradients and parameters travel as inline pieces (Ray inlines at most 10 MiB of one
call's arguments); a larger shard's travel through the object store, each version put there once."""


def split_by_size(sizes: dict[str, int], shards: int) -> list[list[str]]:
    """Parameter names per shard: largest first, each to the shard holding the fewest elements so far (ties to the
    lower shard), then each shard's names in model order. Deterministic, so every process computes the same split."""
    order = {name: i for i, name in enumerate(sizes)}
    loads = [0] * shards
    names: list[list[str]] = [[] for _ in range(shards)]
    for name in sorted(sizes, key=lambda n: (-sizes[n], order[n])):
        target = min(range(shards), key=lambda s: (loads[s], s))
        loads[target] += sizes[name]
        names[target].append(name)
    return [sorted(part, key=order.__getitem__) for part in names]


@dataclass(frozen=True)
class Layout:
    """How one shard's parameters (or their gradients) are laid end to end in one float32 vector, and cut into the
    parts a call carries: CHUNK_BYTES pieces each sent inline when the shard is small enough (INLINE_SHARD_BYTES),
    else the whole vector as one part. The worker and its shard build it alike, from the same names and shapes.
    Its sizes are computed once (read on every step); frozen, so they cannot go stale."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, arrays: dict[str, Any]) -> Layout:
        return cls(tuple(arrays), tuple(tuple(a.shape) for a in arrays.values()))

    @cached_property
    def size(self) -> int:
        return sum(int(np.prod(shape)) for shape in self.shapes)

    @cached_property
    def inline(self) -> bool:
        return self.size * 4 <= INLINE_SHARD_BYTES

    @cached_property
    def parts(self) -> int:
        """How many parts `split` cuts a vector into."""
        return max(1, -(-self.size * 4 // CHUNK_BYTES)) if self.inline else 1

    def pack(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        return np.concatenate([np.asarray(arrays[n], dtype=np.float32).reshape(-1) for n in self.names])

    def unpack(self, flat: np.ndarray) -> Arrays:
        out, offset = {}, 0
        for name, shape in zip(self.names, self.shapes, strict=True):
            size = int(np.prod(shape))
            out[name] = flat[offset : offset + size].reshape(shape)
            offset += size
        return out

    def split(self, flat: np.ndarray) -> list[np.ndarray]:
        step = CHUNK_BYTES // 4
        return [flat[i : i + step] for i in range(0, len(flat), step)] if self.parts > 1 else [flat]

    @staticmethod
    def join(parts: list[np.ndarray]) -> np.ndarray:
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


@dataclass
class Stats:
    """What a shard counted over the run: staleness of every applied gradient, gradients refused, and gradients
    pushed by each worker (applied or not: how much of the work each worker did)."""

    staleness: Counter = field(default_factory=Counter)
    refused: int = 0
    updates: int = 0
    pushes: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        staleness = {int(k): int(v) for k, v in self.staleness.items()}
        pushes = {int(k): int(v) for k, v in self.pushes.items()}
        return {"staleness": staleness, "refused": self.refused, "updates": self.updates, "pushes": pushes}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Stats:
        if not d:
            return cls()
        return cls(
            Counter({int(k): int(v) for k, v in d["staleness"].items()}),
            int(d["refused"]),
            int(d["updates"]),
            Counter({int(k): int(v) for k, v in d.get("pushes", {}).items()}),  # absent from older checkpoints
        )


class ShardCore:
    """One shard's parameters, optimizer and counters; not thread-safe (ServerShard holds a lock around it)."""

    def __init__(
        self,
        params: Arrays,
        optimizer: OptimizerConfig,
        server: ParameterServerConfig,
        workers: int,
        state: dict[str, Any] | None = None,
    ):
        """`state`: what `state_dict` returned, to continue from a checkpoint (its parameters are `params`)."""
        self.names = list(params)
        # Copies: arrays from the object store are read-only.
        self.params = {n: nn.Parameter(torch.from_numpy(np.array(a, dtype=np.float32))) for n, a in params.items()}
        self.optimizer = make_optimizer(optimizer, list(self.params.values()))
        self.server, self.workers = server, workers
        self.version = 0 if state is None else int(state["version"])
        self.stats = Stats.from_dict(None if state is None else state["stats"])
        if state is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        self.pending: dict[int, Arrays] = {}
        """Sync: the gradients of the current version received so far, by worker."""

    def staleness(self, version: int) -> int:
        return self.version - version

    def receive(self, worker: int, version: int, grads: Arrays, lr: float) -> str:
        """Take one worker's gradient; 'applied', 'refused', or (sync) 'waiting' for the version's other workers."""
        self.stats.pushes[worker] += 1
        if self.server.mode == "sync":
            return self._receive_sync(worker, version, grads, lr)
        stale = self.staleness(version)
        if self.server.mode == "bounded" and stale > self.server.max_staleness:
            self.stats.refused += 1
            return "refused"
        self._step(grads, lr)
        self.stats.staleness[stale] += 1
        return "applied"

    def _receive_sync(self, worker: int, version: int, grads: Arrays, lr: float) -> str:
        assert version == self.version, f"sync: worker {worker} pushed version {version} at {self.version}"
        assert worker not in self.pending, f"sync: worker {worker} pushed version {version} twice"
        self.pending[worker] = grads
        if len(self.pending) < self.workers:
            return "waiting"
        # Summed in worker order: the same float result whichever worker's push arrived last.
        mean = {n: sum(self.pending[w][n] for w in sorted(self.pending)) / self.workers for n in self.names}
        self.pending.clear()
        self._step(mean, lr)
        self.stats.staleness[0] += self.workers
        return "applied"

    def _step(self, grads: Arrays, lr: float) -> None:
        for name, p in self.params.items():
            p.grad = torch.from_numpy(np.asarray(grads[name], dtype=np.float32)).reshape(p.shape)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.version += 1
        self.stats.updates += 1

    def arrays(self) -> Arrays:
        return {n: p.detach().numpy().copy() for n, p in self.params.items()}

    def state_dict(self) -> dict[str, Any]:
        """Everything but the parameters (they go into model.pt): optimizer state, version and counters."""
        return {"version": self.version, "optimizer": self.optimizer.state_dict(), "stats": self.stats.to_dict()}


class ServerShard:
    """A Ray actor around a ShardCore (see `start_shard`). Gradients arrive, and parameters leave, as the parts of
    the shard's Layout: inline pieces of at most CHUNK_BYTES when the shard is small enough (so a step touches no
    object store), else one object-store copy per version, whose reference every reply and pull hands out, so no
    pull copies or pickles them."""

    def __init__(self, params: Arrays, optimizer: OptimizerConfig, server: ParameterServerConfig, workers: int, state):
        torch.set_num_threads(1)
        self.core = ShardCore(params, optimizer, server, workers, state)
        self.layout = Layout.of(params)
        self.changed = threading.Condition()
        self.timeout_s = server.timeout_s
        self.latest: tuple[Any, ...] = ()
        """(version, *parts): the latest parameters as inline pieces, or the reference to their one stored copy."""
        self._snapshot()

    def _snapshot(self) -> None:
        """After every applied update (the lock held): what replies and pulls hand out from now on."""
        import ray

        flat = self.layout.pack({n: p.detach().numpy() for n, p in self.core.params.items()})  # pack copies
        parts = self.layout.split(flat) if self.layout.inline else [ray.put(flat)]
        self.latest = (self.core.version, *parts)

    def pull(self) -> tuple[Any, ...]:
        """(version, *parts) of the latest parameters; never waits for a gradient being applied."""
        return self.latest

    def push(self, worker: int, version: int, lr: float, *gradient: np.ndarray) -> tuple[Any, ...]:
        """Apply (or refuse) one worker's gradient, given as the Layout's parts; returns the outcome, the latest
        version and its parameters' parts, so a step costs one call per shard. A sync push returns once its version
        is applied."""
        grads = self.layout.unpack(self.layout.join(list(gradient)))
        with self.changed:
            outcome = self.core.receive(worker, version, grads, lr)
            if outcome == "applied":
                self._snapshot()
                self.changed.notify_all()
            elif outcome == "waiting" and not self.changed.wait_for(
                lambda: self.core.version > version, timeout=self.timeout_s
            ):
                raise TimeoutError(
                    f"parameter server: waited {self.timeout_s:g} s for the other workers' gradients of version "
                    f"{version} (train.parameter_server.timeout_s)"
                )
            return ("refused" if outcome == "refused" else "applied"), *self.latest

    def state(self) -> tuple[Arrays, dict[str, Any]]:
        """Parameters and the rest of the state, for a checkpoint."""
        with self.changed:
            return self.core.arrays(), self.core.state_dict()

    def stats(self) -> dict[str, Any]:
        with self.changed:
            return {**self.core.stats.to_dict(), "version": self.core.version}


def start_shard(
    name: str,
    namespace: str,
    params: Arrays,
    optimizer: OptimizerConfig,
    server: ParameterServerConfig,
    workers: int,
    state: dict[str, Any] | None,
) -> Any:
    """A ServerShard actor named `name`, owned by the calling process, so it dies with it: a lost worker group
    takes its shards along, and the restarted group starts new ones from the last checkpoint. It reserves no CPU
    (its work is an optimizer step per push); its threads let every worker's push wait at a sync barrier while pulls
    and checkpoints are still answered."""
    import ray

    actor = ray.remote(num_cpus=0, max_concurrency=2 * workers + 4, max_restarts=0)(ServerShard)
    return actor.options(name=name, namespace=namespace).remote(params, optimizer, server, workers, state)
