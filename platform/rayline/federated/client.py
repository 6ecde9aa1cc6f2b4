"""Clients on Ray actors: each `ClientGroup` actor holds several clients' rows (read by it alone, from the
prepared training split) and trains them one after another on the global model it is sent each round."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from rayline.config import PipelineConfig
from rayline.data.prepared import SplitFiles
from rayline.data.preprocess import Preprocessor
from rayline.federated import privacy, secure
from rayline.federated.state import initial_model, load_vector, to_vector
from rayline.train.evaluate import SplitSums
from rayline.train.optim import make_optimizer
from rayline.train.step import make_loss_fn


def rows_at(split: SplitFiles, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows at these positions (sorted) of a prepared split, reading only the row groups that hold them."""
    files = split.open()
    sizes = [n for groups in split.row_groups for n in groups]
    starts = np.concatenate([[0], np.cumsum(sizes)])
    where = [(f, g) for f, groups in enumerate(split.row_groups) for g in range(len(groups))]
    xs, ys = [], []
    group_of = np.searchsorted(starts, positions, side="right") - 1
    for index in np.unique(group_of):
        x, y = files.read(*where[index])
        local = positions[group_of == index] - starts[index]
        xs.append(x[local])
        ys.append(y[local])
    if not xs:
        return np.zeros((0, split.num_inputs), dtype=np.float32), np.zeros(0)
    return np.concatenate(xs), np.concatenate(ys)


class ClientGroup:
    """Several clients' data and one model to train them with (a Ray actor: see `start_groups`)."""

    def __init__(
        self,
        config: dict[str, Any],
        preprocessor: dict[str, Any],
        train_split: dict[str, Any],
        clients: dict[int, dict[str, np.ndarray]],
        class_weights: list[float] | None,
        threads: int,
    ):
        torch.set_num_threads(threads)
        self.cfg = PipelineConfig.model_validate(config)
        self.preprocessor = Preprocessor.from_dict(preprocessor)
        self.model = initial_model(self.cfg, self.preprocessor)
        self.classification = self.preprocessor.task == "classification"
        weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        self.loss_fn = make_loss_fn(self.classification, weights)
        split = SplitFiles.from_dict(train_split)
        self.data = {cid: self._tensors(*rows_at(split, rows["train"])) for cid, rows in clients.items()}
        self.holdout = {cid: self._tensors(*rows_at(split, rows["holdout"])) for cid, rows in clients.items()}
        self.keys: dict[int, Any] = {}

    def _tensors(self, x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        label = torch.int64 if self.classification else torch.float32
        return torch.from_numpy(np.require(x, np.float32, ["C", "W"])), torch.from_numpy(np.array(y)).to(label)

    def ready(self) -> int:
        return len(self.data)

    def public_keys(self, client_ids: list[int]) -> dict[int, bytes]:
        """A fresh key pair per client for this round of secure aggregation; the public halves."""
        self.keys = {}
        publics = {}
        for cid in client_ids:
            self.keys[cid], publics[cid] = secure.new_key()
        return publics

    def train(
        self,
        global_vector: np.ndarray,
        round_index: int,
        client_ids: list[int],
        publics: dict[int, bytes] | None = None,
    ) -> list[dict[str, Any]]:
        """Each client's update on the global model: plain, or masked when `publics` (every client of the round's
        public key) is given. With dp, updates are clipped first and every client weighs the same."""
        answers = []
        for cid in client_ids:
            started = time.perf_counter()
            update, loss = self._local_update(global_vector, round_index, cid)
            clipped = False
            if self.cfg.federated.dp is not None:
                update, clipped = privacy.clipped(update, self.cfg.federated.dp.clip_norm)
            weight = 1.0 if self.cfg.federated.dp is not None else float(len(self.data[cid][1]))
            if publics is not None:
                sent = secure.masked(weight * update, cid, self.keys[cid], publics, round_tag(round_index))
            else:
                sent = (weight * update).astype(np.float32)
            answers.append(
                {
                    "client": cid,
                    "weight": weight,
                    "sent": sent,
                    "train_loss": loss,
                    "clipped": clipped,
                    "seconds": time.perf_counter() - started,
                }
            )
        return answers

    def _local_update(self, global_vector: np.ndarray, round_index: int, cid: int) -> tuple[np.ndarray, float]:
        fed = self.cfg.federated
        load_vector(self.model, global_vector)
        self.model.train()
        anchor = [p.detach().clone() for p in self.model.parameters()] if fed.algorithm == "fedprox" else None
        optimizer = make_optimizer(self.cfg.train.optimizer, self.model.parameters())
        x, y = self.data[cid]
        seed = hash_seed(fed.seed, round_index, cid)
        torch.manual_seed(seed)  # dropout: a client's update is the same whichever actor trains it, and on a retry
        generator = torch.Generator().manual_seed(seed)
        losses = []
        for _ in range(fed.local_epochs):
            order = torch.randperm(len(y), generator=generator)
            for start in range(0, len(y), fed.local_batch_size):
                rows = order[start : start + fed.local_batch_size]
                loss = self.loss_fn(self.model(x[rows]), y[rows])
                losses.append(loss.item())
                if anchor is not None:
                    drift = sum(((p - a) ** 2).sum() for p, a in zip(self.model.parameters(), anchor, strict=True))
                    loss = loss + fed.mu / 2 * drift
                loss.backward()
                if self.cfg.train.grad_clip_norm is not None:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        return to_vector(self.model) - np.asarray(global_vector, dtype=np.float32), float(np.mean(losses))

    @torch.no_grad()
    def evaluate(self, global_vector: np.ndarray) -> dict[int, dict[str, float]]:
        """The global model's metrics on each client's held-out rows (clients without any are left out)."""
        load_vector(self.model, global_vector)
        self.model.eval()
        found = {}
        for cid, (x, y) in self.holdout.items():
            if len(y) == 0:
                continue
            sums = SplitSums(self.preprocessor)
            sums.add(self.model(x), y)
            found[cid] = {**sums.reduce().metrics, "rows": float(len(y))}
        return found


def round_tag(round_index: int) -> bytes:
    return f"round-{round_index}".encode()


def hash_seed(*parts: int) -> int:
    """A seed from several integers, the same in every process (Python's hash() of a tuple is not)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])
