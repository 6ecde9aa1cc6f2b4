"""Running the model server on a Ray cluster: deploy it, switch the version it serves, shut it down.

Apps are deployed declaratively (the path `serve deploy` takes), as one entry of Serve's config
with `import_path: rayline.serve.app:build`. Serve then treats a change of nothing but a
deployment's `user_config` as a reconfiguration of the running replicas rather than a new code
version, and that is how `promote` and `rollback` switch versions with no dropped request: each
replica loads the new model beside the old one and swaps (replica.py's `reconfigure`).

Before anything changes, the version's checkpoint is checked here against its manifest (each file read
once; no weights are loaded) and, unless serve settings are given, its config is read for them.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve.schema import ServeDeploySchema

from rayline.checkpoint import checkpoint_config, verify_checkpoint
from rayline.config import ServeConfig
from rayline.errors import RaylineError
from rayline.registry import ModelVersion, Registry, RegistryError
from rayline.runtime import alive_nodes, shutdown_serve
from rayline.serve.app import IMPORT_PATH, absolute
from rayline.serve.grpc_api import SERVICER
from rayline.serve.http import env_token_digest
from rayline.serve.ingress import check_ingress, controller_options, head_only_warning, proxy_location
from rayline.serve.replica import DEPLOYMENT_NAME

QUIET = {"log_level": "WARNING"}
GRPC_GRACE_S = 5.0
"""Serve's own gRPC timeout runs this much past serve.request_timeout_s, so the replica's DEADLINE_EXCEEDED (with
its message) is what a client sees."""
logger = logging.getLogger(__name__)


class ServeDeployError(RaylineError, RuntimeError):
    """Serve could not bring the application up; the message is Serve's own status message."""


# ---------------------------------------------------------------- deploy and shut down


def deploy(
    storage_root: str,
    model: ModelVersion | None = None,
    serve_cfg: ServeConfig | None = None,
    *,
    wait: bool = True,
    timeout_s: float = 180.0,
) -> str:
    """Start Serve (if needed), deploy one registry version, return its base URL.

    `model` defaults to the serving version of the registry's only model name (Registry.resolve says
    which to use: a pipeline's `model_name`, or `Registry.find("NAME[/vN]")`).

    `serve_cfg` defaults to the `serve` section of the config the model was trained with. The host,
    port and ingress only apply when this starts Serve; a Serve instance already running keeps its
    own. The checkpoint and the ingress (an HAProxy binary for `haproxy`) are checked here first, so
    either fails before anything starts.
    With wait=False this returns once Serve has the app; `wait_until_serving` waits for it.
    """
    root = absolute(storage_root)
    model, directory = checked_version(root, model)
    cfg = serve_cfg or checkpoint_config(directory).serve
    if serve_client() is None:
        check_ingress(cfg)
        if (warning := head_only_warning(cfg, len(alive_nodes()))) is not None:
            logger.warning(warning)
    serve.start(
        http_options={"host": cfg.host, "port": cfg.port},
        grpc_options=grpc_options(cfg),
        proxy_location=proxy_location(cfg),
        logging_config=QUIET,
        controller_options=controller_options(cfg),
    )
    apply_apps({cfg.app_name: app_config(root, model, cfg, env_token_digest())})
    url = endpoint_url(cfg)
    if wait:
        wait_until_serving(cfg.app_name, url, timeout_s)
    return url


def grpc_options(cfg: ServeConfig) -> dict[str, Any] | None:
    """Serve's gRPC listener for `serve.grpc`: service rayline.Rayline (grpc_api.py) on grpc.port; none when unset."""
    if cfg.grpc is None:
        return None
    return {
        "port": cfg.grpc.port,
        "grpc_servicer_functions": [SERVICER],
        "request_timeout_s": cfg.request_timeout_s + GRPC_GRACE_S,
    }


def grpc_endpoint(cfg: ServeConfig) -> str | None:
    """The gRPC endpoint's address for clients (`rayline predict --endpoint`), or None without serve.grpc."""
    if cfg.grpc is None:
        return None
    return f"grpc://{client_host(cfg.host)}:{cfg.grpc.port}"


def checked_version(root: str, model: ModelVersion | None = None) -> tuple[ModelVersion, Path]:
    """The registered version to serve (default: the serving version of the only name) and its checkpoint,
    every file of which matches the manifest; RegistryError otherwise."""
    registry = Registry(root)
    model = registry.resolve(model.name, model.version) if model else registry.resolve()
    directory = registry.checkpoint_dir(model)
    verify_checkpoint(directory)
    return model, directory


