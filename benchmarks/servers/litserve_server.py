"""LitServe with its dynamic batching, run from the peers' own virtualenv (benchmarks/.peer-venv).

Configured as LitServe's docs recommend for a CPU model: `max_batch_size` and `batch_timeout` on the
LitAPI, `batch`/`unbatch` for numpy inputs, `fast_queue=True` (ZeroMQ between the HTTP server and the
worker, advised above 100 requests/s), one inference worker (`workers_per_device=1`, as many HTTP
servers as workers: LitServe's default), the default 30 s request timeout, torch with the benchmark's
thread count in the worker.
"""

from __future__ import annotations

from importlib.metadata import version

import litserve as ls
import numpy as np
from common import PeerModel, Spec


class DigitsAPI(ls.LitAPI):
    def __init__(self, spec: Spec):
        super().__init__(max_batch_size=spec.max_batch_size, batch_timeout=spec.batch_wait_s, api_path="/predict")
        self.settings = spec
        self.rows_per_request: list[int] = []

    def setup(self, device: str) -> None:
        self.model = PeerModel(self.settings)  # in the worker process: sets its torch threads there

    def decode_request(self, request: dict) -> np.ndarray:
        return self.model.inputs(request["rows"])

    def batch(self, inputs: list[np.ndarray]) -> np.ndarray:
        # The worker calls batch, predict and unbatch in turn for one batch, so the counts stay paired.
        self.rows_per_request = [len(x) for x in inputs]
        return np.concatenate(inputs)

    def predict(self, x_bf: np.ndarray) -> np.ndarray:
        return self.model.forward(x_bf)

    def unbatch(self, out_bo: np.ndarray) -> list[np.ndarray]:
        return np.split(out_bo, np.cumsum(self.rows_per_request)[:-1])

    def encode_response(self, out_bo: np.ndarray) -> dict:
        return self.model.answer(out_bo)


def main() -> None:
    spec = Spec.from_argv()
    fast_queue = bool((spec.extra or {}).get("fast_queue", True))
    server = ls.LitServer(DigitsAPI(spec), accelerator="cpu", workers_per_device=1, fast_queue=fast_queue)
    spec.write_info(
        f"LitServe {version('litserve')}: LitAPI(max_batch_size={spec.max_batch_size}, "
        f"batch_timeout={spec.batch_wait_s}), "
        f"LitServer(accelerator='cpu', workers_per_device=1, fast_queue={fast_queue}, timeout=30), "
        f"run(num_api_servers=None -> 1), torch {spec.torch_threads} thread(s)"
    )
    server.run(host="127.0.0.1", port=spec.port, log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()
