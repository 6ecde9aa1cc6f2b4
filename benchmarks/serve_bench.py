"""rayline's Serve endpoint against a bare FastAPI + uvicorn process, same model, in one run.

    .venv/bin/python benchmarks/serve_bench.py       # writes benchmarks/results/serve_bench.json

The model is an MLP 64 -> 3072 -> 3072 -> 3072 -> 10 registered like any trained one; its
single-row forward pass takes a few milliseconds here, so batching has something to win. Both
servers answer the same one-row JSON requests from closed-loop clients at concurrency 1, 8 and
32, a fixed number of requests each (after a warm-up). Both are up for the whole run and are
measured in turns, (b) then (a) at each concurrency, so each pair sees about the same machine load
(on a shared machine that matters more than the idle Ray processes (b) shares the cores with):

  (a) rayline: `rayline.serve.deploy` on an embedded Ray cluster (no dashboard), HAProxy ingress,
      dynamic batching (max batch 32, 2 ms wait), one replica with one torch thread;
  (b) bare: FastAPI + uvicorn, one process, a sync endpoint that runs the model per request
      (FastAPI's thread pool runs several at once; torch's default threads).

The model's ceiling is its best rows/s over batch sizes 1..256 with one torch thread (what a replica
uses), measured in this process; the 2-thread figure is reported too.

The load generator is a lean asyncio HTTP/1.1 client (keep-alive, pre-built request bytes) in its
own process; it costs about 0.1 ms of CPU per request, on the same two cores as the servers, and
each result reports its CPU seconds (`client_cpu_s`) so it can be subtracted from the machine's
budget. Every measurement records the 1-minute load average: on a shared machine, compare runs
with similar load only. Targets: at concurrency 32, (a) >= 2x (b) requests/s with no errors and as
close to the ceiling as possible; at concurrency 1, (a)'s p50 within 5 ms of (b)'s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

REPO = Path(__file__).resolve().parents[1]
RUNS = REPO / "benchmarks" / "results" / "serve_bench_runs"
CONCURRENCY = (1, 8, 32)
FEATURES = 64


# ---------------------------------------------------------------- the model


def make_registry(root: Path, width: int) -> str:
    """Register an untrained MLP 64 -> width x3 -> 10 (weights do not change the cost); returns its version."""
    import torch

    from rayline.checkpoint import save_checkpoint
    from rayline.config import ModelConfig, PipelineConfig
    from rayline.data.preprocess import NumericStat, Preprocessor
    from rayline.models import build_model
    from rayline.registry import Registry

    names = [f"f{i}" for i in range(FEATURES)]
    pre = Preprocessor("classification", "y", [NumericStat(n, 0.0, 1.0) for n in names], list("abcdefghij"), None, None)
    config = PipelineConfig(
        name="serve-bench",
        data={"source": "unused.csv", "task": "classification", "label": "y", "features": names},
        model=ModelConfig(hidden_sizes=[width] * 3, dropout=0.0),
    )
    torch.manual_seed(0)
    model = build_model(config.model, num_inputs=FEATURES, num_outputs=10)
    checkpoint = root / "checkpoint"
    save_checkpoint(
        checkpoint,
        model_state=model.state_dict(),
        optimizer_state={},
        epoch=0,
        metrics={},
        history=[],
        preprocessor=pre,
        config=config,
    )
    return Registry(root).register(checkpoint, run_name="bench", data_fingerprint="none")


def ceiling(root: Path, threads: int, seconds: float = 1.0) -> dict:
    """The model's own rows/s at each batch size (inference mode, `threads` intra-op threads)."""
    import torch

    from rayline.registry import Registry

    torch.set_num_threads(threads)
    model = Registry(root).load().model
    per_batch = {}
    with torch.inference_mode():
        for batch in (1, 2, 4, 8, 16, 32, 64, 128, 256):
            x = torch.randn(batch, FEATURES)
            for _ in range(3):
                model(x)
            runs, began = 0, time.perf_counter()
            while time.perf_counter() - began < seconds:
                model(x)
                runs += 1
            per_batch[batch] = round(batch * runs / (time.perf_counter() - began), 1)
    best = max(per_batch, key=per_batch.get)
    return {"threads": threads, "rows_per_s_by_batch": per_batch, "best_batch": best, "rows_per_s": per_batch[best]}


# ---------------------------------------------------------------- (b) the bare server


class Rows(BaseModel):
    rows: list[list[float]]


