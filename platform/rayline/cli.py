"""The `rayline` command: one function per subcommand (their arguments: cli_parser.py), and main."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator

from rayline.cli_output import describe_prediction, models_table, print_report
from rayline.config import ConfigError, PipelineConfig, ServeConfig, load_config
from rayline.errors import RaylineError

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
    with writing(output):
        rows = write_example(args.name, output)
    print(f"wrote {rows} rows of the {args.name} example to {output}")
    return 0


def cmd_make_digits(args) -> int:
    from rayline.data import write_digits

    with writing(args.output):
        rows = write_digits(args.output)
    print(f"wrote {rows} rows of scikit-learn's digits to {args.output}")
    return 0


@contextlib.contextmanager
def writing(path: str) -> Iterator[None]:
    """An --output that cannot be written (no such folder, no permission) as a one-line error."""
    from rayline.data import DataError

    try:
        yield
    except OSError as err:
        raise DataError(f"--output {path}: cannot write it: {err.strerror or err}") from None


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
    from rayline.storage import display, join
    from rayline.tune.report import report_from_dir

    print(report_from_dir(args.results_dir))
    written = [display(join(args.results_dir, name)) for name in ("trials.txt", "learning_curves.png")]
    print(f"wrote {written[0]} and {written[1]}")
    return 0


def cmd_run(args) -> int:
    cfg = load_config(args.pipeline, args.set)
    dashboard = start(args)
    report = search(cfg, args) if cfg.tune is not None else train(cfg, args)
    print_report(report)
    if args.no_serve:
        return 0
    return serve_until_interrupted(cfg.storage.uri, report.version, cfg.serve, dashboard)


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
    url = serving.deploy(cfg.storage.uri, report.version, cfg.serve)
    rows = read_source(cfg.data).take(2)
    truth = [row.pop(cfg.data.label) for row in rows]
    features = feature_names(cfg)
    body = {"rows": [{k: getattr(v, "item", lambda v=v: v)() for k, v in r.items() if k in features} for r in rows]}
    print(f"POST {url}/predict with {len(rows)} rows from {cfg.data.source} (true labels: {truth})")
    response = httpx.post(f"{url}/predict", json=body, timeout=30)
    print(f"HTTP {response.status_code}: {json.dumps(response.json())[:300]}...")
    for i, prediction in enumerate(response.json().get("predictions", [])):
        print(f"  row {i}: {describe_prediction(prediction)}")
    from rayline.runtime import disconnect

    disconnect()  # Serve first, then Ray: no warning about Serve's controller on the way out
    print(f"demo finished in {time.perf_counter() - began:.0f} s")
    return 0 if response.status_code == 200 else 1


def cmd_serve(args) -> int:
    from rayline.registry import Registry
    from rayline.registry_layout import split_model_spec

    cfg = load_config(args.pipeline, args.set) if args.pipeline else None
    root = cfg.storage.uri if cfg else args.root
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
    from rayline.predict import output_format, predict_files
    from rayline.registry import Registry

    if args.endpoint:
        return predict_through_endpoint(args)
    if not args.output:
        raise ConfigError("rayline predict: --output is required (or --endpoint, to send the rows to a server)")
    Registry(args.root).find(args.model)  # an unknown model or output format is refused before Ray starts
    output_format(args.output)
    start(args)
    model, rows = predict_files(args.root, args.model, args.input, args.output)
    print(f"predicted {rows} rows with model {model} into {args.output}")
    return 0


def predict_through_endpoint(args) -> int:
    """`rayline predict --endpoint URL`: the input's rows through a running endpoint (rayline.client), no Ray."""
    from rayline.client import connect, predict_frame
    from rayline.data.files import resolve_source
    from rayline.data.read import read_sample
    from rayline.registry_layout import split_model_spec

    name, version = split_model_spec(args.model) if args.model else (None, None)
    frame = read_sample(resolve_source(args.input), ENDPOINT_MAX_ROWS, args.input).to_pandas()
    with connect(args.endpoint) as client:
        answer = predict_frame(client, frame, name, version)
    where = f"model {answer['model_name']}/{answer['model_version']} at {args.endpoint}"
    if args.output:
        with writing(args.output), open(args.output, "w") as out:
            out.writelines(json.dumps(p) + "\n" for p in answer["predictions"])
        print(f"predicted {len(frame)} rows with {where} into {args.output}")
        return 0
    for i, prediction in enumerate(answer["predictions"]):
        print(f"row {i}: {describe_prediction(prediction)}")
    print(f"predicted {len(frame)} rows with {where}")
    return 0


ENDPOINT_MAX_ROWS = 100_000
"""Most rows `rayline predict --endpoint` sends (batch prediction over Ray Data is for more)."""


