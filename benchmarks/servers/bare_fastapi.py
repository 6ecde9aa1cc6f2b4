"""The floor: FastAPI + uvicorn, one process, a sync endpoint that runs the model for each request alone.

FastAPI's thread pool runs several requests at once; no batching.
"""

from __future__ import annotations

import uvicorn
from common import PeerModel, Spec
from fastapi import FastAPI
from pydantic import BaseModel


class Rows(BaseModel):
    rows: list[list[float]]


def main() -> None:
    spec = Spec.from_argv()
    model = PeerModel(spec)
    app = FastAPI()

    @app.post("/predict")
    def predict(body: Rows) -> dict:
        return model.answer(model.forward(model.inputs(body.rows)))

    spec.write_info(
        f"FastAPI {__import__('fastapi').__version__} + uvicorn {uvicorn.__version__}, 1 process, sync def endpoint "
        f"(thread pool), no batching, torch {spec.torch_threads} thread(s)"
    )
    uvicorn.run(app, host="127.0.0.1", port=spec.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
