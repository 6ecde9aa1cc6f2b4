"""rayline's Serve endpoint against the servers a user would pick instead, same model, in one run.

    .venv/bin/python benchmarks/serve_bench.py      # writes benchmarks/results/serve_bench.json
    .venv/bin/python benchmarks/serve_bench.py --repeats 1 --requests 300 --models cnn \
        --overload-seconds 3 --overload-servers rayline                     # a smoke run, about 3 minutes

Servers, each a process of its own (benchmarks/servers/), all up for a model's whole run and
measured in turns, so each sees about the same machine load; the order rotates every round:

  rayline          `ServeConfig()` defaults (only host and port set; the ingress is whatever the default
                   is, recorded in the JSON), on the embedded cluster `rayline serve` starts;
  rayline-haproxy  the same with `ingress="haproxy"`, measured too while the default is "proxy" and
                   HAProxy is installed;
  rayline-proxy    the same with `ingress="proxy"`, only when named in --servers;
  litserve         LitServe's dynamic batching, from its own virtualenv (benchmarks/.peer-venv, made on
                   the first run with pip);
  ray-serve        stock Ray Serve: FastAPI ingress + `@serve.batch`, one replica, on its own cluster;
  bare             FastAPI + uvicorn, a sync endpoint, no batching: the floor.

Every batching server batches at most rayline's default max_batch_size rows and waits rayline's
default batch_wait_timeout_s; every server runs its model with one torch thread per worker, one worker.
Models: the digits CNN `make demo` trains (pipelines/digits.yaml's model section, registered untrained
with rayline's checkpoint code: weights do not change the cost) and a heavy MLP 64 -> 3072 x3 -> 10.
The peers load the same checkpoint (servers/common.py rebuilds it with rayline's build_model).

Each round, for each model: closed-loop clients (serve_load.py: asyncio HTTP/1.1, keep-alive, one
64-number row per request, the same bytes everywhere) at concurrency 1, 8 and 32, a fixed number of
requests after a warm-up (figures with the warm-up are reported too); then overload, concurrency
128 and 512 for a fixed time with no warm-up, counting answers, 503 refusals (and Retry-After) and
other errors. The model's ceiling is its rows/s alone at batch max_batch_size with one thread,
measured before and after the rounds (the higher is used). Every figure records the servers' CPU
time, the other servers' CPU time meanwhile and the 1-minute load average: on a shared machine
compare runs with similar load only. Medians over rounds, with min and max; targets (serve_targets.py)
marked met or not in the JSON. Every server is stopped on the way out, after Ctrl-C or SIGTERM too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import time
from pathlib import Path

import serve_targets
from serve_load import FEATURES, cpu_seconds, run_client
from serve_servers import Server, make_servers, start_all

REPO = Path(__file__).resolve().parents[1]
RUNS = REPO / "benchmarks" / "results" / "serve_bench_runs"
ALL_SERVERS = [
    "rayline",
    "rayline-haproxy",
    "rayline-proxy",
    "rayline-onnx",
    "rayline-grpc",
    "litserve",
    "ray-serve",
    "bare",
]


# ---------------------------------------------------------------- the models


def model_config(kind: str, width: int) -> tuple[dict, dict, list[str]]:
    """(data section, model section, classes) of the benchmark model `kind`."""
    import yaml

    if kind == "cnn":
        digits = yaml.safe_load((REPO / "pipelines" / "digits.yaml").read_text())
        return digits["data"], digits["model"], [str(i) for i in range(10)]
    names = [f"f{i}" for i in range(FEATURES)]
    data = {"source": "unused.csv", "task": "classification", "label": "y", "features": names}
    return data, {"hidden_sizes": [width] * 3, "dropout": 0.0}, list("abcdefghij")


def make_registry(root: Path, kind: str, width: int) -> tuple[str, str, str]:
    """Register an untrained model of the given kind; returns (name, version, checkpoint directory)."""
    import torch

    from rayline.checkpoint import save_checkpoint
    from rayline.config import PipelineConfig
    from rayline.data.preprocess import NumericStat, Preprocessor
    from rayline.models import build_model
    from rayline.registry import Registry

    data, model, classes = model_config(kind, width)
    features = [NumericStat(n, 8.0, 4.0) for n in data["features"]]
    pre = Preprocessor("classification", data["label"], features, classes, None, None)
    config = PipelineConfig(name=f"bench-{kind}", data=data, model=model)
    torch.manual_seed(0)
    net = build_model(config.model, num_inputs=FEATURES, num_outputs=len(classes))
    checkpoint = root / "checkpoint"
    save_checkpoint(
        checkpoint,
        model_state=net.state_dict(),
        optimizer_state={},
        epoch=0,
        metrics={},
        history=[],
        preprocessor=pre,
        config=config,
    )
    registry = Registry(root)
    ref = registry.register(checkpoint, run_name="bench", data_fingerprint="none")
    return ref.name, ref.version, str(registry.checkpoint_dir(ref))


def ceiling(root: Path, batch: int, seconds: float = 1.0) -> dict:
    """The model's own rows/s with one torch thread at batch 1, 8 and `batch` (inference mode, this process)."""
    import torch

    from rayline.registry import Registry

    torch.set_num_threads(1)
    model = Registry(root).load().model
    per_batch = {}
    with torch.inference_mode():
        for size in sorted({1, 8, batch}):
            x = torch.randn(size, FEATURES)
            for _ in range(3):
                model(x)
            runs, began = 0, time.perf_counter()
            while time.perf_counter() - began < seconds:
                model(x)
                runs += 1
            per_batch[size] = round(size * runs / (time.perf_counter() - began), 1)
    return {"threads": 1, "batch": batch, "rows_per_s": per_batch[batch], "rows_per_s_by_batch": per_batch}


