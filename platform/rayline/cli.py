"""The `rayline` command: parse arguments, dispatch to one function per subcommand. Imported by nothing."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable

from rayline.config import ConfigError, PipelineConfig, ServeConfig, load_config
from rayline.errors import RaylineError

DEFAULT_ROOT = os.environ.get("RAYLINE_ROOT", ".rayline")


# ---------------------------------------------------------------- commands


def cmd_validate(args) -> int:
    cfg = load_config(args.pipeline, args.set)
    print(f"ok: {args.pipeline} is a valid pipeline {cfg.name!r}")
    features = "features: auto" if cfg.data.features == "auto" else f"{len(cfg.data.features)} features"
    print(f"  data:  {cfg.data.task} of {cfg.data.label!r} from {features}")
    print(f"  model: {cfg.model.kind}, train: {cfg.train.num_workers} workers x {cfg.train.epochs} epochs")
    if args.data:
        from rayline.data.infer import describe_features

        print(describe_features(cfg))
    return 0


def cmd_make_example(args) -> int:
    from rayline.data.examples import write_example

    output = args.output or f"data/{args.name}.csv"
    rows = write_example(args.name, output)
    print(f"wrote {rows} rows of the {args.name} example to {output}")
    return 0


def cmd_make_digits(args) -> int:
    from rayline.data import write_digits

    rows = write_digits(args.output)
    print(f"wrote {rows} rows of scikit-learn's digits to {args.output}")
    return 0


def cmd_train(args) -> int:
    cfg = load_config(args.pipeline, args.set)
    start(args)
    report = train(cfg, args)
    print_report(report)
    return 0


def cmd_tune(args) -> int:
    cfg = load_config(args.pipeline, args.set)
    if cfg.tune is None:
        raise ConfigError(f"{args.pipeline}: has no tune: section to search with")
    start(args)
    report = search(cfg, args)
    print_report(report)
    return 0


def cmd_tune_report(args) -> int:
    from rayline.tune.report import report_from_dir

    print(report_from_dir(args.results_dir))
    print(f"wrote {args.results_dir}/trials.txt and {args.results_dir}/learning_curves.png")
    return 0


def cmd_run(args) -> int:
    cfg = load_config(args.pipeline, args.set)
    dashboard = start(args)
    report = search(cfg, args) if cfg.tune is not None else train(cfg, args)
    print_report(report)
    if args.no_serve:
        return 0
    return serve_until_interrupted(cfg.storage.root, report.version, cfg.serve, dashboard)


def cmd_demo(args) -> int:
    """The whole path once: train, serve, one real HTTP prediction, clean shutdown."""
    import httpx

    from rayline import serve as serving
    from rayline.data import read_source

    began = time.perf_counter()
    cfg = load_config(args.pipeline, args.set)
    print(f"dashboard: {start(args)}")
    report = search(cfg, args) if cfg.tune is not None else train(cfg, args)
    print_report(report)
    url = serving.deploy(cfg.storage.root, report.version, cfg.serve)
    rows = read_source(cfg.data).take(2)
    truth = [row.pop(cfg.data.label) for row in rows]
    features = feature_names(cfg)
    body = {"rows": [{k: getattr(v, "item", lambda v=v: v)() for k, v in r.items() if k in features} for r in rows]}
    print(f"POST {url}/predict with {len(rows)} rows from {cfg.data.source} (true labels: {truth})")
    response = httpx.post(f"{url}/predict", json=body, timeout=30)
    print(f"HTTP {response.status_code}: {json.dumps(response.json())[:300]}...")
    for i, prediction in enumerate(response.json().get("predictions", [])):
        print(f"  row {i}: {describe_prediction(prediction)}")
    serving.shutdown()
    from rayline.runtime import disconnect

    disconnect()
    print(f"demo finished in {time.perf_counter() - began:.0f} s")
    return 0 if response.status_code == 200 else 1


def cmd_serve(args) -> int:
    from rayline.registry import Registry
    from rayline.registry_layout import split_model_spec

    cfg = load_config(args.pipeline, args.set) if args.pipeline else None
    root = cfg.storage.root if cfg else args.root
    name, version = split_model_spec(args.model) if args.model else (None, None)
    if cfg is not None:
        if name is not None and name != cfg.model_name:
            raise ConfigError(f"--model {args.model}: {args.pipeline} serves model {cfg.model_name!r}; drop one")
        name = cfg.model_name  # this pipeline's model, never another's
    if version is not None and args.version is not None and version != args.version:
        raise ConfigError(f"--model {args.model} and --version {args.version} name two versions; give one")
    registry = Registry(root)
    model = registry.resolve(name, version or args.version)
    dashboard = start(args)
    return serve_until_interrupted(root, model, cfg.serve if cfg else None, dashboard)


def cmd_predict(args) -> int:
    from rayline.predict import predict_files

    start(args)
    model, rows = predict_files(args.root, args.model, args.input, args.output)
    print(f"predicted {rows} rows with model {model} into {args.output}")
    return 0


def cmd_models(args) -> int:
    from rayline.registry import Registry
    from rayline.registry_layout import check_name

    registry = Registry(args.root)
    names = [registry.require(check_name(args.name))] if args.name else registry.names()
    if not names:
        print(f"no models registered under {registry.path}")
        return 0
    serving = {name: registry.model(name).serving_version() for name in names}
    print(models_table(registry.records(args.name), serving))
    print("* = the version of its name served by default (`rayline serve`)")
    return 0


def models_table(records: list[dict], serving: dict[str, str | None]) -> str:
    """Registered versions in aligned columns: name, version, epoch, the key metrics present, created."""
    metrics = [
        f"{split}_{key}"
        for key in ("accuracy", "f1_macro", "roc_auc", "rmse", "mae", "r2")
        for split in ("val", "test")
        if any(f"{split}_{key}" in {**r.get("metrics", {}), **r.get("test_metrics", {})} for r in records)
    ]
    compared = any("comparison" in r.get("evaluation", {}) for r in records)
    rows = [["", "name", "version", "epoch", *metrics, *(["baseline"] if compared else []), "created"]]
    for r in records:
        shown = {**r.get("metrics", {}), **r.get("test_metrics", {})}
        rows.append(
            [
                "*" if serving.get(r["name"]) == r["version"] else "",
                r["name"],
                r["version"],
                str(r["epoch"] + 1),
                *(format_metric(shown.get(k)) for k in metrics),
                *([baseline_verdict(r)] if compared else []),
                r.get("created_at", ""),
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    right = {3, *range(4, 4 + len(metrics))}  # numbers line up on the right
    lines = [
        "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        for row in rows
    ]
    return "\n".join(line.rstrip() for line in lines)


def baseline_verdict(record: dict) -> str:
    """How the version did against the linear baseline on the test split: ok, WORSE, or - (not compared)."""
    comparison = record.get("evaluation", {}).get("comparison")
    if comparison is None:
        return "-"
    return "WORSE" if comparison.get("worse_than_baseline") else "ok"


def format_metric(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def cmd_promote(args) -> int:
    return switch_served_version(args, args.version)


def cmd_rollback(args) -> int:
    return switch_served_version(args, None)


def switch_served_version(args, version: str | None) -> int:
    from rayline.registry import ModelVersion
    from rayline.serve import control

    if args.address or os.environ.get("RAY_ADDRESS"):
        start(args)
    try:
        if version is None:
            model, apps = control.rollback(args.root, args.name)
        else:
            apps = control.promote(args.root, args.name, version)
            model = ModelVersion(args.name, version)
    except control.ServeDeployError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(control.switch_summary(args.root, model, apps))
    return 0


def cmd_submit(args) -> int:
    from rayline import jobs

    submission_id = jobs.submit(
        args.pipeline,
        address=args.address,
        overrides=args.set,
        working_dir=args.working_dir,
        serve=args.serve,
        submission_id=args.job_id,
    )
    print(f"submitted job {submission_id} to {jobs.dashboard_address(args.address)}")
    if not args.wait:
        print(f"follow it with: rayline jobs logs {submission_id} --follow")
        return 0
    final = jobs.follow(submission_id, args.address)
    print(f"job {submission_id} {final}")
    return 0 if final == "SUCCEEDED" else 1


def cmd_jobs(args) -> int:
    from rayline import jobs

    if args.action == "list":
        for job in jobs.list_jobs(args.address):
            print(f"{job.submission_id or job.job_id:36} {job.status!s:10} {job.entrypoint}")
        return 0
    if not args.job_id:
        raise ConfigError(f"rayline jobs {args.action}: needs a job id (see `rayline jobs list`)")
    if args.action == "status":
        info = jobs.status(args.job_id, args.address)
        print(f"{args.job_id} {info.status}" + (f": {info.message}" if info.message else ""))
    elif args.action == "logs" and args.follow:
        final = jobs.follow(args.job_id, args.address)
        print(f"job {args.job_id} {final}")
        return 0 if final == "SUCCEEDED" else 1
    elif args.action == "logs":
        print(jobs.logs(args.job_id, args.address), end="")
    else:
        stopping = jobs.stop(args.job_id, args.address)
        print(f"stopping job {args.job_id}" if stopping else f"job {args.job_id} had already ended")
    return 0


# ---------------------------------------------------------------- shared steps


def start(args) -> str:
    from rayline.runtime import connect

    return connect(verbose=args.verbose, address=getattr(args, "address", None))


def train(cfg: PipelineConfig, args):
    from rayline.metrics import record_epoch
    from rayline.pipeline import format_epoch, train_and_register

    print(f"training {cfg.name}: {cfg.model.kind} on {cfg.train.num_workers} workers, {cfg.train.epochs} epochs")

    def on_epoch(metrics: dict) -> None:
        print(format_epoch(metrics, cfg.train.epochs), flush=True)
        record_epoch(cfg.run_name, metrics)

    return train_and_register(cfg, on_epoch=on_epoch, verbose=args.verbose)


def search(cfg: PipelineConfig, args):
    from rayline.pipeline import search_and_register

    print(f"searching {cfg.name}: {cfg.tune.searcher} + {cfg.tune.scheduler.kind}, {cfg.tune.num_samples} trials")
    return search_and_register(cfg, resume=getattr(args, "resume", False), verbose=args.verbose)


def describe_prediction(prediction: dict) -> str:
    if "label" in prediction:
        return f"label {prediction['label']} (p={prediction['probabilities'][prediction['label']]:.4f})"
    return f"value {prediction['value']:.4f}"


def feature_names(cfg: PipelineConfig) -> set[str]:
    from rayline.data.infer import resolve_features

    return {f.name for f in resolve_features(cfg.data).features}


def print_report(report) -> None:
    shown = " ".join(f"{k}={v:.4f}" for k, v in report.test_metrics.items())
    print(f"registered model {report.version}; test: {shown or '(no test split)'}")


def serve_until_interrupted(root: str, model, serve_cfg: ServeConfig | None, dashboard: str) -> int:
    """serve_cfg None: the serve section the model was trained with (deploy reads it from the checkpoint it loads)."""
    from rayline import serve as serving

    url = serving.deploy(root, model, serve_cfg)
    print(f"serving model {model} at {url}/predict  (docs: {url}/docs)")
    print(f"dashboard: {dashboard}")
    print("press Ctrl-C to stop")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping")
    finally:
        serving.shutdown()
    return 0


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rayline", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, func: Callable, help: str, pipeline: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        p.add_argument("--verbose", action="store_true", help="show Ray's logs and progress bars")
        if pipeline:
            p.add_argument("pipeline", help="pipeline YAML file")
            p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field")
        return p

    validate = command("validate", cmd_validate, "check a pipeline YAML without starting Ray")
    validate.add_argument(
        "--data", action="store_true", help="read the source's first rows (no Ray) and print its features as YAML"
    )
    command("train", cmd_train, "ingest, train and register a model")
    run = command("run", cmd_run, "train, register and serve until Ctrl-C")
    run.add_argument("--no-serve", action="store_true", help="stop after registering")
    tune = command("tune", cmd_tune, "search hyperparameters with Ray Tune and register the best")
    tune.add_argument("--resume", action="store_true", help="continue an interrupted search")
    report = command("tune-report", cmd_tune_report, "redraw a search's table and learning curves", pipeline=False)
    report.add_argument("results_dir", help="the search folder, <storage.root>/tune/<run name>")
    command("demo", cmd_demo, "train, serve, send one HTTP request, shut down")
    serve = command("serve", cmd_serve, "serve a registered model until Ctrl-C", pipeline=False)
    serve.add_argument("pipeline", nargs="?", help="pipeline YAML: serves its model (storage and serve settings too)")
    serve.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    serve.add_argument("--model", metavar="NAME[/vN]", help="model name to serve, without a pipeline")
    serve.add_argument("--version", help="version of the model, e.g. v3 (default: its serving one)")
    serve.add_argument("--root", default=DEFAULT_ROOT, help="storage root (without a pipeline)")
    predict = command("predict", cmd_predict, "batch prediction over a file with Ray Data", pipeline=False)
    predict.add_argument(
        "--model", metavar="NAME[/vN]", help="model name, or one version of it (default: the serving version)"
    )
    predict.add_argument("--input", required=True, help="file, directory or glob of Parquet/CSV/JSON lines")
    predict.add_argument("--output", required=True, help="output directory; its extension picks the format")
    predict.add_argument("--root", default=DEFAULT_ROOT, help="storage root")
    models = command("models", cmd_models, "list registered model versions", pipeline=False)
    models.add_argument("name", nargs="?", help="only this model name's versions")
    models.add_argument("--root", default=DEFAULT_ROOT, help="storage root")
    promote = command("promote", cmd_promote, "serve a registered version, switching running apps", pipeline=False)
    promote.add_argument("name", help="model name (see `rayline models`)")
    promote.add_argument("version", help="version of that model, e.g. v3")
    rollback = command("rollback", cmd_rollback, "serve the model's previously served version again", pipeline=False)
    rollback.add_argument("name", help="model name (see `rayline models`)")
    for p in (promote, rollback):
        p.add_argument("--root", default=DEFAULT_ROOT, help="storage root")
        p.add_argument("--address", help="Ray cluster whose running apps to switch (default: $RAY_ADDRESS)")
    example = command("make-example", cmd_make_example, "write a bundled tabular example as CSV", pipeline=False)
    example.add_argument("name", choices=["breast_cancer", "diabetes"], help="which example")
    example.add_argument("--output", help="CSV path (default: data/NAME.csv)")
    digits = command("make-digits", cmd_make_digits, "write scikit-learn's digits to Parquet", pipeline=False)
    digits.add_argument("--output", default="data/digits.parquet")
    for name in ("train", "run", "tune", "demo", "serve", "predict"):
        sub.choices[name].add_argument(
            "--address", help="join this running Ray cluster (host:port, or auto) instead of starting one"
        )
    add_job_commands(command)
    return parser


def add_job_commands(command: Callable) -> None:
    where = "the cluster's dashboard URL (default: $RAY_API_SERVER_ADDRESS, else http://127.0.0.1:8265)"
    submit = command("submit", cmd_submit, "run a pipeline as a Ray Job on a running cluster (Jobs API)")
    submit.add_argument("--address", help=where)
    submit.add_argument("--wait", action="store_true", help="print the job's logs until it ends; exit 1 on failure")
    submit.add_argument("--serve", action="store_true", help="keep serving after registering, until stopped")
    submit.add_argument("--working-dir", default=".", help="directory uploaded for the job (default: .)")
    submit.add_argument("--job-id", help="submission id (default: rayline-<pipeline>-<random>)")
    jobs = command("jobs", cmd_jobs, "status, logs, stop or list the cluster's Ray Jobs", pipeline=False)
    jobs.add_argument("action", choices=["status", "logs", "stop", "list"])
    jobs.add_argument("job_id", nargs="?", help="submission id (all but list)")
    jobs.add_argument("--address", help=where)
    jobs.add_argument("--follow", action="store_true", help="logs: keep printing until the job ends")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
    except RaylineError as err:
        print(f"error: {err}", file=sys.stderr)
    except KeyboardInterrupt as err:
        print(f"interrupted: {err}" if str(err) else "interrupted", file=sys.stderr)
        return 130
    return 2

if __name__ == "__main__":
    sys.exit(main())