def cmd_export(args) -> int:
    from rayline.export import export_version

    report = export_version(
        args.root,
        args.model,
        args.output,
        fmt=args.fmt,
        quantize=args.quantize,
        allow_accuracy_drop=args.allow_accuracy_drop,
    )
    written = ", ".join(str(f.path) for f in report.files)
    print(f"exported {report.model}: {written}; inputs and outputs described in {report.contract_path}")
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


def cmd_promote(args) -> int:
    return switch_served_version(args, args.version)


def cmd_rollback(args) -> int:
    return switch_served_version(args, None)


def switch_served_version(args, version: str | None) -> int:
    from rayline.registry import ModelVersion
    from rayline.serve import control

    if args.ray_address or os.environ.get("RAY_ADDRESS"):
        start(args)
    # A failed switch is a ServeDeployError, a RaylineError: main prints it and exits with 2.
    if version is None:
        model, apps = control.rollback(args.root, args.name)
    else:
        apps = control.promote(args.root, args.name, version)
        model = ModelVersion(args.name, version)
    print(control.switch_summary(args.root, model, apps))
    return 0


def cmd_submit(args) -> int:
    from rayline import jobs

    submission_id = jobs.submit(
        args.pipeline,
        address=args.dashboard,
        overrides=args.set,
        working_dir=args.working_dir,
        serve=args.serve,
        submission_id=args.job_id,
    )
    print(f"submitted job {submission_id} to {jobs.dashboard_address(args.dashboard)}")
    if not args.wait:
        print(f"follow it with: rayline jobs logs {submission_id} --follow")
        return 0
    final = jobs.follow(submission_id, args.dashboard)
    print(f"job {submission_id} {final}")
    return 0 if final == "SUCCEEDED" else 1


def cmd_jobs(args) -> int:
    from rayline import jobs

    if args.action == "list":
        for job in jobs.list_jobs(args.dashboard):
            print(f"{job.submission_id or job.job_id:36} {job.status!s:10} {job.entrypoint}")
        return 0
    if not args.job_id:
        raise ConfigError(f"rayline jobs {args.action}: needs a job id (see `rayline jobs list`)")
    if args.action == "status":
        info = jobs.status(args.job_id, args.dashboard)
        print(f"{args.job_id} {info.status}" + (f": {info.message}" if info.message else ""))
    elif args.action == "logs" and args.follow:
        final = jobs.follow(args.job_id, args.dashboard)
        print(f"job {args.job_id} {final}")
        return 0 if final == "SUCCEEDED" else 1
    elif args.action == "logs":
        print(jobs.logs(args.job_id, args.dashboard), end="")
    else:
        stopping = jobs.stop(args.job_id, args.dashboard)
        print(f"stopping job {args.job_id}" if stopping else f"job {args.job_id} had already ended")
    return 0


# ---------------------------------------------------------------- shared steps


MODULES_AFTER_START = {
    "train": ("rayline.pipeline",),
    "tune": ("rayline.pipeline",),
    "run": ("rayline.pipeline", "rayline.serve.control"),
    "demo": ("rayline.pipeline", "rayline.serve.control"),
    "serve": ("rayline.serve.control",),
    "predict": ("rayline.predict",),
}
"""What each command imports once its cluster is up. They are imported while the cluster starts, which is
mostly waiting on the processes Ray launches: about a second of `rayline train`'s start-up on 2 cores."""


def start(args) -> str:
    from rayline.runtime import connect, quiet_serve

    importing = import_in_background(MODULES_AFTER_START.get(args.command, ()))
    dashboard = connect(verbose=args.verbose, address=args.ray_address)
    importing.join()
    if args.command in ("run", "demo", "serve") and not args.verbose:
        quiet_serve()
    stop_on_sigterm()
    return dashboard


def import_in_background(modules: tuple[str, ...]) -> threading.Thread:
    def run() -> None:
        for name in modules:
            # Any failure (a missing optional package, the interpreter's import-deadlock guard) is left to the
            # import where the module is used, which raises it in the command's own thread.
            with contextlib.suppress(Exception):
                importlib.import_module(name)

    thread = threading.Thread(target=run, name="rayline-imports", daemon=True)
    thread.start()
    return thread


class Terminated(KeyboardInterrupt):
    """SIGTERM (docker stop, systemctl stop, a deleted Kubernetes pod), raised where Ctrl-C raises
    KeyboardInterrupt, so both leave the same way: Serve, then the embedded cluster, shut down."""


def stop_on_sigterm() -> None:
    """Take SIGTERM back from Ray: at ray.init its core worker installs a C-level handler that prints a
    stack dump and aborts. A second SIGTERM while shutting down is ignored (SIGKILL still ends it)."""
    import signal

    def terminate(signum, frame) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, terminate)


