"""TensorBoard event files of a run whose storage root is a bucket (moto's S3 server on 127.0.0.1): copied there
after each epoch, and read back by TensorBoard itself from the s3:// logdir."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest

from rayline.tracking.tracker import RunTracker
from s3_server import start_s3_server


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = start_s3_server(tmp_path_factory.mktemp("moto") / "moto.log")
    server.create_bucket("runs")
    yield server
    server.stop()


def test_a_runs_tensorboard_files_reach_the_bucket_and_tensorboard_reads_them_there(s3):
    logdir = s3.uri("runs", "rayline/runs/run-s3/tensorboard")
    tracker = RunTracker(run_key="run-s3", run_name="run-s3", tensorboard_dir=logdir)
    for epoch in range(3):
        tracker.log_epoch(epoch, {"train_loss": 1.0 + epoch, "val_accuracy": 0.25 * epoch})
    tracker.finish()

    keys = s3.keys("runs", "rayline/runs/run-s3/tensorboard/")
    assert len(keys) == 1 and "events.out.tfevents." in keys[0], keys
    # TensorBoard's own reader on the s3:// logdir (boto3, endpoint from S3_ENDPOINT, read when TensorBoard is
    # imported), in a process of its own as `tensorboard --logdir s3://runs/rayline/runs` would be.
    read = READ_BACK.format(logdir="s3://runs/rayline/runs/run-s3/tensorboard")
    env = {**os.environ, "S3_ENDPOINT": s3.endpoint}
    done = subprocess.run([sys.executable, "-c", read], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    scalars = json.loads(done.stdout)
    assert scalars["train/loss"] == [[0, 1.0], [1, 2.0], [2, 3.0]]
    assert scalars["val/accuracy"] == [[0, 0.0], [1, 0.25], [2, 0.5]]


READ_BACK = """
import json
from tensorboard.backend.event_processing import event_accumulator
accumulator = event_accumulator.EventAccumulator("{logdir}")
accumulator.Reload()
print(json.dumps({{t: [[e.step, e.value] for e in accumulator.Scalars(t)] for t in accumulator.Tags()["scalars"]}}))
"""


def test_a_bucket_that_refuses_the_files_warns_once_and_training_goes_on(s3, caplog):
    logdir = s3.uri("no-such-bucket", "runs/run-x/tensorboard")
    tracker = RunTracker(run_key="run-x", run_name="run-x", tensorboard_dir=logdir)
    with caplog.at_level(logging.WARNING):
        for epoch in range(3):
            tracker.log_epoch(epoch, {"train_loss": 1.0})
        tracker.finish()
    warnings = [r.getMessage() for r in caplog.records if "TensorBoard files could not be copied" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "endpoint_override" not in warnings[0], "the URI's options stay out of logs"
