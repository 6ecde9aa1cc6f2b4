"""A source larger than the object store trains to completion: preparation streams it (no copy of the whole
source in the store, so little or nothing spilled) and the workers read the prepared files themselves.

Runs in its own process with its own embedded cluster, whose object store is capped at Ray's minimum."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import digits_pipeline, write_pipeline

REPO = Path(__file__).resolve().parents[2]
OBJECT_STORE = 80 * 2**20
ROWS, COLUMNS, FILES = 240_000, 64, 4

RUN = """
import json, sys
import ray
from ray._private.internal_api import get_memory_info_reply, get_state_from_address
from rayline.config import load_config
from rayline.pipeline import train_and_register
from rayline.runtime import agent_port_chosen_by_the_os, connect

with agent_port_chosen_by_the_os():
    ray.init(address="local", object_store_memory=int(sys.argv[2]), include_dashboard=True,
             dashboard_host="127.0.0.1", log_to_driver=False)
connect()
lines = []
report = train_and_register(load_config(sys.argv[1]), log=lines.append)
stats = get_memory_info_reply(get_state_from_address(ray.get_runtime_context().gcs_address)).store_stats
print(json.dumps({"lines": lines, "accuracy": report.test_metrics["test_accuracy"],
                  "spilled": int(stats.spilled_bytes_total)}))
ray.shutdown()
"""


def write_source(directory: Path) -> int:
    """ROWS rows of COLUMNS float64 features in FILES files; the label is the argmax of 4 linear scores."""
    directory.mkdir()
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(COLUMNS, 4))
    size = 0
    for i in range(FILES):
        x = rng.normal(size=(ROWS // FILES, COLUMNS))
        columns = {f"f{c:02d}": x[:, c] for c in range(COLUMNS)}
        table = pa.table({**columns, "label": (x @ weights).argmax(axis=1)})
        pq.write_table(table, directory / f"part-{i}.parquet")
        size += table.nbytes
    return size


@pytest.mark.slow
def test_a_source_larger_than_the_object_store_trains_to_completion(tmp_path):
    source_bytes = write_source(tmp_path / "source")
    assert source_bytes > OBJECT_STORE * 1.4, "the source must not fit in the object store"
    pipeline = digits_pipeline(
        tmp_path,
        name="wide",
        data={"source": str(tmp_path / "source"), "features": [f"f{c:02d}" for c in range(COLUMNS)]},
        model={"kind": "mlp", "hidden_sizes": [32]},
        train={"epochs": 1, "batch_size": 256, "baseline": False, "cache_shard_mb": 16},
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "platform"), str(REPO / "tests")])}
    done = subprocess.run(
        [sys.executable, "-c", RUN, str(write_pipeline(tmp_path / "wide.yaml", pipeline)), str(OBJECT_STORE)],
        capture_output=True,
        text=True,
        env=env,
        timeout=400,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert any(line.startswith("data: prepared in") for line in result["lines"]), result["lines"]
    assert result["accuracy"] > 0.6, "a quarter is chance"
    assert result["spilled"] < source_bytes / 2, "streamed, not materialized: far less spilled than the source"