def ceiling_onnx(root: Path, batch: int, seconds: float = 1.0) -> dict:
    """ceiling() for serve.runtime onnxruntime: the replica's own OnnxRuntime (the graph with the preprocessing
    inside, raw float64 rows in, one intra-op thread), at batch 1, 8 and `batch`."""
    import numpy as np

    from rayline.serve.encode import RawRows
    from rayline.serve.model import ServedModel

    served = ServedModel.load(root, runtime="onnxruntime", threads=1)
    per_batch = {}
    for size in sorted({1, 8, batch}):
        rows = RawRows(np.random.default_rng(0).uniform(0, 16, (size, FEATURES)), None)
        for _ in range(3):
            served.forward(rows)
        runs, began = 0, time.perf_counter()
        while time.perf_counter() - began < seconds:
            served.forward(rows)
            runs += 1
        per_batch[size] = round(size * runs / (time.perf_counter() - began), 1)
    return {"threads": 1, "batch": batch, "rows_per_s": per_batch[batch], "rows_per_s_by_batch": per_batch}


# ---------------------------------------------------------------- rounds


def measure(server: Server, others: list[Server], concurrency: int, args, *, overload: bool) -> dict:
    spec = {
        "url": server.url,
        "concurrency": concurrency,
        "total": 0 if overload else args.requests,
        "seconds": args.overload_seconds if overload else 0.0,
        "warmup": 0 if overload else min(args.requests, 200),
        "timeout_s": args.client_timeout_s,
        "features": server.features,
    }
    others_cpu = cpu_seconds(lambda: [pid for other in others for pid in other.pids()])
    result = run_client(spec, server.cpu(), others_cpu)
    refused = f"  503 {result['refused_503']} (Retry-After on {result['refused_503_with_retry_after']})"
    print(
        f"  c={concurrency:<3} {server.name:<16} {result['req_per_s']:>8.1f} req/s  p50 {result['p50_ms']} ms  "
        f"p99 {result['p99_ms']} ms  errors {result['errors']}{refused if overload else ''}  "
        f"server CPU {result['server_cpu_ms_per_request']:.2f} ms/req  (load {result['load_avg_1m']:.1f})",
        flush=True,
    )
    return result


