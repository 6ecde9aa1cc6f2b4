"""The serve benchmark's gRPC load: the closed loop of serve_load.py over rayline's gRPC endpoint (rayline.proto).

`concurrency` clients, each on a channel of its own (as each HTTP client holds its own keep-alive connection),
send the same row as the HTTP runs (request_body's 64 numbers, named by the model's features) with grpc.aio and
send the next once the last is answered. Statuses are counted as the HTTP client counts them: OK as 200,
RESOURCE_EXHAUSTED (Serve's backpressure refusal) as 503 (gRPC carries no Retry-After), every other code under
its own name; no answer within the timeout is a timeout.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

from serve_load import Tally, request_body, request_budget

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))


def predict_request(features: list[str]):
    from rayline.serve import rayline_pb2 as pb

    values = json.loads(request_body())["rows"][0]
    return pb.PredictRequest(
        rows=[pb.Row(values={f: pb.Value(number=v) for f, v in zip(features, values, strict=True)})]
    )


async def grpc_closed_loop(
    address: str, features: list[str], concurrency: int, *, total: int = 0, seconds: float = 0.0, timeout_s: float
) -> dict:
    import grpc

    from rayline.serve import rayline_pb2_grpc

    request = predict_request(features)
    tally = Tally()
    began = time.perf_counter()
    more = request_budget(total, seconds)

    async def client() -> None:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = rayline_pb2_grpc.RaylineStub(channel)
            while more():
                sent = time.perf_counter()
                try:
                    await stub.Predict(request, timeout=timeout_s)
                except grpc.aio.AioRpcError as err:
                    code = err.code()
                    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                        tally.timeouts += 1
                    elif code == grpc.StatusCode.UNAVAILABLE:
                        tally.connection_errors += 1
                    else:
                        tally.statuses[503 if code == grpc.StatusCode.RESOURCE_EXHAUSTED else code.value[0]] += 1
                    continue
                tally.statuses[200] += 1
                tally.latencies.append(time.perf_counter() - sent)

    cpu = time.process_time()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    result = tally.summary(time.perf_counter() - began)
    result["client_cpu_s"] = round(time.process_time() - cpu, 3)
    result["latencies_s"] = tally.latencies
    return result
