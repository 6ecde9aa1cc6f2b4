"""Building the model server application: the app builder that `serve run` / `serve deploy` import
(`import_path: rayline.serve.app:build`), and Serve's deployment options derived from a ServeConfig.

The builder runs where Serve builds applications (a task beside its controller) and reads no weights: it
checks that the version is registered and its checkpoint complete (every file there, at its size), and reads
the checkpoint's config only when the args give no serve settings. Each replica (replica.py) loads the model
and checks its contents once.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from ray.serve import Application

from rayline.checkpoint import checkpoint_config, verify_checkpoint
from rayline.config import ServeConfig
from rayline.config import absolute as absolute_location
from rayline.errors import RaylineError
from rayline.registry import ModelVersion, Registry
from rayline.serve.http import env_token_digest
from rayline.serve.replica import ModelServer
from rayline.serve.settings import ReplicaSettings, replica_settings

IMPORT_PATH = "rayline.serve.app:build"
ONNX_PACKAGES = ("onnx", "onnxruntime")
"""What serve.runtime onnxruntime needs: the exporter's graph editing, and the runtime."""
REPLICA_ENV = {
    # One event loop for HTTP and our code: by default Serve runs user code on a second loop in its own
    # thread, and every request then crosses between the two loops (and fights over the GIL) twice. Our
    # request path never blocks its loop (the forward pass runs in a worker thread), so one loop is safe.
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
}


class BuildArgs(BaseModel):
    """The `args:` of a Serve config entry that imports `rayline.serve.app:build`."""

    model_config = ConfigDict(extra="forbid")

    storage_root: str = Field(default_factory=lambda: os.environ.get("RAYLINE_ROOT", ".rayline"))
    """The pipeline's storage.root (the registry is under it). Relative paths start where Ray started."""
    model_name: str | None = None
    """Registry model name (a pipeline's name, or its registry.model_name); may be omitted when the registry
    holds one name."""
    version: str | None = None
    """Version of that name such as "v3"; its serving version when omitted."""
    serve: ServeConfig | None = None
    """Serving settings; the `serve:` section of the model's own pipeline config when omitted."""
    token_sha256: str | None = None
    """SHA-256 of the bearer token; by default taken from RAYLINE_API_TOKEN where the app is built."""


def build(args: dict[str, Any]) -> Application:
    """App builder for `serve run` / `serve deploy`: `import_path: rayline.serve.app:build`."""
    parsed = BuildArgs.model_validate(args)
    ref = Registry(parsed.storage_root).resolve(parsed.model_name, parsed.version)
    return build_app(parsed.storage_root, ref, parsed.serve, token_sha256=parsed.token_sha256)


def build_app(
    storage_root: str,
    ref: ModelVersion | None = None,
    serve_cfg: ServeConfig | None = None,
    *,
    token_sha256: str | None = None,
) -> Application:
    """The bound deployment for one registry version (default: the serving version of the only name).

    An unknown version or a partial or cut-short checkpoint is refused here, with the registry's message,
    before any replica starts.
    """
    root = absolute(storage_root)
    registry = Registry(root)
    ref = registry.resolve(ref.name, ref.version) if ref else registry.resolve()
    directory = registry.checkpoint_dir(ref)
    verify_checkpoint(directory, contents=False)
    cfg = serve_cfg or checkpoint_config(directory).serve
    check_runtime(cfg)
    settings = replica_settings(cfg, ref)
    deployment = ModelServer.options(**deployment_options(cfg, settings))
    return deployment.bind(root, settings.fixed, token_sha256 or env_token_digest())


def check_runtime(cfg: ServeConfig) -> None:
    """Refuse `serve.runtime: onnxruntime` where its packages are missing, before any replica starts."""
    if cfg.runtime != "onnxruntime":
        return
    missing = [name for name in ONNX_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise RaylineError(
            f"serve.runtime is onnxruntime but the package(s) {', '.join(missing)} are not installed where the app "
            f"is built; install them (pip install {' '.join(missing)}) on every node, or set serve.runtime: torch"
        )


def deployment_options(cfg: ServeConfig, settings: ReplicaSettings) -> dict[str, Any]:
    """Serve's options for the deployment: replicas, queues and backpressure from `cfg`, and the user_config."""
    options: dict[str, Any] = {
        "max_ongoing_requests": cfg.max_ongoing_requests,
        "max_queued_requests": cfg.max_queued_requests,
        "backpressure_config": {"status_code": cfg.overload_status, "retry_after_s": cfg.retry_after_s},
        "ray_actor_options": {"num_cpus": cfg.cpus_per_replica, "runtime_env": {"env_vars": REPLICA_ENV}},
        "user_config": settings.user_config,
        "health_check_period_s": cfg.health_check_period_s,
    }
    if cfg.autoscaling is not None:
        options["autoscaling_config"] = cfg.autoscaling.model_dump()
    else:
        options["num_replicas"] = cfg.num_replicas
    return options


def absolute(storage_root: str | Path) -> str:
    """The storage root as an absolute path: replicas and Serve's build task run in other directories. An
    object-store URI is the same everywhere."""
    return absolute_location(str(storage_root), Path.cwd())
