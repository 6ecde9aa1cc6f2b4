"""The hand-written side of ingest_bench.py: plain PyTorch DDP under `torchrun`, streaming a Parquet directory.

    torchrun --standalone --nproc_per_node=2 benchmarks/torchrun_parquet.py --pipeline P --data DIR \
        --output out.json [--loader-workers 0]

What a user writes without a data platform: every rank lists the directory's Parquet files and takes every
world-th row group (round robin, so the ranks' row counts differ by at most a row group; with fewer row groups than
ranks, its part of each); a row is a validation row when its position in the directory is 0, 1 or 2 modulo 20
(15%), the rest train. Preparation is one pass over the rank's training rows for per-column sums, all-reduced into
the mean and standard deviation both ranks use. The epoch streams the rank's row groups in a seeded order through
an IterableDataset (read with pyarrow, standardised, shuffled within the row group, cut into full batches) and a
torch DataLoader; both ranks stop after the smaller rank's number of batches so DDP's collectives pair. Then a
validation pass, as rayline's epoch has.
Model, optimizer, batch size and gradient clipping are the pipeline's (P), built by the same model code.
Rank 0 writes (and prints) one JSON object: preparation seconds, when the epoch (first step) started, training
rows per second over all ranks, validation accuracy and each rank's peak RSS; times are wall-clock time.time()
values for the launcher to set against its own launch time.
"""

from __future__ import annotations

import time

STARTED_AT = time.time()  # before torch and pyarrow are imported

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402
from torch.utils.data import DataLoader, IterableDataset, get_worker_info  # noqa: E402

from rayline.config import load_config  # noqa: E402
from rayline.models import build_model  # noqa: E402

VALIDATION_OF_20 = 3  # rows 0, 1, 2 of every 20 validate: 15%


def row_groups(directory: str) -> list[tuple[str, int, int]]:
    """(file, row group, position of its first row in the directory) of every row group, in file order."""
    pieces, first = [], 0
    for path in sorted(Path(directory).glob("*.parquet")):
        metadata = pq.ParquetFile(path).metadata
        for group in range(metadata.num_row_groups):
            pieces.append((str(path), group, first))
            first += metadata.row_group(group).num_rows
    return pieces


def rank_pieces(directory: str, rank: int, world: int) -> list[tuple]:
    """This rank's (file, row group, first row, part, parts): every world-th row group, or, with fewer row groups
    than ranks (a small file), the rank's contiguous part of every row group."""
    groups = row_groups(directory)
    if len(groups) < world:
        return [(*group, rank, world) for group in groups]
    return [(*group, 0, 1) for group in groups[rank::world]]


def read_piece(piece: tuple, features: list[str], label: str, validation: bool):
    """A piece's training (or validation) rows: float32 features [rows, features] and int64 labels."""
    path, group, first, part, parts = piece
    table = pq.ParquetFile(path).read_row_group(group, columns=[*features, label])
    start, stop = table.num_rows * part // parts, table.num_rows * (part + 1) // parts
    table = table.slice(start, stop - start)
    x = np.column_stack([table[name].to_numpy() for name in features]).astype(np.float32)
    keep = (np.arange(first + start, first + stop) % 20 < VALIDATION_OF_20) == validation
    return x[keep], table[label].to_numpy()[keep]


def column_stats(pieces, features: list[str], label: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Mean and standard deviation of every feature over all ranks' training rows, and this rank's row count."""
    sums = np.zeros((2, len(features)))
    rows = 0
    for piece in pieces:
        x, _ = read_piece(piece, features, label, validation=False)
        sums += [x.sum(axis=0, dtype=np.float64), np.square(x, dtype=np.float64).sum(axis=0)]
        rows += len(x)
    total = torch.tensor([*sums.ravel(), rows], dtype=torch.float64)
    dist.all_reduce(total)
    n = float(total[-1])
    mean = total[: len(features)].numpy() / n
    std = np.sqrt(np.maximum(total[len(features) : -1].numpy() / n - mean**2, 0.0))
    return mean.astype(np.float32), np.where(std > 0, std, 1.0).astype(np.float32), rows


class ParquetBatches(IterableDataset):
    """Standardised, shuffled full batches from this rank's row groups (a DataLoader worker takes every
    num_workers-th of them); the remainder of each row group carries over into the next."""

    def __init__(self, pieces, features, label, mean, std, batch_size: int, seed: int) -> None:
        self.pieces, self.features, self.label = pieces, features, label
        self.mean, self.std, self.batch_size, self.seed = mean, std, batch_size, seed

    def __iter__(self):
        worker = get_worker_info()
        order = np.random.default_rng(self.seed).permutation(len(self.pieces))
        if worker is not None:
            order = order[worker.id :: worker.num_workers]
        rng = np.random.default_rng([self.seed, 0 if worker is None else worker.id + 1])
        carry_x, carry_y = np.empty((0, len(self.features)), np.float32), np.empty(0, np.int64)
        for index in order:
            x, y = read_piece(self.pieces[index], self.features, self.label, validation=False)
            shuffled = rng.permutation(len(y))
            x = np.concatenate([carry_x, (x[shuffled] - self.mean) / self.std])
            y = np.concatenate([carry_y, y[shuffled]])
            full = len(y) - len(y) % self.batch_size
            for start in range(0, full, self.batch_size):
                yield (
                    torch.from_numpy(x[start : start + self.batch_size]),
                    torch.from_numpy(y[start : start + self.batch_size]),
                )
            carry_x, carry_y = x[full:], y[full:]
        if len(carry_y):
            yield torch.from_numpy(carry_x), torch.from_numpy(carry_y)


def train_epoch(model, optimizer, loader, steps: int, grad_clip_norm: float | None) -> tuple[int, float]:
    """Exactly `steps` batches (every rank the same count); returns this rank's rows and when the first arrived."""
    rows, first_batch_at = 0, None
    model.train()
    for step, (x, y) in enumerate(loader):
        if step == steps:
            break
        first_batch_at = first_batch_at or time.time()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip_norm)
        optimizer.step()
        rows += len(y)
    return rows, first_batch_at


