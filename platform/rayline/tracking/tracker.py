"""Experiment tracking: MLflow runs and TensorBoard event files for training runs and Tune trials.

One `RunTracker` per training run or trial, created where Ray Train V2 lets a process log: rank 0 in
the worker loop for a run or trial, the Tune driver for a search's parent run. A tracker finds its
MLflow run by the tag `rayline.run_key` before creating one, so a resumed run or a restarted worker
logs into the run it had, and epochs already logged are not logged twice.

Tracking never fails or slows training. MLflow calls run on one daemon thread behind a bounded queue
(full: dropped), `finish` waits at most its timeout, and the first error turns MLflow off for that
tracker; a tracker warns at most once about MLflow. A TensorBoard error warns once and turns
TensorBoard off. mlflow and tensorboardX are imported only when a tracker uses them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import numbers
import os
import queue
import re
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from rayline.storage import is_remote

logger = logging.getLogger(__name__)

RUN_KEY_TAG = "rayline.run_key"
CREATED_TAG = "rayline.created_ns"
SETTLE_S = 2.0
PARENT_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"
END_STATUSES = ("FINISHED", "FAILED", "KILLED")

# MLflow's limits (mlflow.utils.validation): longer param values are refused, batches are capped.
MAX_PARAM_CHARS = 6000
MAX_TAG_CHARS = 8000
TRUNCATED = "...[truncated]"
_BATCH = 100

QUEUE_SIZE = 1000
# MLflow's defaults retry for minutes (7 retries, 120 s timeout) so that rate-limited clients
# survive; a tracker must give up fast instead. Read by mlflow at each request.
_CLIENT_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    # set_terminated would print run links to stdout, after one more request.
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}
_TB_PREFIXES = ("train", "val", "test")


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config as MLflow params: {"train.optimizer.lr": "0.01"}; non-strings as JSON."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{name}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            out[name] = _truncate(text, MAX_PARAM_CHARS)
    return out


def tensorboard_tag(metric: str) -> str:
    """`val_accuracy` -> `val/accuracy`, so TensorBoard groups the curves by split."""
    split, sep, rest = metric.partition("_")
    return f"{split}/{rest}" if sep and rest and split in _TB_PREFIXES else metric


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - len(TRUNCATED)] + TRUNCATED


def _redact(text: str) -> str:
    """Drop user:password@ from URLs so a warning never shows credentials."""
    return re.sub(r"//[^/@\s]+@", "//", text)


def _numeric(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, numbers.Real) and not isinstance(v, bool)}


class RunTracker:
    """Logs one training run, one Tune trial or one search's parent run to MLflow and/or TensorBoard.

    `run_key` identifies the run across processes (exactly one MLflow run per key and experiment);
    `parent_key` is the key of the search's parent run, found or created by whoever comes first.
    Neither backend is used when its argument is None. No method raises for a tracking failure.
    """

    def __init__(
        self,
        *,
        run_key: str,
        run_name: str,
        mlflow_uri: str | None = None,
        experiment: str | None = None,
        tensorboard_dir: str | None = None,
        params: Mapping[str, str] | None = None,
        parent_key: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        for key in (run_key, parent_key):
            if key is not None and ("'" in key or "`" in key):
                raise ValueError(f"run key {key!r} contains a quote; use letters, digits, '-', '_', '.', '/'")
        self.run_key, self.run_name, self.parent_key = run_key, run_name, parent_key
        self._uri, self._experiment = mlflow_uri, experiment or "Default"
        self._params, self._tags = dict(params or {}), {k: str(v) for k, v in (tags or {}).items()}
        self._tb_dir, self._tb, self._tb_mirror = tensorboard_dir, None, None
        self._warned: set[str] = set()
        self._mlflow_off = False
        self._warn_lock = threading.Lock()
        self._finished = False
        self._client: Any = None
        self._run_id: str | None = None
        self._logged_steps: dict[str, set[int]] = {}
        self._opened = threading.Event()
        self._queue: queue.Queue = queue.Queue(maxsize=QUEUE_SIZE)
        self._thread: threading.Thread | None = None
        if mlflow_uri is None:
            self._opened.set()
            return
        self._queue.put_nowait((self._open, ()))
        self._thread = threading.Thread(target=self._work, name=f"rayline-tracking-{run_name}", daemon=True)
        self._thread.start()

    # Caller side: cheap, never blocks, never raises.

    def log_epoch(self, epoch: int, metrics: Mapping[str, Any]) -> None:
        """Log one epoch's numeric metrics at step `epoch`; other values are skipped."""
        values = _numeric(metrics)
        if not values:
            return
        self._tensorboard(epoch, values)
        self._submit(self._log_metrics, epoch, values, int(time.time() * 1000))

    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None:
        """Upload a file, or a directory under its own name. It is read later, on the tracker's thread,
        so it must exist until `finish` returns."""
        if self._uri is None or self._finished:
            return
        if not os.path.exists(local_path):
            logger.warning("Tracking: artifact %s does not exist; not logged to MLflow", local_path)
            return
        self._submit(self._upload, local_path, artifact_path)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self._submit(self._log_tags, {k: str(v) for k, v in tags.items()})

    def run_id(self, timeout_s: float = 10) -> str | None:
        """The MLflow run's id, waiting up to `timeout_s` for it to be found or created; None when MLflow
        is off, down or slower than that."""
        self._opened.wait(timeout_s)
        return self._run_id

    def finish(self, status: str = "FINISHED", timeout_s: float = 30) -> None:
        """End the run with `status` after the queued calls, waiting at most `timeout_s` for them."""
        if status not in END_STATUSES:
            raise ValueError(f"status must be one of {END_STATUSES}, not {status!r}")
        if self._finished:
            return
        deadline = time.monotonic() + timeout_s
        self._submit(self._end, status)
        self._finished = True
        self._close_tensorboard()
        if self._thread is None:
            return
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=max(0.0, deadline - time.monotonic()))
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            self._warn_mlflow(f"did not answer within {timeout_s:g} s; what was not yet logged is dropped")

    def _submit(self, fn: Callable[..., None], *args: Any) -> None:
        if self._thread is None or self._finished or self._mlflow_off:
            return
        try:
            self._queue.put_nowait((fn, args))
        except queue.Full:
            self._warn_mlflow("is too slow; dropping what it cannot take")

    def _warn_mlflow(self, problem: str) -> None:
        self._warn_once("mlflow", f"MLflow tracking server {_redact(self._uri or '')} {problem}")

    def _warn_once(self, backend: str, message: str) -> None:
        with self._warn_lock:
            if backend in self._warned:
                return
            self._warned.add(backend)
        logger.warning("Tracking: %s (run %s); training goes on without it", message, self.run_name)

    # TensorBoard, on the caller's thread: local event files, written by tensorboardX's own thread (and, for a
    # folder on an object store, copied there by an EventMirror's thread).

    def _tensorboard(self, epoch: int, values: dict[str, float]) -> None:
        if self._tb_dir is None or self._finished:
            return
        try:
            if self._tb is None:
                from tensorboardX import SummaryWriter

                # purge_step: TensorBoard drops older events from this step on, so a restarted worker's
                # repeated epochs replace the first ones. tensorboardX names files by the second, so two
                # writers in one second would truncate each other's file; the suffix also keeps them in
                # creation order, the order TensorBoard reads them in.
                suffix = f".{time.time_ns()}.{os.getpid()}"
                self._tb = SummaryWriter(logdir=self._local_tb_dir(), purge_step=epoch, filename_suffix=suffix)
            for name, value in values.items():
                self._tb.add_scalar(tensorboard_tag(name), value, global_step=epoch)
            if self._tb_mirror is not None:
                self._tb.flush()
                self._tb_mirror.changed()
        except Exception as error:
            self._warn_once("tensorboard", f"TensorBoard at {self._tb_dir} failed ({type(error).__name__}: {error})")
            self._tb_dir = None

    def _local_tb_dir(self) -> str:
        """Where tensorboardX writes: the folder itself, or a local one mirrored to an object store."""
        if not is_remote(self._tb_dir):
            return self._tb_dir
        from rayline.tracking.mirror import EventMirror

        local = Path(tempfile.mkdtemp(prefix="rayline-tensorboard-"))
        self._tb_mirror = EventMirror(local, self._tb_dir, lambda m: self._warn_once("tensorboard", m))
        return str(local)

    def _close_tensorboard(self, timeout_s: float = 30) -> None:
        if self._tb is None:
            return
        try:
            self._tb.close()
        except Exception as error:
            self._warn_once("tensorboard", f"TensorBoard could not flush ({type(error).__name__}: {error})")
        if self._tb_mirror is not None:
            self._tb_mirror.close(timeout_s)

    # MLflow, on the tracker's thread.

    def _work(self) -> None:
        # finish() puts None last, unless the queue was full: then the worker stops once it has drained it.
        while (item := self._queue.get()) is not None:
            fn, args = item
            if not self._mlflow_off:
                try:
                    fn(*args)
                except Exception as error:
                    self._mlflow_off = True
                    detail = _redact(f"{type(error).__name__}: {error}")
                    self._warn_mlflow(f"failed ({_truncate(detail, 500)})")
            if fn == self._open:
                self._opened.set()
            if self._finished and self._queue.empty():
                return

    def _open(self) -> None:
        for name, value in _CLIENT_ENV.items():
            os.environ.setdefault(name, value)
        from mlflow.tracking import MlflowClient

        self._client = client = MlflowClient(tracking_uri=self._uri)
        experiment_id = _experiment_id(client, self._experiment)
        tags = {**self._tags, RUN_NAME_TAG: self.run_name}
        if self.parent_key is not None:
            tags[PARENT_TAG] = _find_or_create(client, experiment_id, self.parent_key, self.parent_key).info.run_id
        run = _find_or_create(client, experiment_id, self.run_key, self.run_name)
        run_id = run.info.run_id
        if run.info.status != "RUNNING":
            client.update_run(run_id, status="RUNNING")
        self._logged_steps = {key: {m.step for m in client.get_metric_history(run_id, key)} for key in run.data.metrics}
        self._run_id = run_id
        self._log_tags(tags)
        if self._params and not run.data.params:  # MLflow refuses to change a logged param
            self._log_params(self._params)

    def _log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, _truncate(v, MAX_PARAM_CHARS)) for k, v in params.items()]
        for start in range(0, len(items), _BATCH):
            self._client.log_batch(self._run_id, params=items[start : start + _BATCH])

    def _log_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, _truncate(v, MAX_TAG_CHARS)) for k, v in tags.items()]
        for start in range(0, len(items), _BATCH):
            self._client.log_batch(self._run_id, tags=items[start : start + _BATCH])

    def _log_metrics(self, epoch: int, values: dict[str, float], timestamp_ms: int) -> None:
        from mlflow.entities import Metric

        new = {k: v for k, v in values.items() if epoch not in self._logged_steps.get(k, ())}
        if new:
            self._client.log_batch(self._run_id, metrics=[Metric(k, v, timestamp_ms, epoch) for k, v in new.items()])
        for key in new:
            self._logged_steps.setdefault(key, set()).add(epoch)

    def _upload(self, local_path: str, artifact_path: str | None) -> None:
        if os.path.isdir(local_path):
            name = os.path.basename(os.path.normpath(local_path))
            self._client.log_artifacts(self._run_id, local_path, artifact_path or name)
        else:
            self._client.log_artifact(self._run_id, local_path, artifact_path)

    def _end(self, status: str) -> None:
        self._client.set_terminated(self._run_id, status=status)


