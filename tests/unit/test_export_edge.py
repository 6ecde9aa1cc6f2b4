"""An exported model runs with ONNX Runtime alone (no rayline, no torch) and answers as a Serve replica does; the
int8 copy meets its size and accuracy limits, or the export says so and fails."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from export_models import register_trained, source_frame
from faults import register_tiny_model
from pipelines import digits_pipeline
from rayline.cli import main
from rayline.data.examples import write_example
from rayline.export import export_version
from rayline.registry import Registry
from rayline.serve.model import ServedModel

EDGE_SCRIPT = """
import json, sys
import numpy as np
import onnxruntime as ort

model, contract_file, rows_file = sys.argv[1:]
contract, rows = json.load(open(contract_file)), json.load(open(rows_file))
feed = {}
for spec in contract["inputs"]:
    names = [f["name"] for f in spec["features"]]
    if spec["dtype"] == "float64":
        feed[spec["name"]] = np.array([[np.nan if r[n] is None else r[n] for n in names] for r in rows], np.float64)
    else:
        feed[spec["name"]] = np.array([["" if r[n] is None else str(r[n]) for n in names] for r in rows], object)
session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
answers = dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("rayline", "torch", "pandas"))
print(json.dumps({"label": answers["label"].tolist(), "probabilities": answers["probabilities"].tolist(),
                  "loaded": loaded}))
"""


def quiet(_: str) -> None:
    pass


def cancer_pipeline(tmp_path: Path) -> dict:
    source = tmp_path / "breast_cancer.csv"
    write_example("breast_cancer", source)
    return {
        "name": "cancer",
        "data": {
            "source": str(source),
            "task": "classification",
            "label": "diagnosis",
            "exclude": ["patient_id"],
            "missing": {"numeric": "median", "indicator": True},
        },
        "model": {"kind": "mlp", "hidden_sizes": [16]},
        "storage": {"root": str(tmp_path / "store")},
    }


def json_rows(frame: pd.DataFrame) -> list[dict]:
    """Rows as a client sends them: null for an empty cell."""
    return [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        for row in frame.to_dict("records")
    ]


def test_onnx_runtime_alone_reproduces_the_served_answers(tmp_path):
    root = tmp_path / "store"
    register_trained(root, cancer_pipeline(tmp_path), epochs=10)
    report = export_version(str(root), "cancer", tmp_path / "out", log=quiet)
    served = ServedModel.load(root, "cancer")
    features = [f.name for f in served.preprocessor.features]
    frame = source_frame(str(tmp_path / "breast_cancer.csv"))[features].head(40)
    rows = json_rows(frame)
    rows[1]["size_band"] = None  # a missing category and a missing number, as a client leaves them
    rows[2]["mean_radius"] = None
    rows[3]["size_band"] = "enormous"  # a category not seen in training
    assert sum(v is None for row in rows for v in row.values()) > 3
    (tmp_path / "rows.json").write_text(json.dumps(rows))

    edge = subprocess.run(
        [sys.executable, "-I", "-c", EDGE_SCRIPT, str(report.files[0].path), str(report.contract_path), "rows.json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert edge.returncode == 0, edge.stderr
    answers = json.loads(edge.stdout)

    body = json.dumps({"rows": rows}).encode()
    expected = served.predictions(served.forward(served.inputs(body, "application/json")))
    assert answers["loaded"] == []
    assert answers["label"] == [p["label"] for p in expected]
    classes = served.preprocessor.classes
    probabilities = [[p["probabilities"][c] for c in classes] for p in expected]
    np.testing.assert_allclose(answers["probabilities"], probabilities, rtol=0, atol=1e-5)


def test_int8_copy_is_small_and_as_accurate(tmp_path):
    root = tmp_path / "store"
    pipeline = digits_pipeline(tmp_path, name="digits-wide", model={"kind": "mlp", "hidden_sizes": [256, 256]})
    version = register_trained(root, pipeline, epochs=15)

    report = export_version(str(root), "digits-wide", tmp_path / "out", quantize="int8", log=quiet)

    fp32, int8 = report.files
    assert int8.path.name == "digits-wide-v1.int8.onnx" and int8.entry["quantization"] == "int8-dynamic"
    assert int8.path.stat().st_size <= 0.35 * fp32.path.stat().st_size
    parity = int8.entry["parity"]
    assert parity["metric"] == "accuracy" and parity["torch_metric"] > 0.9
    assert parity["onnx_metric"] >= parity["torch_metric"] - 0.005
    assert int8.entry["accepted_past_limits"] == []
    recorded = Registry(root).record(version)["exports"]
    assert [e["quantization"] for e in recorded] == [None, "int8-dynamic"]


def test_int8_past_its_limits_fails_unless_allowed(tmp_path, capsys):
    register_tiny_model(tmp_path, name="tiny")  # 4 inputs, 8 hidden: graph overhead outweighs its few weights
    out = tmp_path / "out"
    command = ["export", "tiny", "--quantize", "int8", "--output", str(out), "--root", str(tmp_path)]

    assert main(command) == 2
    err = capsys.readouterr().err
    assert "the int8 model is past the limits: the int8 file is" in err and "--allow-accuracy-drop" in err
    assert not (out / "tiny-v1.int8.onnx").exists() and (out / "tiny-v1.onnx").is_file()

    assert main([*command, "--allow-accuracy-drop"]) == 0
    assert "int8 kept with --allow-accuracy-drop" in capsys.readouterr().out
    assert (out / "tiny-v1.int8.onnx").is_file()
    exports = Registry(tmp_path).record(Registry(tmp_path).find("tiny"))["exports"]
    assert [e["quantization"] for e in exports] == [None, None, "int8-dynamic"]
    assert exports[-1]["accepted_past_limits"]
