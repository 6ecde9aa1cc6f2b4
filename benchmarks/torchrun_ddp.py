"""Side (b) of train_bench.py: plain PyTorch DDP under `torchrun`, no Ray, on the same Parquet file and model.

    torchrun --nproc_per_node=2 benchmarks/torchrun_ddp.py --pipeline P --source F --epochs N --output out.json \
        [--save model.pt]

What a hand-written DDP job does: every rank reads the file with pyarrow, standardises the features, keeps its
stride of the training rows, and runs the same model, optimizer and batch size as the rayline pipeline; with
--save, rank 0 then writes the trained model's state_dict with torch.save (the job's end product).
Rank 0 writes per-epoch training throughput (all ranks' rows per second), when each epoch started, and when
each start-up phase ended (wall-clock times, for the launcher to set against its launch time).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from rayline.config import load_config
from rayline.models import build_model


def load_rows(source: str, features: list[str], label: str, validation: float, test: float, seed: int):
    table = pq.read_table(source, columns=[*features, label]).to_pandas()
    order = np.random.default_rng(seed).permutation(len(table))
    train = table.iloc[order[int(len(table) * (validation + test)) :]]
    x = train[features].to_numpy(np.float32)
    x = (x - x.mean(axis=0)) / np.where(x.std(axis=0) > 0, x.std(axis=0), 1.0)
    return torch.from_numpy(x), torch.from_numpy(train[label].to_numpy(np.int64).copy())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pipeline", required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--save", help="write the trained model's state_dict here (rank 0)")
    args = parser.parse_args()

    phases = {"imports_done_at": time.time()}
    dist.init_process_group("gloo")
    phases["process_group_at"] = time.time()
    rank, world = dist.get_rank(), dist.get_world_size()
    cfg = load_config(args.pipeline, [f"data.source={args.source}"])
    features = [f.name for f in cfg.data.features]
    split = cfg.data.split
    x_all, y_all = load_rows(args.source, features, cfg.data.label, split.validation, split.test, split.seed)
    x_rank, y_rank = x_all[rank::world], y_all[rank::world]
    rows = min(len(y_all[r::world]) for r in range(world))  # equal steps on every rank
    x_rank, y_rank = x_rank[:rows], y_rank[:rows]
    phases["data_loaded_at"] = time.time()

    torch.manual_seed(cfg.train.seed)
    model = DistributedDataParallel(build_model(cfg.model, num_inputs=len(features), num_outputs=10))
    opt = cfg.train.optimizer
    optimizer = torch.optim.AdamW(model.parameters(), lr=opt.lr, weight_decay=opt.weight_decay)
    batch = cfg.train.batch_size
    phases["model_built_at"] = time.time()
    epochs = []
    for epoch in range(args.epochs):
        started_at, started, cpu_started = time.time(), time.perf_counter(), time.process_time()
        order = torch.randperm(rows, generator=torch.Generator().manual_seed(epoch))
        loss_sum = torch.zeros((), dtype=torch.float64)
        for i in range(0, rows, batch):
            idx = order[i : i + batch]
            loss = torch.nn.functional.cross_entropy(model(x_rank[idx]), y_rank[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.train.grad_clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip_norm)
            optimizer.step()
            loss_sum += loss.detach().double() * len(idx)
        seconds = time.perf_counter() - started
        cpu_s = torch.tensor([time.process_time() - cpu_started], dtype=torch.float64)
        dist.all_reduce(loss_sum)
        dist.all_reduce(cpu_s)
        epochs.append(
            {"epoch": epoch, "epoch_started_at": started_at, "epoch_time_s": seconds,
             "samples_per_s": rows * world / seconds, "samples_per_cpu_s": rows * world / float(cpu_s),
             "train_loss": float(loss_sum) / (rows * world)}
        )  # fmt: skip
    phases["trained_at"] = time.time()
    if rank == 0:
        if args.save:
            torch.save(model.module.state_dict(), args.save)
        phases["saved_at"] = time.time()
        with open(args.output, "w") as f:
            json.dump({"epochs": epochs, "phases": phases, "pid": os.getpid()}, f)
    # Rank 1 tearing gloo down while rank 0 still saves aborted it ("terminate called without an active
    # exception") in one run of three: leave together.
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
