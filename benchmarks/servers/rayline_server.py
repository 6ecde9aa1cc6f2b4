"""rayline's endpoint as a user starts it (`rayline serve`): its embedded cluster, `ServeConfig()` defaults.

Only host and port are set, plus the ingress when the benchmark asks for a second, explicit one; the
rest (ingress, batching, replica CPUs, queue limits, timeouts) is whatever `ServeConfig()` holds in this
checkout, and the info file records all of it. The cluster comes from `rayline.runtime.connect`, the
same call the CLI makes (embedded, dashboard on 127.0.0.1), unless the benchmark turns dashboards off.
Runs until SIGTERM, then shuts Serve and the cluster down.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading

from common import PLATFORM, Spec

SHOWN = (
    "ingress",
    "runtime",
    "num_replicas",
    "cpus_per_replica",
    "torch_threads",
    "max_batch_size",
    "batch_wait_timeout_s",
    "max_ongoing_requests",
    "max_queued_requests",
    "request_timeout_s",
    "retry_after_s",
)


def start_cluster(include_dashboard: bool) -> None:
    import ray

    from rayline.runtime import connect, quiet_serve

    if include_dashboard:
        connect()  # RAY_ADDRESS is unset for this process: an embedded cluster, as the CLI starts it
    else:
        ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    quiet_serve()


def main() -> None:
    sys.path.insert(0, str(PLATFORM))
    from rayline.config import ServeConfig
    from rayline.registry import ModelVersion
    from rayline.runtime import disconnect
    from rayline.serve import deploy
    from rayline.serve.control import grpc_endpoint

    spec = Spec.from_argv()
    extra = spec.extra or {}
    overrides = {key: extra[key] for key in ("ingress", "runtime") if extra.get(key)}
    if extra.get("grpc_port"):
        overrides["grpc"] = {"port": extra["grpc_port"]}
    cfg = ServeConfig(host="127.0.0.1", port=spec.port, **overrides)
    dashboard = bool(extra.get("include_dashboard", True))
    start_cluster(dashboard)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        url = deploy(spec.storage_root, ModelVersion(spec.model_name, spec.model_version), cfg)
        settings = ", ".join(f"{key}={getattr(cfg, key)!r}" for key in SHOWN)
        forced = f" (set explicitly: {overrides})" if overrides else " (ServeConfig() defaults)"
        grpc = grpc_endpoint(cfg)
        via = f", load over gRPC to {grpc} (rayline.proto Predict)" if grpc else ""
        spec.write_info(
            f"rayline: ServeConfig({settings}){forced}, embedded cluster via rayline.runtime.connect "
            f"(dashboard {'on' if dashboard else 'off'}){via}",
            url=f"{url}/predict",
            load_url=grpc,
            serve_config=cfg.model_dump(mode="json"),
        )
        while not stop.wait(0.5):
            pass
    finally:
        disconnect()


if __name__ == "__main__":
    main()
