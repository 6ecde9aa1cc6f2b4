"""One Serve replica: registry versions behind a lean ASGI front door (http.py), with batched inference.

A replica serves one version of one model name by default (`POST /predict`), named by its
`user_config`, and loads others on demand through Serve's model multiplexing (the model id is
"name/version"), at most `max_models_per_replica` at a time: `POST /v1/models/{version}/predict` for
another version of the same name, `POST /v1/models/{name}/{version}/predict` for any registered one.
A request is validated and encoded on its own (so one bad request never fails its neighbours), then
its rows join the batching queue; each forward pass runs one model over every queued row for it, and
each request gets its own rows back (batching.py says why this is not `@serve.batch`).

Changing `user_config` (control.py's `promote`) swaps the default version in place: the new model
loads in a thread while the old one keeps answering, then one assignment switches them. Its settings
come from settings.py; app.py builds the application around this class.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from ray import serve

from rayline.registry import ModelVersion, Registry, RegistryError
from rayline.registry_layout import check_name, is_version
from rayline.serve.api import create_api
from rayline.serve.batching import Batcher
from rayline.serve.grpc_api import GrpcMethods
from rayline.serve.http import FrontDoor, Limits, env_token_digest, error_body
from rayline.serve.ingress import write_backend_limits
from rayline.serve.metrics import ServeMetrics
from rayline.serve.model import ServedModel, record_metrics
from rayline.serve.schema import MAX_ROWS, RequestError
from rayline.serve.settings import HotSettings, fixed_settings, hot_settings, hot_values

logger = logging.getLogger(__name__)

DEPLOYMENT_NAME = "ModelServer"


class ModelUnavailable(Exception):
    """A known version whose checkpoint cannot be loaded (tampered, partial or non-finite)."""


def multiplexed_loader(load: Callable[[str], Awaitable[ServedModel]], limit: int) -> Callable:
    """Serve's LRU model cache around `load`, with a per-deployment bound (the decorator takes a constant)."""

    # A plain function: Serve keeps its cache as an attribute of the wrapped callable, which a bound method refuses.
    async def load_model(model_id: str) -> ServedModel:
        return await load(model_id)

    return serve.multiplexed(max_num_models_per_replica=limit)(load_model)