def bare_server(root: str, port: int) -> None:
    """FastAPI + uvicorn in this process: validate, scale, run the model for this one request, answer."""
    import numpy as np
    import torch
    import uvicorn
    from fastapi import FastAPI

    from rayline.registry import Registry

    loaded = Registry(root).load()
    model, pre = loaded.model, loaded.preprocessor
    mean = np.array([f.mean for f in pre.features], dtype=np.float32)
    scale = np.array([f.scale for f in pre.features], dtype=np.float32)
    app = FastAPI()

    @app.post("/predict")
    def predict(body: Rows) -> dict:
        x = (np.asarray(body.rows, dtype=np.float32) - mean) / scale
        with torch.inference_mode():
            out = model(torch.from_numpy(x)).numpy()
        return {"model_version": loaded.version.version, "predictions": pre.decode(out)}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# ---------------------------------------------------------------- the load generator


async def closed_loop(host: str, port: int, path: str, body: bytes, concurrency: int, total: int) -> dict:
    """`concurrency` keep-alive connections, each sending its next request when the last one is answered."""
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    latencies: list[float] = []
    errors = reconnects = 0
    left = total

    async def connection() -> None:
        nonlocal errors, reconnects, left
        reader, writer = await asyncio.open_connection(host, port)
        while left > 0:
            left -= 1
            began = time.perf_counter()
            writer.write(request)
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as err:
                if err.partial:
                    raise
                # The server closed this idle keep-alive connection (HAProxy does so when it reloads):
                # like any HTTP client, open a new one and send the request again.
                reconnects += 1
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
            fields = dict(line.lower().split(b": ", 1) for line in head.split(b"\r\n")[1:] if b": " in line)
            await reader.readexactly(int(fields.get(b"content-length", b"0")))
            latencies.append(time.perf_counter() - began)
            errors += head[9:12] != b"200"
            if fields.get(b"connection") == b"close":
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
        writer.close()

    cpu, began = time.process_time(), time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(concurrency)))
    wall, cpu = time.perf_counter() - began, time.process_time() - cpu
    latencies.sort()
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "req_per_s": round(len(latencies) / wall, 1),
        "p50_ms": round(latencies[len(latencies) // 2] * 1e3, 2),
        "p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e3, 2),
        "errors": errors,
        "reconnects": reconnects,
        "client_cpu_s": round(cpu, 3),
        "wall_s": round(wall, 2),
    }


def client(url: str, concurrency: int, total: int, warmup: int) -> None:
    """Subprocess entry point: warm up, measure, print one JSON line."""
    host, port = url.removeprefix("http://").split("/")[0].split(":")
    rng = random.Random(0)
    body = json.dumps({"rows": [[round(rng.uniform(-2, 2), 6) for _ in range(FEATURES)]]}).encode()
    asyncio.run(closed_loop(host, int(port), "/predict", body, concurrency, warmup))
    print(json.dumps(asyncio.run(closed_loop(host, int(port), "/predict", body, concurrency, total))))


def measure(url: str, concurrency: int, total: int, server_cpu: Callable[[], float]) -> dict:
    """One closed-loop run; also the server side's CPU time per request (robust to a busy machine)."""
    load = os.getloadavg()[0]
    warmup = min(total, 200)
    command = [sys.executable, __file__, "--client", url, str(concurrency), str(total), str(warmup)]
    cpu = server_cpu()
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    cpu = server_cpu() - cpu
    if done.returncode != 0:
        raise RuntimeError(f"the load generator failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["server_cpu_ms_per_request"] = round(cpu * 1e3 / (total + warmup), 3)
    result["load_avg_1m"] = round(load, 2)
    print(
        f"  c={concurrency:<3} {result['req_per_s']:>8.1f} req/s  p50 {result['p50_ms']:>7.2f} ms  "
        f"p99 {result['p99_ms']:>7.2f} ms  errors {result['errors']}  "
        f"server CPU {result['server_cpu_ms_per_request']:.2f} ms/req  (load {load:.1f})",
        flush=True,
    )
    return result


def cpu_seconds(pids: Callable[[], list[int]]) -> Callable[[], float]:
    """Summed user+system time of the processes the callable lists, from /proc (those that exit are lost)."""
    ticks = os.sysconf("SC_CLK_TCK")

    def total() -> float:
        seconds = 0.0
        for pid in pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            seconds += (int(fields[11]) + int(fields[12])) / ticks
        return seconds

    return total


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parent = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def is_client(pid: int) -> bool:
    try:
        return b"--client" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True


# ---------------------------------------------------------------- the two runs


def run_both(root: Path, args: argparse.Namespace) -> tuple[dict, dict, dict]:
    """Both servers up, measured in turns at each concurrency, so each pair sees about the same machine load."""
    import logging

    import ray

    from rayline.config import ServeConfig
    from rayline.serve import deploy, shutdown

    cfg = ServeConfig(
        port=free_port(),
        ingress=args.ingress,
        cpus_per_replica=1,
        torch_threads=args.torch_threads,
        max_batch_size=args.max_batch_size,
        batch_wait_timeout_s=args.batch_wait_ms / 1000,
        max_ongoing_requests=64,
    )
    bare_port = free_port()
    bare_server = subprocess.Popen([sys.executable, __file__, "--bare-server", str(root), str(bare_port)])
    # A serving cluster needs no dashboard; its processes would take CPU from the two cores.
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    try:
        url = deploy(str(root), serve_cfg=cfg)
        wait_for_port(bare_port, bare_server)
        # Ray's processes are this driver's descendants (raylet, GCS, Serve's actors, HAProxy); so are the bare
        # server, counted apart, and the load generator, which reports its own CPU.
        bare_pids = {bare_server.pid}
        ray_cpu = cpu_seconds(lambda: [p for p in descendants(os.getpid()) if p not in bare_pids and not is_client(p)])
        bare_cpu = cpu_seconds(lambda: [bare_server.pid])
        bare, rayline = {}, {}
        for c in CONCURRENCY:
            print(f"concurrency {c}: (b) bare FastAPI, then (a) rayline")
            bare[str(c)] = measure(f"http://127.0.0.1:{bare_port}", c, args.requests, bare_cpu)
            rayline[str(c)] = measure(url, c, args.requests, ray_cpu)
        return bare, rayline, cfg.model_dump(mode="json")
    finally:
        bare_server.terminate()
        bare_server.wait(timeout=30)
        shutdown()
        ray.shutdown()


def summary(rayline: dict, bare: dict, ceiling_rows_per_s: float) -> dict:
    a32, b32, a1, b1 = rayline["32"], bare["32"], rayline["1"], bare["1"]
    ratio = a32["req_per_s"] / b32["req_per_s"]
    fraction = a32["req_per_s"] / ceiling_rows_per_s
    delta = a1["p50_ms"] - b1["p50_ms"]
    return {
        "c32_rayline_over_bare": round(ratio, 2),
        "c32_server_cpu_per_request_bare_over_rayline": round(
            b32["server_cpu_ms_per_request"] / a32["server_cpu_ms_per_request"], 2
        ),
        "c32_fraction_of_ceiling": round(fraction, 3),
        "c1_p50_rayline_minus_bare_ms": round(delta, 2),
        "met": {
            "c32_at_least_2x": ratio >= 2.0,
            "c32_no_errors": a32["errors"] == 0,
            "c32_half_of_ceiling": fraction >= 0.5,
            "c1_p50_within_5ms": delta <= 5.0,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000, help="measured requests per concurrency level")
    parser.add_argument("--width", type=int, default=3072, help="hidden width of the benchmark MLP")
    parser.add_argument("--ingress", choices=["haproxy", "proxy"], default="haproxy")
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-wait-ms", type=float, default=2.0)
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "serve_bench.json"))
    args = parser.parse_args()

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private loopback cluster, gone when this ends
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    root = RUNS / f"mlp{args.width}"
    shutil.rmtree(root, ignore_errors=True)
    make_registry(root, args.width)
    ceilings = [ceiling(root, threads) for threads in (1, 2)]
    print(
        f"model ceiling: {ceilings[0]['rows_per_s']:.0f} rows/s at batch {ceilings[0]['best_batch']} (1 thread), "
        f"{ceilings[1]['rows_per_s']:.0f} with 2 threads; one row: {1e3 / ceilings[0]['rows_per_s_by_batch'][1]:.2f} ms"
    )
    bare, rayline, settings = run_both(root, args)
    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "model": {
            "kind": "mlp",
            "layers": [FEATURES, *[args.width] * 3, 10],
            "one_row_ms": round(1e3 / ceilings[0]["rows_per_s_by_batch"][1], 2),
        },
        "ceiling": ceilings[0],
        "ceiling_2_threads": ceilings[1],
        "client": "closed-loop asyncio HTTP/1.1, keep-alive, one process; client_cpu_s is its CPU time",
        "rayline_settings": settings,
        "bare_fastapi": bare,
        "rayline": rayline,
        "summary": summary(rayline, bare, ceilings[0]["rows_per_s"]),
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["summary"], indent=2))
    print(f"wrote {args.output}")


# ---------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the bare server exited with {process.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on port {port} after {timeout:.0f} s")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--bare-server"]:
        bare_server(sys.argv[2], int(sys.argv[3]))
    elif sys.argv[1:2] == ["--client"]:
        client(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
    else:
        main()