def run_model(kind: str, args, peer_python: str | None) -> dict:
    """Register the model, measure its ceiling, bring every server up, run the rounds, bring them down."""
    from rayline.config import ServeConfig

    defaults = ServeConfig()
    root = RUNS / kind
    shutil.rmtree(root, ignore_errors=True)
    name, version, checkpoint = make_registry(root, kind, args.width)
    ceilings = [ceiling(root, defaults.max_batch_size)]
    onnx_ceiling = ceiling_onnx(root, defaults.max_batch_size) if "rayline-onnx" in args.servers else None
    print(f"{kind}: ceiling {ceilings[0]['rows_per_s']:.0f} rows/s at batch {defaults.max_batch_size}, 1 thread")
    base = {
        "checkpoint": checkpoint,
        "model_name": name,
        "model_version": version,
        "storage_root": str(root),
        "max_batch_size": defaults.max_batch_size,
        "batch_wait_s": defaults.batch_wait_timeout_s,
        "torch_threads": 1,
    }
    servers = make_servers(args.servers, base, root / "servers", peer_python, not args.no_dashboard)
    for server in servers:
        server.features = model_config(kind, args.width)[0]["features"]
    rounds: list[dict] = []
    try:
        start_all(servers)
        for r in range(args.repeats):
            order = servers[r % len(servers) :] + servers[: r % len(servers)]
            print(f"{kind}, round {r + 1}/{args.repeats}: {', '.join(s.name for s in order)}", flush=True)
            rounds.append(one_round(order, args))
    finally:
        for server in servers:
            server.stop()
    ceilings.append(ceiling(root, defaults.max_batch_size))
    model = model_description(kind, args.width, ceilings)
    if onnx_ceiling is not None:
        model["onnxruntime_ceiling"] = onnx_ceiling
    return {
        "model": model,
        "configs": {s.name: s.info.get("config") for s in servers},
        "rayline_serve_config": next((s.info.get("serve_config") for s in servers if s.name == "rayline"), None),
        "rounds": rounds,
        "medians": medians(rounds),
    }


def one_round(order: list[Server], args) -> dict:
    results: dict[str, dict[str, dict]] = {s.name: {} for s in order}
    for c in args.concurrency:
        for server in order:
            results[server.name][str(c)] = measure(server, others_of(server, order), c, args, overload=False)
    for c in args.overload:
        for server in order:
            if server.name in args.overload_servers:
                results[server.name][str(c)] = measure(server, others_of(server, order), c, args, overload=True)
    return results


def others_of(server: Server, servers: list[Server]) -> list[Server]:
    return [s for s in servers if s is not server]


