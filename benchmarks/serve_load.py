"""The serve benchmark's load generator and what it measures about the servers' processes.

A lean asyncio HTTP/1.1 client (keep-alive, pre-built request bytes) runs in its own process, a
closed loop of `concurrency` connections, each sending its next request once the last is answered.
It parses only the status line and the Content-Length, Connection, Transfer-Encoding and
Retry-After headers, and counts: answered requests (200) with their latencies, 503 refusals and how
many carried Retry-After (the client then waits that long, at most 5 s, before its next request on
that connection, as an HTTP client should), other statuses, timeouts (no answer within the timeout;
the connection is replaced) and connection errors.

A run is a number of requests (after a warm-up, reported too) or, for overload, a duration with no
warm-up. The caller measures the servers' CPU time around it from /proc.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

FEATURES = 64
RETRY_AFTER_CAP_S = 5.0


def request_body() -> bytes:
    """One row of 64 numbers, the same bytes for every server and model."""
    rng = random.Random(0)
    return json.dumps({"rows": [[round(rng.uniform(0, 16), 4) for _ in range(FEATURES)]]}).encode()


class Tally:
    """What one closed-loop run saw."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.statuses: Counter[int] = Counter()
        self.retry_after: Counter[str] = Counter()
        self.timeouts = self.connection_errors = self.reconnects = 0

    def summary(self, wall: float) -> dict:
        lat = sorted(self.latencies)
        pick = (lambda q: round(lat[min(len(lat) - 1, int(len(lat) * q))] * 1e3, 2)) if lat else (lambda q: None)
        refused = self.statuses.get(503, 0)
        other = sum(n for s, n in self.statuses.items() if s not in (200, 503))
        return {
            "answered": len(lat),
            "req_per_s": round(len(lat) / wall, 1) if wall > 0 else 0.0,
            "p50_ms": pick(0.5),
            "p99_ms": pick(0.99),
            "max_ms": round(lat[-1] * 1e3, 2) if lat else None,
            "refused_503": refused,
            "refused_503_with_retry_after": sum(self.retry_after.values()),
            "retry_after_values": dict(self.retry_after),
            "other_status": {str(s): n for s, n in self.statuses.items() if s not in (200, 503)},
            "errors": other + self.timeouts + self.connection_errors,
            "timeouts": self.timeouts,
            "connection_errors": self.connection_errors,
            "reconnects": self.reconnects,
            "wall_s": round(wall, 2),
        }


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[bytes, bytes]]:
    head = await reader.readuntil(b"\r\n\r\n")
    fields = dict(line.lower().split(b": ", 1) for line in head.split(b"\r\n")[1:] if b": " in line)
    if fields.get(b"transfer-encoding") == b"chunked":
        while size := int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16):
            await reader.readexactly(size + 2)
        await reader.readuntil(b"\r\n")
    else:
        await reader.readexactly(int(fields.get(b"content-length", b"0")))
    return int(head[9:12]), fields


def request_budget(total: int, seconds: float) -> Callable[[], bool]:
    """A closed loop's `more()`, asked before each request by all its connections: True `total` times, or, when
    `seconds` is set, until that many seconds from now have passed."""
    left = total
    deadline = time.perf_counter() + seconds

    def more() -> bool:
        nonlocal left
        if seconds:
            return time.perf_counter() < deadline
        left -= 1
        return left >= 0

    return more


async def closed_loop(
    host: str, port: int, request: bytes, concurrency: int, *, total: int = 0, seconds: float = 0.0, timeout_s: float
) -> dict:
    """`total` requests, or as many as `seconds` allow, over `concurrency` keep-alive connections."""
    tally = Tally()
    began = time.perf_counter()
    deadline = began + seconds
    more = request_budget(total, seconds)

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        try:
            return await asyncio.open_connection(host, port)
        except OSError:
            tally.connection_errors += 1
            await asyncio.sleep(0.05)
            return None

    async def connection() -> None:
        pair = None
        while more():
            pair = pair or await connect()
            if pair is None:
                continue
            reader, writer = pair
            sent = time.perf_counter()
            try:
                async with asyncio.timeout(timeout_s):
                    writer.write(request)
                    status, fields = await read_response(reader)
            except TimeoutError:
                tally.timeouts += 1
                writer.close()
                pair = None
                continue
            except (OSError, asyncio.IncompleteReadError) as err:
                # A keep-alive connection the server closed while idle (HAProxy does when it reloads) is
                # reopened, as any HTTP client does; one that breaks mid-answer is an error.
                partial = getattr(err, "partial", b"x")
                tally.reconnects += not partial
                tally.connection_errors += bool(partial)
                writer.close()
                pair = None
                continue
            tally.statuses[status] += 1
            if status == 200:
                tally.latencies.append(time.perf_counter() - sent)
            if fields.get(b"connection") == b"close":
                writer.close()
                pair = None
            if status == 503 and b"retry-after" in fields:
                value = fields[b"retry-after"].decode()
                tally.retry_after[value] += 1
                pause = min(float(value), RETRY_AFTER_CAP_S)
                # A wait past the end of a timed run would only stretch its wall time.
                await asyncio.sleep(min(pause, max(0.0, deadline - time.perf_counter())) if seconds else pause)
        if pair:
            pair[1].close()

    cpu = time.process_time()
    await asyncio.gather(*(connection() for _ in range(concurrency)))
    result = tally.summary(time.perf_counter() - began)
    result["client_cpu_s"] = round(time.process_time() - cpu, 3)
    result["latencies_s"] = tally.latencies
    return result


