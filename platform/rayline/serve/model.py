"""One registry version made ready to answer requests: model, preprocessor, request schema, runtime. No Ray.

A replica holds one of these for the version it serves by default and a few more for
`/v1/models/{version}/predict` and `/v1/models/{name}/{version}/predict`; swapping versions replaces
the whole object at once, so a request never sees one version's preprocessor with another's weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from rayline.data.errors import DataError
from rayline.data.preprocess import Preprocessor
from rayline.registry import ModelVersion, Registry, RegistryError
from rayline.serve.schema import MAX_ROWS, RequestError, RequestSchema, invalid, parse_json, problem

if TYPE_CHECKING:
    from torch import nn

    from rayline.serve.runtime import Runtime


@dataclass(eq=False)
class ServedModel:
    name: str
    version: str
    model: nn.Module
    preprocessor: Preprocessor
    record: dict[str, Any]
    schema: RequestSchema
    runtime: Runtime
    input_columns: list[str] = field(default_factory=list)

    @classmethod
    def load(
        cls,
        storage_root: str | Path,
        name: str | None = None,
        version: str | None = None,
        *,
        max_rows: int = MAX_ROWS,
        runtime: str = "torch",
        threads: int = 1,
    ) -> ServedModel:
        """Load and check a registry version: of `name` (None: the registry's only name), `version` (None: its
        serving version), to run on `runtime` (serve.runtime) with `threads` intra-op threads. RegistryError if
        it is unusable."""
        # Imported here: it imports torch, and Serve's app builder imports this module without loading a model.
        from rayline.serve.runtime import build_runtime

        registry = Registry(storage_root)
        # Checks the manifest hashes; the weights load with weights_only=True.
        loaded = registry.load(registry.resolve(name, version))
        require_finite_weights(loaded.model, loaded.version)
        pre = loaded.preprocessor
        record = registry.record(loaded.version)
        return cls(
            name=loaded.version.name,
            version=loaded.version.version,
            model=loaded.model,
            preprocessor=pre,
            record=record,
            schema=RequestSchema(pre.feature_schema(), max_rows=max_rows),
            runtime=build_runtime(
                runtime, loaded.model, pre, record, ref=str(loaded.version), threads=threads, max_rows=max_rows
            ),
            input_columns=pre.input_columns(),
        )

    def inputs(self, body: bytes, content_type: str | None) -> Any:
        """The runtime's inputs for a request body, or a RequestError that names what is wrong and where."""
        return self.inputs_of(parse_json(body, content_type))

    def inputs_of(self, payload: Any) -> Any:
        """The runtime's inputs for a parsed request (`{"rows": [...]}`), or a RequestError."""
        fast = self.runtime.fast_inputs(payload)
        if fast is not None:
            return fast
        frame, x_bf = self.validated(payload)
        return self.runtime.inputs(frame, x_bf)

    def validated(self, payload: Any) -> tuple[pd.DataFrame, np.ndarray]:
        """The rows of a parsed request, checked (one column per feature), and the preprocessor's float32 inputs."""
        frame = self.schema.validate(payload)
        try:
            with np.errstate(over="ignore"):  # overflow is reported per row and feature just below
                x_bf = self.preprocessor.transform_features(frame)
        except DataError as err:
            raise RequestError(422, str(err), [problem("rows", str(err))]) from None
        # Numbers within float32 range can still overflow it once scaled by a small std.
        rows, columns = np.nonzero(~np.isfinite(x_bf))
        if len(rows):
            msg = "is too large in magnitude for the model (it overflows float32 once scaled)"
            problems = []
            for r, c in zip(rows, columns, strict=True):
                name = self.input_columns[c]
                problems.append(problem(f"rows.{r}.{name}", f"{float(frame[name].iloc[r]):g} {msg}"))
            raise invalid(422, problems)
        return frame, x_bf

    @property
    def ref(self) -> ModelVersion:
        return ModelVersion(self.name, self.version)

    def forward(self, inputs: Any) -> np.ndarray:
        """The runtime's outputs for its inputs (`inputs`, or several of them joined by `concat`)."""
        return self.runtime.predict(inputs)

    def concat(self, parts: list[Any]) -> Any:
        return self.runtime.concat(parts)

    def predictions(self, outputs: np.ndarray) -> list[dict[str, Any]]:
        require_finite_outputs(outputs)
        return self.runtime.predictions(outputs)

    def describe(self) -> dict[str, Any]:
        record = self.record
        return {
            "model_name": self.name,
            "model_version": self.version,
            "pipeline": record.get("pipeline"),
            "run_name": record.get("run_name"),
            "task": self.preprocessor.task,
            "runtime": self.runtime.name,
            "label": self.preprocessor.label,
            "classes": self.preprocessor.classes,
            "features": self.schema.features,
            **record_metrics(record),
            "created_at": record.get("created_at"),
            "data_fingerprint": record.get("data_fingerprint"),
            "code_version": record.get("code_version"),
        }


def record_metrics(record: dict[str, Any]) -> dict[str, Any]:
    """Every metric a registry record holds: validation, test, and the evaluation (confusion matrix, baseline)."""
    return {key: record.get(key, {}) for key in ("metrics", "test_metrics", "evaluation")}


def require_finite_outputs(outputs: np.ndarray) -> None:
    # The weights are checked when the model is loaded, so non-finite outputs come from the inputs.
    bad = np.flatnonzero(~np.isfinite(outputs).all(axis=tuple(range(1, outputs.ndim))))
    if len(bad):
        msg = "the model's output for this row is not finite; its values lie far outside the training data"
        raise invalid(422, [problem(f"rows.{r}", msg) for r in bad])


def require_finite_weights(model: nn.Module, version: ModelVersion | str) -> None:
    bad = [name for name, p in model.state_dict().items() if p.is_floating_point() and not p.isfinite().all()]
    if bad:
        raise RegistryError(f"model version {version} holds NaN or infinite weights in {bad[:5]}; it cannot be served")