def medians(rounds: list[dict]) -> dict:
    """Per server and concurrency: median, min and max over rounds of the main figures; error counts summed."""
    out: dict[str, dict] = {}
    for name in rounds[0]:
        for c in rounds[0][name]:
            runs = [r[name][c] for r in rounds]
            row = {"rounds": len(runs)}
            for key in ("req_per_s", "p50_ms", "p99_ms", "server_cpu_ms_per_request", "load_avg_1m", "with_warmup"):
                values = [figure(run, key) for run in runs if figure(run, key) is not None]
                if values:
                    row[key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
            for key in ("answered", "errors", "timeouts", "connection_errors", "refused_503"):
                row[key] = sum(run[key] for run in runs)
            row["refused_503_with_retry_after"] = sum(run["refused_503_with_retry_after"] for run in runs)
            out.setdefault(name, {})[c] = row
    return out


def figure(run: dict, key: str) -> float | None:
    """A run's figure; "with_warmup" is its requests/s over the warm-up and the measured window together."""
    return run.get("with_warmup", {}).get("req_per_s") if key == "with_warmup" else run[key]


def model_description(kind: str, width: int, ceilings: list[dict]) -> dict:
    layers = "pipelines/digits.yaml model section (cnn, channels [32, 64], head [128])" if kind == "cnn" else None
    best = max(ceilings, key=lambda c: c["rows_per_s"])
    return {
        "kind": kind,
        "description": layers or f"mlp {FEATURES} -> {width} x3 -> 10",
        "one_row_ms": round(1e3 / best["rows_per_s_by_batch"][1], 3),
        "ceiling": best,
        "ceilings_before_after": ceilings,
    }


# ---------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ints = lambda text: [int(x) for x in text.split(",") if x]  # noqa: E731
    names = lambda text: [x for x in text.split(",") if x]  # noqa: E731
    parser.add_argument("--repeats", type=int, default=3, help="rounds; medians and min/max over them")
    parser.add_argument("--requests", type=int, default=2000, help="measured requests per run (after 200 warm-up)")
    parser.add_argument("--models", type=names, default=["cnn", "mlp"], help="comma-separated: cnn,mlp")
    parser.add_argument("--servers", type=names, default=None, help=f"comma-separated subset of {ALL_SERVERS}")
    parser.add_argument("--concurrency", type=ints, default=[1, 8, 32])
    parser.add_argument("--overload", type=ints, default=[128, 512], help="overload concurrencies ('' for none)")
    parser.add_argument("--overload-servers", type=names, default=None, help="servers overloaded (default: all)")
    parser.add_argument("--overload-seconds", type=float, default=10.0, help="length of each overload run")
    parser.add_argument("--client-timeout-s", type=float, default=None, help="default: request_timeout_s + 10")
    parser.add_argument("--width", type=int, default=3072, help="hidden width of the heavy MLP")
    parser.add_argument("--no-dashboard", action="store_true", help="start both Ray clusters without a dashboard")
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "serve_bench.json"))
    return parser.parse_args()


def default_servers() -> list[str]:
    """Every server but rayline-proxy; rayline-haproxy only while the default ingress is proxy and HAProxy exists."""
    from rayline.config import ServeConfig

    names = [name for name in ALL_SERVERS if name != "rayline-proxy"]
    if ServeConfig().ingress != "proxy" or not haproxy_installed():
        names.remove("rayline-haproxy")
    return names


def haproxy_installed() -> bool:
    try:
        from rayline.serve.ingress import find_haproxy  # where rayline looks (Ray's bundled one, then PATH)
    except ImportError:
        return shutil.which("haproxy") is not None
    return find_haproxy() is not None


def main() -> None:
    from rayline.config import ServeConfig

    # SIGTERM ends the run the way Ctrl-C does, so every server is stopped on the way out.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    args = parse_args()
    args.servers = args.servers or default_servers()
    args.overload_servers = args.overload_servers or args.servers
    args.client_timeout_s = args.client_timeout_s or ServeConfig().request_timeout_s + 10
    peer = None
    if "litserve" in args.servers:
        import peer_venv

        peer = peer_venv.ensure()
    began = time.monotonic()
    models = {kind: run_model(kind, args, peer and peer["python"]) for kind in args.models}
    result = {
        "machine": machine(),
        "run": {**{k: v for k, v in vars(args).items() if k != "output"}, "wall_s": round(time.monotonic() - began)},
        "client": "closed-loop asyncio HTTP/1.1 (serve_load.py), keep-alive, own process; client_cpu_s is its CPU",
        "peer_venv": peer,
        "serve_config_defaults": ServeConfig().model_dump(mode="json"),
        "models": models,
    }
    result["targets"] = serve_targets.evaluate(models, ServeConfig())
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(serve_targets.report(result["targets"]))
    print(f"wrote {args.output}")


def machine() -> dict:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True).stdout.strip()

    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "commit": git("rev-parse", "--short", "HEAD"),
        "platform_changed_since_commit": bool(git("status", "--porcelain", "platform")),
        "load_avg_at_start": os.getloadavg(),
    }


if __name__ == "__main__":
    main()
