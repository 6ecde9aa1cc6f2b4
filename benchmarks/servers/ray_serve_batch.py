"""Stock Ray Serve, on its own embedded Ray cluster: a FastAPI ingress deployment with `@serve.batch`.

Written as Serve's batching guide shows it: one replica (`num_replicas=1`, Serve's default
`num_cpus=1`), an async batch handler `@serve.batch(max_batch_size, batch_wait_timeout_s)` that runs
the model on the list of queued inputs, `max_ongoing_requests` raised to 64 so a batch can fill
(Serve warns when it is below max_batch_size; its default is 5), Serve's own HTTP proxy on 127.0.0.1,
the cluster started by a plain `ray.init()` (dashboard as `include_dashboard` says).
Runs until SIGTERM, then shuts Serve and its cluster down.

No `from __future__ import annotations` here: FastAPI must see the real `Rows` type in the replica, where
Serve rebuilds the class (with string annotations it took `body` for a query parameter: 422).
"""

import logging
import os
import signal
import threading

import numpy as np
import ray
from common import PeerModel, Spec
from fastapi import FastAPI
from pydantic import BaseModel
from ray import serve

MAX_ONGOING_REQUESTS = 64


class Rows(BaseModel):
    rows: list[list[float]]


def build(spec: Spec):
    api = FastAPI()

    @serve.deployment(num_replicas=1, max_ongoing_requests=MAX_ONGOING_REQUESTS)
    @serve.ingress(api)
    class Predictor:
        def __init__(self) -> None:
            self.model = PeerModel(spec)

        @serve.batch(max_batch_size=spec.max_batch_size, batch_wait_timeout_s=spec.batch_wait_s)
        async def infer(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
            out_bo = self.model.forward(np.concatenate(inputs))
            return np.split(out_bo, np.cumsum([len(x) for x in inputs])[:-1])

        @api.post("/predict")
        async def predict(self, body: Rows) -> dict:
            return self.model.answer(await self.infer(self.model.inputs(body.rows)))

    return Predictor.bind()


def main() -> None:
    spec = Spec.from_argv()
    dashboard = bool((spec.extra or {}).get("include_dashboard", True))
    ray.init(address="local", include_dashboard=dashboard, logging_level=logging.WARNING, log_to_driver=False)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    serve.start(http_options={"host": "127.0.0.1", "port": spec.port}, logging_config={"log_level": "WARNING"})
    serve.run(build(spec), name="stock", route_prefix="/", logging_config={"log_level": "WARNING"})
    spec.write_info(
        f"Ray Serve {ray.__version__}: FastAPI ingress, @serve.batch(max_batch_size={spec.max_batch_size}, "
        f"batch_wait_timeout_s={spec.batch_wait_s}), num_replicas=1, num_cpus=1, "
        f"max_ongoing_requests={MAX_ONGOING_REQUESTS}, Serve's HTTP proxy, torch {spec.torch_threads} thread(s), "
        f"own embedded cluster (num_cpus={os.cpu_count()}, dashboard {'on' if dashboard else 'off'})"
    )
    while not stop.wait(0.5):
        pass
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