def _experiment_id(client: Any, name: str) -> str:
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:  # another process created it first
        return client.get_experiment_by_name(name).experiment_id


def _runs_with_key(client: Any, experiment_id: str, key: str) -> list:
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{key}'", max_results=100)
    return sorted(runs, key=lambda run: (int(run.data.tags.get(CREATED_TAG, 0)), run.info.run_id))


def _find_or_create(client: Any, experiment_id: str, key: str, run_name: str) -> Any:
    """The run tagged with `key`, created when there is none. Processes that race may each create one, so
    nobody uses a run younger than SETTLE_S: by then every racer's run is visible (a create takes less)
    and all take the oldest; a creator whose run lost deletes it before anyone logged to it."""
    runs = _runs_with_key(client, experiment_id, key)
    mine = None
    if not runs:
        mine = client.create_run(experiment_id, run_name=run_name, tags={RUN_KEY_TAG: key, CREATED_TAG: _now_ns()})
        runs = [mine]
    young_s = SETTLE_S - (time.time_ns() - int(runs[0].data.tags.get(CREATED_TAG, 0))) / 1e9
    if young_s > 0:
        time.sleep(young_s)
        runs = _runs_with_key(client, experiment_id, key)
    if mine is not None and runs[0].info.run_id != mine.info.run_id:
        client.delete_run(mine.info.run_id)
    return runs[0]


def _now_ns() -> str:
    # Nanoseconds, not MLflow's millisecond start_time: racers within one millisecond must still agree.
    return str(time.time_ns())
