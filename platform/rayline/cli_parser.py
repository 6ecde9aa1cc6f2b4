"""The `rayline` command line: every subcommand's arguments, with the function that runs it passed in by cli.py."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping

DEFAULT_ROOT = os.environ.get("RAYLINE_ROOT", ".rayline")

DESCRIPTION = """\
rayline: one YAML file describes an ML pipeline; rayline runs it on Ray. Ray Data reads and prepares
the data, Ray Train trains (DDP and model-parallel), Ray Tune searches hyperparameters, every model is
registered, and Ray Serve serves it over HTTP. Without --ray-address it starts a local Ray cluster.

start here:
  rayline validate PIPELINE.yaml      check a pipeline without starting Ray
  rayline demo PIPELINE.yaml          train, serve, send one HTTP request, shut down
  rayline run PIPELINE.yaml           train (or search), register, then serve until stopped
  rayline models                      list the registered models
"""

EPILOG = "`rayline COMMAND --help` describes a command. A user error prints one line and exits with 2."

RAY_ADDRESS_HELP = "join this running Ray cluster (host:port of its GCS, or auto) instead of starting one"
DASHBOARD_HELP = "the cluster's dashboard URL (default: $RAY_API_SERVER_ADDRESS, else http://127.0.0.1:8265)"


def build_parser(handlers: Mapping[str, Callable], version: str) -> argparse.ArgumentParser:
    """handlers: the function that runs each subcommand, by name; version: what --version prints."""
    parser = argparse.ArgumentParser(
        prog="rayline", description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=version)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, pipeline: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=handlers[name])
        p.add_argument("--verbose", action="store_true", help="show Ray's logs and progress bars")
        if pipeline:
            p.add_argument("pipeline", help="pipeline YAML file")
            p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field")
        return p

    validate = command("validate", "check a pipeline YAML without starting Ray")
    validate.add_argument(
        "--data", action="store_true", help="read the source's first rows (no Ray) and print its features as YAML"
    )
    command("train", "ingest, train and register a model")
    run = command("run", "train, register and serve until Ctrl-C or SIGTERM")
    run.add_argument("--no-serve", action="store_true", help="stop after registering")
    tune = command("tune", "search hyperparameters with Ray Tune and register the best")
    tune.add_argument("--resume", action="store_true", help="continue an interrupted search")
    report = command("tune-report", "redraw a search's table and learning curves", pipeline=False)
    report.add_argument(
        "results_dir", help="the search folder, <storage.root>/tune/<run name> (a path or an object-store URI)"
    )
    command("demo", "train, serve, send one HTTP request, shut down")
    add_serving_commands(command)
    example = command("make-example", "write a bundled tabular example as CSV", pipeline=False)
    example.add_argument("name", choices=["breast_cancer", "breast_cancer_hospitals", "diabetes"], help="which example")
    example.add_argument("--output", help="CSV path (default: data/NAME.csv)")
    digits = command("make-digits", "write scikit-learn's digits to Parquet", pipeline=False)
    digits.add_argument("--output", default="data/digits.parquet")
    for name in ("train", "run", "tune", "demo", "serve", "predict"):
        ray_address_option(sub.choices[name], RAY_ADDRESS_HELP)
    add_job_commands(command)
    return parser


def add_serving_commands(command: Callable) -> None:
    serve = command("serve", "serve a registered model until Ctrl-C or SIGTERM", pipeline=False)
    serve.add_argument("pipeline", nargs="?", help="pipeline YAML: serves its model (storage and serve settings too)")
    serve.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    serve.add_argument("--model", metavar="NAME[/vN]", help="model name to serve, without a pipeline")
    serve.add_argument("--version", help="version of the model, e.g. v3 (default: its serving one)")
    serve.add_argument("--root", default=DEFAULT_ROOT, help="storage root (without a pipeline)")
    predict = command(
        "predict", "batch prediction over a file with Ray Data, or through a running endpoint", pipeline=False
    )
    predict.add_argument(
        "--model", metavar="NAME[/vN]", help="model name, or one version of it (default: the serving version)"
    )
    predict.add_argument("--input", required=True, help="file, directory or glob of Parquet/CSV/JSON lines")
    predict.add_argument(
        "--output",
        help="output directory, its extension picks the format (required without --endpoint); with --endpoint, "
        "a JSON-lines file (default: print each prediction)",
    )
    predict.add_argument(
        "--endpoint",
        metavar="URL",
        help="send the rows to a running endpoint instead: http://host:port[/prefix] or grpc://host:port[/app] "
        "(bearer token: RAYLINE_API_TOKEN)",
    )
    predict.add_argument("--root", default=DEFAULT_ROOT, help="storage root")
    export = command("export", "write a registered version as an ONNX file with its preprocessing", pipeline=False)
    export.add_argument("model", metavar="NAME[/vN]", help="model name (its serving version) or one version of it")
    export.add_argument("--format", dest="fmt", default="onnx", choices=["onnx"], help="file format (onnx)")
    export.add_argument(
        "--quantize", choices=["int8"], help="also write an int8 copy (ONNX Runtime dynamic quantization)"
    )
    export.add_argument(
        "--allow-accuracy-drop", action="store_true", help="keep an int8 copy that is past the size or accuracy limits"
    )
    export.add_argument(
        "--output", required=True, help="local folder for the .onnx and .json files (created if needed)"
    )
    export.add_argument("--root", default=DEFAULT_ROOT, help="storage root (a path or an object-store URI)")
    models = command("models", "list registered model versions", pipeline=False)
    models.add_argument("name", nargs="?", help="only this model name's versions")
    models.add_argument("--root", default=DEFAULT_ROOT, help="storage root")
    promote = command("promote", "serve a registered version, switching running apps", pipeline=False)
    promote.add_argument("name", help="model name (see `rayline models`)")
    promote.add_argument("version", help="version of that model, e.g. v3")
    rollback = command("rollback", "serve the model's previously served version again", pipeline=False)
    rollback.add_argument("name", help="model name (see `rayline models`)")
    for p in (promote, rollback):
        p.add_argument("--root", default=DEFAULT_ROOT, help="storage root")
        ray_address_option(
            p,
            "the Ray cluster (host:port of its GCS, or auto) whose running apps to switch "
            "(default: $RAY_ADDRESS; without one only the registry marker moves)",
        )


def add_job_commands(command: Callable) -> None:
    submit = command("submit", "run a pipeline as a Ray Job on a running cluster (Jobs API)")
    dashboard_option(submit)
    submit.add_argument("--wait", action="store_true", help="print the job's logs until it ends; exit 1 on failure")
    submit.add_argument("--serve", action="store_true", help="keep serving after registering, until stopped")
    submit.add_argument("--working-dir", default=".", help="directory uploaded for the job (default: .)")
    submit.add_argument("--job-id", help="submission id (default: rayline-<pipeline>-<random>)")
    jobs = command("jobs", "status, logs, stop or list the cluster's Ray Jobs", pipeline=False)
    jobs.add_argument("action", choices=["status", "logs", "stop", "list"])
    jobs.add_argument("job_id", nargs="?", help="submission id (all but list)")
    dashboard_option(jobs)
    jobs.add_argument("--follow", action="store_true", help="logs: keep printing until the job ends")


def ray_address_option(p: argparse.ArgumentParser, help: str) -> None:
    """--ray-address: where Ray itself listens. --address, its old name, still works (hidden from --help)."""
    p.add_argument("--ray-address", dest="ray_address", metavar="HOST:PORT", help=help)
    p.add_argument("--address", dest="ray_address", help=argparse.SUPPRESS)


def dashboard_option(p: argparse.ArgumentParser) -> None:
    """--dashboard: the dashboard's HTTP URL, which serves the Jobs API. --address, its old name, still works."""
    p.add_argument("--dashboard", dest="dashboard", metavar="URL", help=DASHBOARD_HELP)
    p.add_argument("--address", dest="dashboard", help=argparse.SUPPRESS)