def client_main(spec: dict) -> None:
    """Subprocess entry point: warm up (counted requests only), measure, print one JSON line."""
    if spec["url"].startswith("grpc://"):
        return grpc_client_main(spec)
    host, port = spec["url"].removeprefix("http://").split("/")[0].split(":")
    path = "/" + spec["url"].removeprefix("http://").split("/", 1)[1]
    body = request_body()
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    run = {"concurrency": spec["concurrency"], "timeout_s": spec["timeout_s"]}
    warm = None
    if spec["warmup"]:
        warm = asyncio.run(closed_loop(host, int(port), request, total=spec["warmup"], **run))
    main = asyncio.run(closed_loop(host, int(port), request, total=spec["total"], seconds=spec["seconds"], **run))
    if warm:
        main["with_warmup"] = with_warmup(warm, main)
        main["warmup"] = {k: v for k, v in warm.items() if k != "latencies_s"}
    main.pop("latencies_s")
    print(json.dumps(main))


def grpc_client_main(spec: dict) -> None:
    """client_main over gRPC (serve_load_grpc.py): spec["url"] is grpc://host:port, spec["features"] the names."""
    from serve_load_grpc import grpc_closed_loop

    address = spec["url"].removeprefix("grpc://").split("/")[0]
    run = {"concurrency": spec["concurrency"], "timeout_s": spec["timeout_s"]}
    warm = None
    if spec["warmup"]:
        warm = asyncio.run(grpc_closed_loop(address, spec["features"], total=spec["warmup"], **run))
    main = asyncio.run(grpc_closed_loop(address, spec["features"], total=spec["total"], seconds=spec["seconds"], **run))
    if warm:
        main["with_warmup"] = with_warmup(warm, main)
        main["warmup"] = {k: v for k, v in warm.items() if k != "latencies_s"}
    main.pop("latencies_s")
    print(json.dumps(main))


def with_warmup(warm: dict, main: dict) -> dict:
    """The figures over the warm-up and the measured window together (no window left out)."""
    lat = sorted(warm["latencies_s"] + main["latencies_s"])
    if not lat:
        return {}
    wall = warm["wall_s"] + main["wall_s"]
    return {
        "req_per_s": round(len(lat) / wall, 1),
        "p50_ms": round(lat[len(lat) // 2] * 1e3, 2),
        "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e3, 2),
    }


def run_client(spec: dict, server_cpu: Callable[[], float], others_cpu: Callable[[], float]) -> dict:
    """One client run in its own process; adds the server's and the idle servers' CPU time and the load average."""
    load = os.getloadavg()[0]
    command = [sys.executable, __file__, json.dumps(spec)]
    cpu, idle = server_cpu(), others_cpu()
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    cpu, idle = server_cpu() - cpu, others_cpu() - idle
    if done.returncode != 0:
        raise RuntimeError(f"the load generator failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    sent = result["answered"] + result["refused_503"] + sum(result["other_status"].values())
    sent += (result.get("warmup") or {}).get("answered", 0)
    result["server_cpu_s"] = round(cpu, 3)
    result["server_cpu_ms_per_request"] = round(cpu * 1e3 / max(sent, 1), 3)
    result["other_servers_cpu_s"] = round(idle, 3)
    result["load_avg_1m"] = round(load, 2)
    return result


# ---------------------------------------------------------------- processes and their CPU time


def cpu_seconds(pids: Callable[[], list[int]]) -> Callable[[], float]:
    """Summed user+system time of the processes the callable lists, from /proc (those that exit are lost)."""
    ticks = os.sysconf("SC_CLK_TCK")

    def total() -> float:
        seconds = 0.0
        for pid in pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            seconds += (int(fields[11]) + int(fields[12])) / ticks
        return seconds

    return total


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (a Ray cluster's processes descend from the driver that started it)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parent = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    found, todo = [pid], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


if __name__ == "__main__":
    client_main(json.loads(sys.argv[1]))