def train(cfg: PipelineConfig, args):
    from rayline.metrics import record_epoch
    from rayline.pipeline import format_epoch, train_and_register

    if cfg.federated is not None:
        fed = cfg.federated
        clients = (
            f"the clients of column {fed.partition_by!r}"
            if fed.partition_by
            else "one client per file of data.source"
            if fed.client_files
            else f"{fed.clients} clients"
        )
        print(f"training {cfg.name} by federated learning: {cfg.model.kind}, {fed.algorithm} over {clients}")
        return train_and_register(cfg, verbose=args.verbose)
    print(f"training {cfg.name}: {cfg.model.kind} on {cfg.train.num_workers} workers, {cfg.train.epochs} epochs")

    def on_epoch(metrics: dict) -> None:
        print(format_epoch(metrics, cfg.train.epochs), flush=True)
        record_epoch(cfg.run_name, metrics)

    return train_and_register(cfg, on_epoch=on_epoch, verbose=args.verbose)


def search(cfg: PipelineConfig, args):
    from rayline.pipeline import search_and_register

    print(f"searching {cfg.name}: {cfg.tune.searcher} + {cfg.tune.scheduler.kind}, {cfg.tune.num_samples} trials")
    return search_and_register(cfg, resume=getattr(args, "resume", False), verbose=args.verbose)


def feature_names(cfg: PipelineConfig) -> set[str]:
    from rayline.data.infer import resolve_features

    return {f.name for f in resolve_features(cfg.data).features}


def trained_serve_config(root: str, model) -> ServeConfig:
    """The serve section the version was trained with (its checkpoint's config; nothing else is read)."""
    from rayline.checkpoint import checkpoint_config
    from rayline.registry import Registry

    registry = Registry(root)
    version = registry.resolve(model.name, model.version) if model else registry.resolve()
    return checkpoint_config(registry.checkpoint_dir(version)).serve


def serve_until_interrupted(root: str, model, serve_cfg: ServeConfig | None, dashboard: str) -> int:
    """serve_cfg None: the serve section the model was trained with (deploy reads it from the checkpoint it loads)."""
    from rayline import serve as serving

    url = serving.deploy(root, model, serve_cfg)
    print(f"serving model {model} at {url}/predict  (docs: {url}/docs)")
    if (grpc := serving.grpc_endpoint(serve_cfg or trained_serve_config(root, model))) is not None:
        print(f"gRPC (service rayline.Rayline, rayline/serve/rayline.proto) at {grpc}")
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


COMMANDS: dict[str, Callable] = {
    "validate": cmd_validate,
    "train": cmd_train,
    "run": cmd_run,
    "tune": cmd_tune,
    "tune-report": cmd_tune_report,
    "demo": cmd_demo,
    "serve": cmd_serve,
    "predict": cmd_predict,
    "export": cmd_export,
    "models": cmd_models,
    "promote": cmd_promote,
    "rollback": cmd_rollback,
    "make-example": cmd_make_example,
    "make-digits": cmd_make_digits,
    "submit": cmd_submit,
    "jobs": cmd_jobs,
}


def build_parser():
    from rayline.cli_parser import build_parser as parser_for

    return parser_for(COMMANDS, version_text())


def version_text() -> str:
    """`rayline --version`: rayline's own version and the Ray and torch it runs on."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    return f"rayline {installed('rayline')} (ray {installed('ray')}, torch {installed('torch')})"


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 done (a server asked to stop by Ctrl-C or SIGTERM is done too), 2 a user error (one
    line on stderr), 130 work cut short by Ctrl-C, 143 by SIGTERM, 1 a failed job or request."""
    import signal

    args = build_parser().parse_args(argv)
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"config error: {one_line(err)}", file=sys.stderr)
    except RaylineError as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
    except Terminated:
        print("terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt as err:
        print(f"interrupted: {err}" if str(err) else "interrupted", file=sys.stderr)
        return 130
    finally:
        if sigterm is not None:  # None: a handler not set from Python (Ray's), which cannot be put back
            signal.signal(signal.SIGTERM, sigterm)
    return 2


def run() -> int:
    """The `rayline` command: main(), then an exit without the interpreter's last full garbage collection.

    That collection walks every object torch, Ray and pandas left behind, about a second of CPU after the work is
    done (and after the atexit handlers, Ray's shutdown among them, which still run). Python does not promise to
    finalize objects alive at exit, so freezing them changes nothing a command relies on; main() itself, called
    in-process by tests and jobs, frees as usual."""
    import gc

    code = main()
    gc.freeze()
    return code


def one_line(err: Exception) -> str:
    """The message on one line: a ConfigError lists each bad field on a line of its own."""
    return "; ".join(line.strip() for line in str(err).splitlines() if line.strip(" ^"))


if __name__ == "__main__":
    sys.exit(run())