@torch.no_grad()
def val_accuracy(model, pieces, features, label, mean, std) -> float:
    model.eval()
    counts = torch.zeros(2, dtype=torch.float64)
    for piece in pieces:
        x, y = read_piece(piece, features, label, validation=True)
        predicted = model(torch.from_numpy((x - mean) / std)).argmax(dim=1)
        counts += torch.tensor([(predicted == torch.from_numpy(y)).sum().item(), len(y)], dtype=torch.float64)
    dist.all_reduce(counts)
    return float(counts[0] / counts[1])


def peak_rss_mb() -> dict[str, float]:
    """This rank's peak RSS, and its largest DataLoader worker's (an ended child process; 0 with none)."""
    mb = 1024  # ru_maxrss is in kB on Linux
    own, children = (resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return {"rank": round(own / mb, 1), "loader_worker": round(children / mb, 1)}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--pipeline", required=True, help="the rayline pipeline YAML whose model and train settings to use"
    )
    parser.add_argument("--data", required=True, help="directory of Parquet files")
    parser.add_argument("--output", required=True)
    parser.add_argument("--loader-workers", type=int, default=0, help="DataLoader num_workers per rank")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    imports_done_at = time.time()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    cfg = load_config(args.pipeline, [f"data.source={args.data}"])
    features, label, batch = [f.name for f in cfg.data.features], cfg.data.label, cfg.train.batch_size
    prepare_started_at = time.time()
    pieces = rank_pieces(args.data, rank, world)
    mean, std, rows = column_stats(pieces, features, label)
    steps = torch.tensor([-(-rows // batch)])
    dist.all_reduce(steps, op=dist.ReduceOp.MIN)  # equal steps on every rank
    if int(steps) == 0:
        raise SystemExit(f"rank {rank}: no training rows in {args.data}")
    prepared_at = time.time()

    torch.manual_seed(cfg.train.seed)
    model = DistributedDataParallel(build_model(cfg.model, num_inputs=len(features), num_outputs=10))
    opt = cfg.train.optimizer
    optimizer = torch.optim.AdamW(model.parameters(), lr=opt.lr, weight_decay=opt.weight_decay)
    dataset = ParquetBatches(pieces, features, label, mean, std, batch, seed=cfg.train.seed)
    loader = DataLoader(dataset, batch_size=None, num_workers=args.loader_workers)
    epoch_started_at, started = time.time(), time.perf_counter()
    rows_trained, first_batch_at = train_epoch(model, optimizer, loader, int(steps), cfg.train.grad_clip_norm)
    train_s = time.perf_counter() - started
    accuracy = val_accuracy(model, pieces, features, label, mean, std)
    epoch_s = time.perf_counter() - started
    total_rows = torch.tensor([rows_trained], dtype=torch.float64)
    dist.all_reduce(total_rows)
    peaks: list[dict] = [{}] * world
    dist.all_gather_object(peaks, peak_rss_mb())
    if rank == 0:
        figures = {
            "started_at": STARTED_AT,
            "imports_done_at": imports_done_at,
            "prepare_started_at": prepare_started_at,
            "prepare_s": round(prepared_at - prepare_started_at, 3),
            "epoch_started_at": epoch_started_at,
            "first_batch_at": first_batch_at,
            "train_rows": int(total_rows),
            "train_s": round(train_s, 3),
            "samples_per_s": round(float(total_rows) / train_s, 1),
            "epoch_time_s": round(epoch_s, 3),
            "val_accuracy": round(accuracy, 4),
            "peak_rss_mb_per_rank": [p["rank"] for p in peaks],
            "peak_rss_mb_per_loader_worker": [p["loader_worker"] for p in peaks],
            "loader_workers": args.loader_workers,
            "pid": os.getpid(),
        }
        Path(args.output).write_text(json.dumps(figures, indent=1) + "\n")
        print(json.dumps(figures), flush=True)
    dist.barrier()  # leave together (see torchrun_ddp.py)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
