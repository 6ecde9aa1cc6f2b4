"""What runs a replica's forward pass (`serve.runtime`): torch, or ONNX Runtime on the exported graph. No Ray.

Both take the same validated rows and answer the same predictions; only the model call differs:

- `TorchRuntime`: float32 model inputs made by the preprocessor (encode.py's fast path, else
  `Preprocessor.transform_features`), the checkpoint's torch module, then `Preprocessor.decode` of its outputs;
- `OnnxRuntime`: raw feature values in model order (encode.RawRows, the graph's inputs as edge/contract.py
  describes them), the exported graph with the preprocessing and the softmax inside, run by
  `onnxruntime.InferenceSession`.

A replica builds the graph from the checkpoint it loads (the file `rayline export` recorded for that version,
when it is still there with its recorded hash; else exported in memory), and checks it against torch on rows
drawn from the preprocessor's statistics before it serves a request with it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from torch import nn

from rayline.data.preprocess import Preprocessor
from rayline.registry import RegistryError
from rayline.serve.encode import FastEncoder, RawRows

RUNTIMES = ("torch", "onnxruntime")
CHECK_ROWS = 64
"""Rows the ONNX graph is checked on against torch when a replica loads it."""
CHECK_TOLERANCE = 1e-5
"""Largest absolute difference allowed there (probabilities, or values in units of the label's std)."""


class Runtime(Protocol):
    name: str

    def fast_inputs(self, payload: Any) -> Any | None:
        """A well-formed request's rows as this runtime takes them; None asks for the validating path."""
        ...

    def inputs(self, frame: pd.DataFrame, x_bf: np.ndarray) -> Any:
        """Validated rows (the schema's frame, and the preprocessor's float32 inputs) as this runtime takes them."""
        ...

    def concat(self, parts: list[Any]) -> Any: ...

    def predict(self, inputs: Any) -> np.ndarray:
        """Outputs [n, ...] for `predictions`."""
        ...

    def predictions(self, outputs: np.ndarray) -> list[dict[str, Any]]: ...


class TorchRuntime:
    name = "torch"

    def __init__(self, model: nn.Module, preprocessor: Preprocessor, encoder: FastEncoder):
        self.model = model
        self.preprocessor = preprocessor
        self.encoder = encoder

    def fast_inputs(self, payload: Any) -> np.ndarray | None:
        return self.encoder.encode(payload)

    def inputs(self, frame: pd.DataFrame, x_bf: np.ndarray) -> np.ndarray:
        return x_bf

    def concat(self, parts: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(parts)

    def predict(self, x_bf: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.model(torch.from_numpy(x_bf)).numpy()

    def predictions(self, outputs: np.ndarray) -> list[dict[str, Any]]:
        return self.preprocessor.decode(outputs)


class OnnxRuntime:
    name = "onnxruntime"

    def __init__(self, session: Any, preprocessor: Preprocessor, encoder: FastEncoder, source: str):
        self.session = session
        self.preprocessor = preprocessor
        self.encoder = encoder
        self.source = source
        """Where the graph came from: the recorded export's file, or "exported in memory"."""
        self.classification = preprocessor.classes is not None
        self.outputs = ["probabilities"] if self.classification else ["value"]

    def fast_inputs(self, payload: Any) -> RawRows | None:
        return self.encoder.raw(payload)

    def inputs(self, frame: pd.DataFrame, x_bf: np.ndarray) -> RawRows:
        from rayline.edge.contract import CATEGORICAL_INPUT, NUMERIC_INPUT, raw_inputs
        from rayline.edge.graph import InputLayout

        feed = raw_inputs(frame, InputLayout.of(self.preprocessor))
        return RawRows(feed.get(NUMERIC_INPUT), feed.get(CATEGORICAL_INPUT))

    def concat(self, parts: list[RawRows]) -> RawRows:
        return RawRows.concat(parts)

    def predict(self, rows: RawRows) -> np.ndarray:
        from rayline.edge.contract import CATEGORICAL_INPUT, NUMERIC_INPUT

        feed = {}
        if rows.numeric is not None:
            feed[NUMERIC_INPUT] = rows.numeric
        if rows.categorical is not None:
            feed[CATEGORICAL_INPUT] = rows.categorical
        (out,) = self.session.run(self.outputs, feed)
        return out

    def predictions(self, outputs: np.ndarray) -> list[dict[str, Any]]:
        if not self.classification:
            return [{"value": float(v)} for v in outputs]
        classes = self.preprocessor.classes
        # float64 as Preprocessor.decode answers, so both runtimes send the same JSON numbers' precision.
        p = np.asarray(outputs, dtype=np.float64)
        return [
            {"label": classes[int(row.argmax())], "probabilities": dict(zip(classes, row.tolist(), strict=True))}
            for row in p
        ]


# ---------------------------------------------------------------- building a runtime


def build_runtime(
    kind: str,
    model: nn.Module,
    preprocessor: Preprocessor,
    record: dict[str, Any],
    *,
    ref: str,
    threads: int,
    max_rows: int,
) -> Runtime:
    """The runtime `kind` for the loaded version `ref` ("name/vN"; `record` is its registry record); RegistryError
    when its ONNX graph cannot be made or answers differently from torch."""
    encoder = FastEncoder(preprocessor, max_rows=max_rows)
    if kind == "torch":
        return TorchRuntime(model, preprocessor, encoder)
    if kind != "onnxruntime":
        raise ValueError(f"serve.runtime {kind!r}: expected one of {', '.join(RUNTIMES)}")
    graph, source = onnx_graph(model, preprocessor, record, ref)
    runtime = OnnxRuntime(onnx_session(graph, threads), preprocessor, encoder, source)
    check_against_torch(runtime, TorchRuntime(model, preprocessor, encoder), ref)
    return runtime


def onnx_graph(model: nn.Module, preprocessor: Preprocessor, record: dict[str, Any], ref: str) -> tuple[bytes, str]:
    """The serialized graph and where it came from: the version's recorded fp32 export if its file still has the
    recorded hash, else a fresh export (torch's TorchScript exporter first: a fraction of dynamo's time)."""
    recorded = recorded_export(record)
    if recorded is not None:
        return recorded
    from rayline.edge.contract import ExportError
    from rayline.edge.onnx import export_onnx, metadata_for

    with tempfile.TemporaryDirectory(prefix="rayline-onnx-") as folder:
        path = Path(folder) / "model.onnx"
        try:
            export_onnx(preprocessor, model, path, metadata_for(preprocessor, ref), ("torchscript", "dynamo"))
        except ExportError as err:
            raise RegistryError(f"model version {ref} cannot run on serve.runtime onnxruntime: {err}") from None
        return path.read_bytes(), "exported in memory"


def recorded_export(record: dict[str, Any]) -> tuple[bytes, str] | None:
    """The newest fp32 export `rayline export` recorded for this version, if its file is intact."""
    import hashlib

    for entry in reversed(record.get("exports") or []):
        if entry.get("format") != "onnx" or entry.get("quantization") is not None:
            continue
        try:
            data = Path(entry["file"]).read_bytes()
        except (OSError, KeyError, TypeError):
            continue
        if hashlib.sha256(data).hexdigest() == entry.get("sha256"):
            return data, entry["file"]
    return None


def onnx_session(graph: bytes, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    # As torch's threads in a replica: replicas scale out, and extra intra-op threads fight over the same cores.
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])


def check_against_torch(onnx: OnnxRuntime, reference: TorchRuntime, version: str) -> None:
    """Refuse a graph that does not answer as torch does on rows drawn from the preprocessor's statistics."""
    from rayline.edge.rows import synthetic_rows

    pre = onnx.preprocessor
    frame = synthetic_rows(pre, CHECK_ROWS)
    x_bf = pre.transform_features(frame)
    expected = answers_matrix(reference.predictions(reference.predict(x_bf)), pre)
    got = answers_matrix(onnx.predictions(onnx.predict(onnx.inputs(frame, x_bf))), pre)
    diff = float(np.max(np.abs(expected - got)))
    if pre.classes is None:
        diff /= pre.target_std or 1.0
    if not diff <= CHECK_TOLERANCE:
        raise RegistryError(
            f"model version {version}: its ONNX graph ({onnx.source}) answers differently from torch by up to "
            f"{diff:.3g} (tolerance {CHECK_TOLERANCE:g}); serve it with runtime torch"
        )


def answers_matrix(answers: list[dict[str, Any]], pre: Preprocessor) -> np.ndarray:
    if pre.classes is None:
        return np.array([a["value"] for a in answers], dtype=np.float64)
    return np.array([[a["probabilities"][c] for c in pre.classes] for a in answers], dtype=np.float64)
