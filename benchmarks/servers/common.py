"""What every server of the serve benchmark shares: its settings file, the model, and a ready marker.

Imported by the server scripts in this folder, in rayline's virtualenv and in the peers' own one
(benchmarks/.peer-venv), so it imports no Ray: the model is rebuilt with rayline's own `build_model` from
the checkpoint's config and weights, and its outputs are decoded by rayline's own Preprocessor, exactly as
rayline's replica does both.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

PLATFORM = Path(__file__).resolve().parents[2] / "platform"


@dataclass(frozen=True)
class Spec:
    """One server's settings, from the JSON file the benchmark passes as the only argument."""

    checkpoint: str
    model_name: str
    model_version: str
    port: int
    max_batch_size: int
    batch_wait_s: float
    torch_threads: int
    info_file: str
    """Where the server writes its exact configuration once it has built it."""
    storage_root: str = ""
    extra: dict[str, Any] | None = None

    @classmethod
    def from_argv(cls) -> Spec:
        return cls(**json.loads(Path(sys.argv[1]).read_text()))

    def write_info(self, config: str, **details: Any) -> None:
        Path(self.info_file).write_text(json.dumps({"config": config, **details}))


class PeerModel:
    """The checkpoint's model with its input scaling and answer decoding, as rayline's preprocessor does them."""

    def __init__(self, spec: Spec):
        if str(PLATFORM) not in sys.path:
            sys.path.insert(0, str(PLATFORM))
        from rayline.config import PipelineConfig
        from rayline.data.preprocess import NumericStat, Preprocessor, scale_of
        from rayline.models import build_model

        directory = Path(spec.checkpoint)
        config = PipelineConfig.model_validate(json.loads((directory / "config.json").read_text()))
        self.preprocessor = Preprocessor.from_dict(json.loads((directory / "preprocessor.json").read_text()))
        features = self.preprocessor.features
        assert all(isinstance(f, NumericStat) and not f.indicator for f in features), "numeric features only"
        self.mean = np.array([f.mean for f in features], dtype=np.float32)
        self.scale = np.array([scale_of(f.std) for f in features], dtype=np.float32)
        torch.set_num_threads(spec.torch_threads)
        self.model = build_model(config.model, **self.preprocessor.model_shape())
        self.model.load_state_dict(torch.load(directory / "model.pt", weights_only=True, map_location="cpu"))
        self.model.eval()
        self.header = {"model_name": spec.model_name, "model_version": spec.model_version}

    def inputs(self, rows: list[list[float]]) -> np.ndarray:
        return (np.asarray(rows, dtype=np.float32) - self.mean) / self.scale

    def forward(self, x_bf: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.model(torch.from_numpy(x_bf)).numpy()

    def answer(self, out_bo: np.ndarray) -> dict[str, Any]:
        """The response body rayline sends: per row the label and every class's softmax probability."""
        return {**self.header, "predictions": self.preprocessor.decode(out_bo)}
