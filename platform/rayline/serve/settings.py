"""What a replica is given, derived from the one declaration of serving settings (config.ServeConfig). No Ray.

A replica takes two things from Serve, both parts of a ServeConfig and nothing else:

- its constructor arguments, fixed for its life (a change restarts replicas): `FIXED_FIELDS`;
- its `user_config`, applied to running replicas in place (control.py's promote and rollback change it): the
  model to serve by default, and `HOT_FIELDS`.

`replica_settings` derives both from a ServeConfig on the build side; `fixed_settings` and `hot_settings` read
them back in the replica, through ServeConfig itself, so every default and bound is ServeConfig's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rayline.config import ServeConfig
from rayline.registry_layout import ModelVersion, RegistryError, check_name, is_version

FIXED_FIELDS = frozenset(
    {
        "max_models_per_replica",
        "torch_threads",
        "runtime",
        # Also Serve's deployment options: the replica hands them to HAProxy (ingress.write_backend_limits).
        "max_ongoing_requests",
        "max_queued_requests",
        "overload_status",
        "retry_after_s",
    }
)
"""ServeConfig fields a replica takes when it starts."""
HOT_FIELDS = frozenset({"max_batch_size", "batch_wait_timeout_s", "max_body_bytes", "request_timeout_s"})
"""ServeConfig fields a running replica takes in place, through its user_config."""
MODEL_KEYS = ("model_name", "model_version")
"""The user_config keys that name the model a replica serves by default."""


@dataclass(frozen=True)
class ReplicaSettings:
    """One replica's share of a ServeConfig, as Serve carries it."""

    fixed: dict[str, Any]
    """Constructor argument: FIXED_FIELDS."""
    user_config: dict[str, Any]
    """The deployment's user_config: MODEL_KEYS and HOT_FIELDS."""


@dataclass(frozen=True)
class HotSettings:
    """A replica's user_config, checked."""

    model_name: str | None
    """Registry model name served by /predict; None means the registry's only name."""
    model_version: str | None
    """Version of that name served by /predict; None means its serving version at load time."""
    serve: ServeConfig
    """HOT_FIELDS as given; the other fields are ServeConfig's defaults and unused."""


def replica_settings(cfg: ServeConfig, model: ModelVersion) -> ReplicaSettings:
    """What the replicas serving `model` with settings `cfg` are given."""
    return ReplicaSettings(
        fixed=cfg.model_dump(mode="json", include=set(FIXED_FIELDS)),
        user_config={"model_name": model.name, "model_version": model.version, **hot_values(cfg)},
    )


def hot_values(cfg: ServeConfig) -> dict[str, Any]:
    return cfg.model_dump(mode="json", include=set(HOT_FIELDS))


def fixed_settings(fixed: dict[str, Any] | None) -> ServeConfig:
    """The replica's constructor settings, checked by ServeConfig (missing ones take its defaults)."""
    return serve_subset(fixed or {}, FIXED_FIELDS, "the replica's settings")


def hot_settings(user_config: dict[str, Any] | None) -> HotSettings:
    """A user_config, checked: the model by the registry's rules, the rest by ServeConfig."""
    values = dict(user_config or {})
    name, version = (values.pop(key, None) for key in MODEL_KEYS)
    if name is not None:
        check_name(name, "user_config.model_name")
    if version is not None and not is_version(version):
        raise RegistryError(f"user_config.model_version {version!r} is not a model version such as v3")
    return HotSettings(name, version, serve_subset(values, HOT_FIELDS, "user_config"))


def serve_subset(values: dict[str, Any], fields: frozenset[str], where: str) -> ServeConfig:
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(
            f"{where}: {', '.join(unknown)} cannot be set there; it takes {', '.join(sorted(fields))}"
            + (" and model_name, model_version" if where == "user_config" else "")
        )
    return ServeConfig.model_validate(values)