def app_config(root: str, model: ModelVersion, cfg: ServeConfig, token_sha256: str | None) -> dict[str, Any]:
    """One entry of a Serve config's `applications:` list for this model server."""
    # Only the fields set: a default num_replicas beside an autoscaling range would read as setting both.
    serve = cfg.model_dump(mode="json", exclude_unset=True)
    args: dict[str, Any] = {"storage_root": root, "model_name": model.name, "version": model.version, "serve": serve}
    if token_sha256:
        args["token_sha256"] = token_sha256
    return {
        "name": cfg.app_name,
        "route_prefix": cfg.route_prefix,
        "import_path": IMPORT_PATH,
        "args": args,
        "logging_config": QUIET,
    }


def shutdown() -> None:
    """Stop every Serve application and the proxy; the Ray cluster keeps running."""
    shutdown_serve()


def endpoint_url(cfg: ServeConfig) -> str:
    return f"http://{client_host(cfg.host)}:{cfg.port}{cfg.route_prefix.rstrip('/')}"


def client_host(host: str) -> str:
    host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    return f"[{host}]" if ":" in host else host


# ---------------------------------------------------------------- switching versions


def promote(storage_root: str, name: str, version: str, *, timeout_s: float = 180.0) -> list[str]:
    """Serve `version` of model `name` from now on: mark it in the registry and switch running apps that
    serve that name from this registry.

    Works with no Ray connection or no running app (then only the registry marker changes, and the
    next deploy serves it). Returns the names of the running apps that were switched.
    """
    root = absolute(storage_root)
    model, _ = checked_version(root, ModelVersion(name, version))  # refuse a bad checkpoint before anything changes
    Registry(root).model(name).set_serving(version)
    return switch_running_apps(root, model, timeout_s)


def rollback(storage_root: str, name: str, *, timeout_s: float = 180.0) -> tuple[ModelVersion, list[str]]:
    """Serve the version of `name` served before the current one again; returns it and the running apps switched."""
    root = absolute(storage_root)
    entry = Registry(root).model(Registry(root).require(name))
    history = entry.serving_history()
    if not history:
        raise RegistryError(f"nothing to roll back to: model {name!r} has no earlier serving version in {root}")
    checked_version(root, entry.ref(history[-1]))
    model = entry.ref(entry.rollback_serving())
    return model, switch_running_apps(root, model, timeout_s)


def switch_running_apps(root: str, model: ModelVersion, timeout_s: float) -> list[str]:
    """Point every running app that serves `model`'s name from the registry under `root` at it, in place."""
    client = serve_client()
    if client is None:
        return []
    details = client.get_serve_details().get("applications", {})
    configs = {name: app["deployed_app_config"] for name, app in details.items() if app.get("deployed_app_config")}
    ours = [name for name, config in configs.items() if config.get("import_path") == IMPORT_PATH]
    ours = [name for name in ours if served_model(name) == (root, model.name)]
    if not ours:
        return []
    for name in ours:
        deployment = details[name]["deployments"][DEPLOYMENT_NAME]
        user_config = deployment["deployment_config"].get("user_config") or {}
        user_config = {**user_config, "model_name": model.name, "model_version": model.version}
        configs[name] = with_user_config(configs[name], user_config)
    client.deploy_apps(ServeDeploySchema.model_validate({"applications": list(configs.values())}))
    for name in ours:
        wait_for_version(name, model, timeout_s)
    return ours


def switch_summary(storage_root: str, model: ModelVersion, apps: list[str]) -> str:
    """What `rayline promote` / `rollback` print."""
    lines = [f"{Registry(storage_root).path}: now serving model {model}"]
    if apps:
        lines.append(f"switched running app(s) {', '.join(apps)} to {model} in place")
    elif serve_client() is None:
        lines.append("no Ray cluster joined (--ray-address or RAY_ADDRESS), so running apps were not switched")
    else:
        lines.append(f"no running app on this cluster serves {model.name} from this registry; the next deploy does")
    return "\n".join(lines)


def with_user_config(config: dict[str, Any], user_config: dict[str, Any]) -> dict[str, Any]:
    deployments = [d for d in config.get("deployments", []) if d.get("name") != DEPLOYMENT_NAME]
    mine = next((d for d in config.get("deployments", []) if d.get("name") == DEPLOYMENT_NAME), {})
    return {**config, "deployments": [*deployments, {**mine, "name": DEPLOYMENT_NAME, "user_config": user_config}]}