@serve.deployment(name=DEPLOYMENT_NAME)
@serve.ingress()
class ModelServer(GrpcMethods):
    """One replica: its default model, a small cache of other versions, and the request path (HTTP through
    `__serve_build_asgi_app__`, gRPC through grpc_api.py's methods)."""

    def __init__(self, storage_root: str, fixed: dict[str, Any] | None = None, token_sha256: str | None = None):
        """fixed: settings.FIXED_FIELDS of a ServeConfig; token_sha256: the bearer token's digest, else that of
        RAYLINE_API_TOKEN in the replica's environment (no token: no check)."""
        import torch  # here, not at the top: Serve's app builder imports this module and loads no model

        self.fixed = fixed_settings(fixed)
        # Replicas share the node's cores with the HTTP path and each other: scale out with replicas,
        # not with intra-op threads that would fight over the same cores (ONNX Runtime's are set alike).
        torch.set_num_threads(self.fixed.torch_threads)
        self.storage_root = storage_root
        self.primary: ServedModel | None = None
        self.token_sha256 = token_sha256 or env_token_digest()
        self.metrics = ServeMetrics(serve.get_replica_context().app_name)
        self.counters = {"requests_served": 0, "rows_served": 0, "batches_served": 0}
        self.batcher = Batcher(self._run_batch, max_rows=1, wait_s=0.0)
        self.apply(hot_settings(None))
        self._other_model = multiplexed_loader(self._load_other, self.fixed.max_models_per_replica)
        self._forward_since: float | None = None
        """When the forward pass now running began (monotonic), None between passes."""

    async def reconfigure(self, user_config: dict[str, Any] | None, rank: Any = None) -> None:
        # Taking `rank` makes Serve call this even without a user_config, so a replica always loads a model.
        settings = hot_settings(user_config)
        if self.primary is None or switches_model(settings, self.primary):
            # In a thread: the current model keeps answering requests while the next one loads.
            self.primary = await asyncio.to_thread(self._load, settings.model_name, settings.model_version)
            logger.info("now serving model %s", self.primary.ref)
        self.apply(settings)
        limits = self.fixed.model_copy(update={"request_timeout_s": settings.serve.request_timeout_s})
        write_backend_limits(serve.get_replica_context().app_name, limits)

    def apply(self, settings: HotSettings) -> None:
        """The hot settings in force: request limits and how requests are batched."""
        self.settings = settings
        cfg = settings.serve
        self.limits = Limits(cfg.max_body_bytes, cfg.request_timeout_s)
        self.batcher.max_rows = cfg.max_batch_size
        self.batcher.wait_s = cfg.batch_wait_timeout_s

    def __serve_build_asgi_app__(self) -> FrontDoor:
        return FrontDoor(self, create_api(self), token_sha256=self.token_sha256)

    def serving_state(self) -> dict[str, Any]:
        """For control.py, through a deployment handle: which registry this replica serves, and which model."""
        primary = self.primary
        return {
            "storage_root": self.storage_root,
            "model_name": primary and primary.name,
            "model_version": primary and primary.version,
        }

    def check_health(self) -> None:
        if self.primary is None:
            raise RuntimeError("no model loaded yet")
        running_s = 0.0 if self._forward_since is None else time.monotonic() - self._forward_since
        # Every request waiting on a pass this old has had its 504 already: the replica is stuck, replace it.
        limit_s = self.settings.serve.request_timeout_s
        if running_s > limit_s:
            raise RuntimeError(f"a forward pass has run for {running_s:.0f} s, longer than request_timeout_s={limit_s}")

    # -------------------------------------------------------- request path

    async def answer(
        self, name: str | None, version: str | None, body: bytes, content_type: str | None
    ) -> tuple[int, Any, ModelVersion | None]:
        """(HTTP status, JSON body, the model that answered) for one predict request."""
        return await self.answer_payload(name, version, lambda served: served.inputs(body, content_type))

    async def answer_payload(
        self, name: str | None, version: str | None, inputs_of: Callable[[ServedModel], Any]
    ) -> tuple[int, Any, ModelVersion | None]:
        """(HTTP status, JSON body, the model that answered) for a request whose rows `inputs_of` reads for the
        model that answers it (RequestError when they are wrong): the HTTP and gRPC routes' common path."""
        try:
            served = await self.model_for(name, version)
        except RegistryError as err:
            loc = "path.version" if name is None or is_known_name(self.storage_root, name) else "path.name"
            return 404, error_body(str(err), [{"loc": loc, "msg": str(err)}]), None
        except ModelUnavailable as err:
            asked = ModelVersion(name or self.primary.name, version)
            return 503, error_body(f"model version {asked} cannot be served: {err}"), asked
        try:
            inputs = inputs_of(served)
            outputs = await self._infer(served, inputs)
            predictions = served.predictions(outputs)
        except RequestError as err:
            return err.status, err.to_json(), served.ref
        self.counters["requests_served"] += 1
        payload = {"model_name": served.name, "model_version": served.version, "predictions": predictions}
        return 200, payload, served.ref

    def observe(self, route: str, model: ModelVersion | None, status: int, seconds: float) -> None:
        self.metrics.observe_request(route, model, status, seconds)

    async def model_for(self, name: str | None, version: str | None) -> ServedModel:
        """The primary model for /predict; another version (of the primary's name unless `name` is given)
        through the multiplexed cache. RegistryError for a malformed or unknown name or version."""
        primary = self.primary
        if version is None and name is None:
            return primary
        name = check_name(name) if name is not None else primary.name
        if not is_version(version):
            Registry(self.storage_root).model(name).record(version)  # says what a version looks like
        wanted = ModelVersion(name, version)
        if wanted == primary.ref:
            return primary
        return await self._other_model(str(wanted))

    async def _load_other(self, model_id: str) -> ServedModel:
        name, _, version = model_id.partition("/")
        wanted = ModelVersion(name, version)
        Registry(self.storage_root).record(wanted)  # an unknown name or version is a 404, before any loading
        try:
            return await asyncio.to_thread(self._load, name, version)
        except RegistryError as err:
            raise ModelUnavailable(str(err)) from None

    def _load(self, name: str | None, version: str | None) -> ServedModel:
        fixed = self.fixed
        return ServedModel.load(
            self.storage_root, name, version, max_rows=MAX_ROWS, runtime=fixed.runtime, threads=fixed.torch_threads
        )

    async def _infer(self, served: ServedModel, inputs: Any) -> np.ndarray:
        """The outputs for one request's inputs (float32 model inputs, or raw rows for ONNX Runtime)."""
        n = self.batcher.max_rows
        if len(inputs) <= n:
            return await self.batcher.submit((served, inputs), len(inputs))
        # Cut big requests so that no forward pass holds more than max_batch_size rows.
        pieces = [inputs[i : i + n] for i in range(0, len(inputs), n)]
        outputs = await asyncio.gather(*(self.batcher.submit((served, p), len(p)) for p in pieces))
        return np.concatenate(outputs)

    async def _run_batch(self, items: list[tuple[ServedModel, Any]]) -> list[np.ndarray]:
        # A batch may mix versions (/predict and /v1/models/...): one forward pass per version.
        by_model: dict[int, list[int]] = {}
        for i, (served, _) in enumerate(items):
            by_model.setdefault(id(served), []).append(i)
        results: list[np.ndarray] = [np.empty(0)] * len(items)
        for indices in by_model.values():
            served = items[indices[0]][0]
            parts = [items[i][1] for i in indices]
            inputs = served.concat(parts) if len(parts) > 1 else parts[0]
            # In a thread: torch and ONNX Runtime release the GIL, so the next requests are parsed meanwhile.
            self._forward_since = time.monotonic()
            try:
                out_bo = await asyncio.to_thread(served.forward, inputs)
            finally:
                self._forward_since = None
            self.metrics.observe_batch(served.ref, len(inputs))
            self.counters["batches_served"] += 1
            self.counters["rows_served"] += len(inputs)
            for i, part in zip(indices, np.split(out_bo, np.cumsum([len(p) for p in parts])[:-1]), strict=True):
                results[i] = part
        return results

    # -------------------------------------------------------- metadata

    def describe(self) -> dict[str, Any]:
        return {
            **self.primary.describe(),
            "serving": {
                "max_rows_per_request": MAX_ROWS,
                "max_models_per_replica": self.fixed.max_models_per_replica,
                **hot_values(self.settings.serve),
                **self.counters,  # this replica's counts since it started
            },
        }

    def list_models(self) -> dict[str, Any]:
        """Every version of every model name in the registry, with all of its metrics."""
        registry = Registry(self.storage_root)
        models = []
        for name in registry.names():
            entry = registry.model(name)
            serving = entry.serving_version()
            for record in entry.records():
                version = record["version"]
                models.append(
                    {
                        "model_name": name,
                        "model_version": version,
                        "pipeline": record.get("pipeline"),
                        "created_at": record.get("created_at"),
                        "epoch": record.get("epoch"),
                        **record_metrics(record),
                        "registry_serving": version == serving,
                        "default_here": ModelVersion(name, version) == self.primary.ref,
                    }
                )
        return {"default_model": self.primary.name, "default_version": self.primary.version, "models": models}


def switches_model(settings: HotSettings, primary: ServedModel) -> bool:
    """Whether new settings name a model other than the one served (no version named: keep the current)."""
    if settings.model_version is None:
        return False
    return ModelVersion(settings.model_name or primary.name, settings.model_version) != primary.ref


def is_known_name(storage_root: str, name: str) -> bool:
    try:
        Registry(storage_root).require(name)
    except RegistryError:
        return False
    return True
