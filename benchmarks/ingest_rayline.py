"""The rayline side of ingest_bench.py: one pipeline trained in a fresh process on an embedded cluster whose object
store is capped, so that a data set larger than it has to be streamed or spilled.

    .venv/bin/python benchmarks/ingest_rayline.py --pipeline P --object-store-mb 256 --output out.json [--set K=V]

The embedded cluster is started here first, as rayline.runtime.connect() would start it (dashboard on, its State
API address exported, quiet logging) but with object_store_memory set; connect() then finds Ray initialised and
joins it. The config is loaded as `rayline train` loads it (load_config with --set overrides) and trained with
rayline.pipeline.train_and_register, whose log lines are stamped as they come. Written (and printed as one JSON
line): preparation seconds (the "prepared in N s" the data stage may log, else train_and_register's call to its
"data: ..." line), the first training step (epoch 0's epoch_started_at), epoch 0's rows/s, time and validation
accuracy, the training workers' peak RSS as they report it, the driver's own peak RSS, the RSS of every Ray
worker process sampled every SAMPLE_S s, and the bytes the object store spilled and restored. Times are
time.time() values, for the launcher to set against its own launch time.
"""

from __future__ import annotations

import time

STARTED_AT = time.time()  # before Ray, torch and rayline are imported

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402

import ray  # noqa: E402
from train_launch import latest_history  # noqa: E402

SAMPLE_S = 0.5
PREPARED = re.compile(r"prepared in ([\d.]+) s")


class WorkerRss(threading.Thread):
    """Samples the RSS of this process's Ray worker processes (children of the raylet it started): the largest
    single training worker, the largest of any worker, and the largest sum. RSS counts the object store pages a
    process has mapped and read, so a worker reading zero-copy from it looks bigger than its private memory."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stopped = threading.Event()
        self.peak = {"train_worker_max_mb": 0.0, "any_worker_max_mb": 0.0, "workers_sum_max_mb": 0.0, "samples": 0}

    def run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self.stopped.wait(SAMPLE_S):
            sizes = []
            for proc in me.children(recursive=True):
                try:
                    title = " ".join(proc.cmdline()[:1])
                    if title.startswith("ray::"):
                        sizes.append((title, proc.memory_info().rss / 2**20))
                except psutil.Error:
                    continue  # ended between the listing and the look
            self.add(sizes)

    def add(self, sizes: list[tuple[str, float]]) -> None:
        peak = self.peak
        train = [mb for title, mb in sizes if "RayTrainWorker" in title]
        peak["train_worker_max_mb"] = max(peak["train_worker_max_mb"], *train, 0.0)
        peak["any_worker_max_mb"] = max(peak["any_worker_max_mb"], *(mb for _, mb in sizes), 0.0)
        peak["workers_sum_max_mb"] = max(peak["workers_sum_max_mb"], sum(mb for _, mb in sizes))
        peak["samples"] += 1

    def figures(self) -> dict:
        return {k: round(v, 1) for k, v in self.peak.items()}


def start_cluster(object_store_mb: int) -> None:
    from rayline.cli import stop_on_sigterm
    from rayline.runtime import (
        agent_port_chosen_by_the_os,
        connect,
        point_state_api_at_own_dashboard,
        quiet_environment,
    )

    quiet_environment(verbose=False)
    port = point_state_api_at_own_dashboard()
    os.environ.setdefault("RAY_worker_maximum_startup_concurrency", str(max(8, os.cpu_count() or 1)))
    logging.getLogger("ray._private.authentication").setLevel(logging.ERROR)
    with agent_port_chosen_by_the_os():  # as rayline's own embedded cluster
        ray.init(
            address="local",
            object_store_memory=object_store_mb * 2**20,
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            dashboard_port=port,
            logging_level=logging.WARNING,
            log_to_driver=False,
        )
    connect()  # joins the cluster just started: waits for its CPUs, quiets Ray Data
    stop_on_sigterm()  # a launcher's timeout (SIGTERM) still shuts the cluster down


def spill_stats() -> dict:
    """Bytes the object store spilled to disk and restored, as `ray memory --stats-only` reports them."""
    from ray._private.internal_api import get_memory_info_reply, get_state_from_address

    gcs = ray.get_runtime_context().gcs_address
    stats = get_memory_info_reply(get_state_from_address(gcs)).store_stats
    return {
        "spilled_bytes": int(stats.spilled_bytes_total),
        "spilled_objects": int(stats.spilled_objects_total),
        "restored_bytes": int(stats.restored_bytes_total),
        "object_store_bytes_available": int(stats.object_store_bytes_avail),
    }


def preparation_s(lines: list[tuple[float, str]], called_at: float) -> tuple[float | None, str]:
    """Seconds the data stage took, and where the figure came from."""
    for _, line in lines:
        if found := PREPARED.search(line):
            return float(found.group(1)), "logged 'prepared in N s'"
    for stamp, line in lines:
        if line.startswith("data: "):
            return round(stamp - called_at, 3), "train_and_register called to its 'data: ' line"
    return None, "no data line logged"


def train(pipeline: str, sets: list[str]) -> dict:
    from rayline.config import load_config
    from rayline.pipeline import train_and_register

    cfg = load_config(pipeline, sets)
    lines: list[tuple[float, str]] = []

    def log(line: str) -> None:
        lines.append((time.time(), line))
        print(f"{time.time() - STARTED_AT:8.2f}  {line}", flush=True)

    called_at = time.time()
    report = train_and_register(cfg, log=log)
    returned_at = time.time()
    epoch = latest_history(Path(cfg.storage.root))[0]
    prepare_s, prepare_source = preparation_s(lines, called_at)
    return {
        "train_and_register_called_at": called_at,
        "returned_at": returned_at,
        "prepare_s": prepare_s,
        "prepare_s_from": prepare_source,
        "epoch_started_at": epoch["epoch_started_at"],
        "samples_per_s": round(epoch["samples_per_s"], 1),
        "epoch_time_s": round(epoch["epoch_time_s"], 3),
        "val_accuracy": round(epoch["val_accuracy"], 4),
        "worker_peak_memory_mb": round(epoch["peak_memory_mb"], 1),
        "num_rows": report.num_rows,
        "registered": str(report.version),
        "log": [[round(stamp - STARTED_AT, 2), line] for stamp, line in lines],
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", required=True)
    parser.add_argument("--object-store-mb", type=int, required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="as for `rayline train`")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    sampler = WorkerRss()
    started = time.time()
    start_cluster(args.object_store_mb)
    cluster_up_at = time.time()
    sampler.start()
    try:
        figures = train(args.pipeline, args.set)
        spilled = spill_stats()
    finally:
        sampler.stopped.set()
        ray.shutdown()
    figures = {
        "started_at": STARTED_AT,
        "cluster_start_s": round(cluster_up_at - started, 3),
        **figures,
        **spilled,
        "driver_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),  # kB on Linux
        "sampled_rss": sampler.figures(),
        "object_store_mb": args.object_store_mb,
        "ended_at": time.time(),
    }
    Path(args.output).write_text(json.dumps(figures, indent=1) + "\n")
    print(json.dumps({k: v for k, v in figures.items() if k != "log"}), flush=True)


if __name__ == "__main__":
    main()