def served_model(app_name: str) -> tuple[str, str] | None:
    """(storage root, model name) a running app serves."""
    try:
        handle = serve.get_deployment_handle(DEPLOYMENT_NAME, app_name)
        state = handle.serving_state.remote().result(timeout_s=30)
        return state["storage_root"], state["model_name"]
    except Exception:  # an app mid-deploy or failed: it is not serving anything to switch
        return None


def wait_for_version(app_name: str, model: ModelVersion, timeout_s: float) -> None:
    """Until every replica of the app serves `model` (the deployment is healthy at the new config)."""
    handle = serve.get_deployment_handle(DEPLOYMENT_NAME, app_name)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = handle.serving_state.remote().result(timeout_s=timeout_s)
        if (state["model_name"], state["model_version"]) == (model.name, model.version):
            # A replica has switched, so the controller has begun the update: HEALTHY now means all have.
            deployment = wait_until_running(app_name, deadline - time.monotonic()).get_deployment_status(
                DEPLOYMENT_NAME
            )
            if deployment is not None and deployment.status == "HEALTHY":
                return
        time.sleep(0.2)
    raise ServeDeployError(f"app {app_name!r} did not switch to model {model} within {timeout_s:g} s")


# ---------------------------------------------------------------- Serve plumbing


def serve_client() -> Any:
    """Serve's controller client, or None when this process has no Ray connection or Serve is not running."""
    import ray
    from ray.serve.context import _get_global_client

    if not ray.is_initialized():
        return None
    return _get_global_client(raise_if_no_controller_running=False)


def apply_apps(apps: dict[str, dict[str, Any]]) -> None:
    """Deploy or update these apps, keeping the other declaratively deployed apps as they are.

    Serve's declarative API replaces the whole set of apps it manages, so the current set is read back first.
    """
    client = serve_client()
    if client is None:
        raise ServeDeployError("Serve is not running; call serve.start() first")
    details = client.get_serve_details().get("applications", {})
    configs = {name: app["deployed_app_config"] for name, app in details.items() if app.get("deployed_app_config")}
    configs.update(apps)
    client.deploy_apps(ServeDeploySchema.model_validate({"applications": list(configs.values())}))


def wait_until_serving(app_name: str, url: str, timeout_s: float) -> None:
    """Until Serve reports the app RUNNING and it answers at `url`, both within one `timeout_s`; ServeDeployError
    with Serve's message at once if the deploy fails."""
    deadline = time.monotonic() + timeout_s
    wait_until_running(app_name, timeout_s)
    wait_until_reachable(url, max(deadline - time.monotonic(), 1.0))


def wait_until_running(app_name: str, timeout_s: float) -> Any:
    """The app's status overview (Serve's StatusOverview) once RUNNING; ServeDeployError with Serve's message if
    it fails or times out.

    Polls the one app's status, not serve.status(): that builds the details of every app and pickles each
    deployment's request-router class on every call (7 ms of CPU in a process that has imported torch, more
    with every module imported), and a deploy polls for seconds."""
    client = serve_client()
    if client is None:
        raise ServeDeployError("Serve is not running; call serve.start() first")
    deadline = time.monotonic() + max(timeout_s, 0.0)
    while True:
        overview = client.get_serve_status(app_name)
        status = overview.app_status
        if status.status == "RUNNING":
            return overview
        if status.status in ("DEPLOY_FAILED", "UNHEALTHY"):
            raise ServeDeployError(f"Serve app {app_name!r} is {status.status.value}: {status.message.strip()}")
        if time.monotonic() > deadline:
            state = "not deployed" if status.status == "NOT_STARTED" else status.status.value
            raise ServeDeployError(f"Serve app {app_name!r} is still {state} after {timeout_s:g} s")
        time.sleep(0.2)


def wait_until_reachable(url: str, timeout_s: float) -> None:
    """Until the app answers over HTTP: the proxy (or HAProxy) learns its routes a moment after RUNNING."""
    import httpx

    deadline = time.monotonic() + timeout_s
    # One client for the whole wait: httpx.get() would build a TLS context (18 ms of CPU) on every try.
    with httpx.Client(timeout=5) as client:
        while True:
            try:
                if client.get(f"{url}/healthz").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise ServeDeployError(f"{url}/healthz did not answer within {timeout_s:g} s")
            time.sleep(0.2)
