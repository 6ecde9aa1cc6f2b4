"""Serving settings, the registry's serving marker, promote/rollback and checkpoint checks, without a cluster."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from rayline.config import ServeConfig
from rayline.registry import ModelVersion, Registry, RegistryError
from serve_models import make_registry, model_name, register, tamper

NAME = model_name("classification")


def test_serving_history_and_rollback(tmp_path):
    make_registry(tmp_path, versions=3)  # registering serves each in turn
    registry = Registry(tmp_path).model(NAME)
    assert registry.serving_version() == "v3"
    assert registry.serving_history() == ["v1", "v2"]
    registry.set_serving("v3")  # no change: no history entry
    assert registry.serving_history() == ["v1", "v2"]
    registry.set_serving("v1")
    assert registry.serving_history() == ["v1", "v2", "v3"]
    assert registry.rollback_serving() == "v3"
    assert registry.rollback_serving() == "v2"
    assert registry.rollback_serving() == "v1"
    assert registry.serving_version() == "v1"
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        registry.rollback_serving()
    with pytest.raises(RegistryError, match="no model version 'v9'"):
        registry.set_serving("v9")


def test_promote_without_a_cluster_moves_the_marker(tmp_path):
    from rayline.serve import promote, rollback
    from rayline.serve.control import switch_summary

    make_registry(tmp_path, versions=2)
    assert promote(str(tmp_path), NAME, "v1") == []  # no running app serves this registry
    assert Registry(tmp_path).model(NAME).serving_version() == "v1"
    assert rollback(str(tmp_path), NAME) == (ModelVersion(NAME, "v2"), [])
    assert Registry(tmp_path).model(NAME).serving_version() == "v2"
    assert f"now serving model {NAME}/v2" in switch_summary(str(tmp_path), ModelVersion(NAME, "v2"), [])


def test_a_tampered_version_is_refused_and_nothing_changes(tmp_path):
    from rayline.serve import build, promote, rollback

    make_registry(tmp_path, versions=2)
    tamper(tmp_path, "v1")
    with pytest.raises(RegistryError, match="model.pt: contents do not match the checkpoint manifest"):
        promote(str(tmp_path), NAME, "v1")
    assert Registry(tmp_path).model(NAME).serving_version() == "v2"
    with pytest.raises(RegistryError, match="contents do not match"):
        rollback(str(tmp_path), NAME)  # v1 is what it would go back to
    assert Registry(tmp_path).model(NAME).serving_version() == "v2"
    with pytest.raises(RegistryError, match="contents do not match"):
        build({"storage_root": str(tmp_path), "version": "v1"})  # what `serve deploy` runs
    with pytest.raises(RegistryError, match="contents do not match"):
        build({"storage_root": str(tmp_path), "model_name": NAME, "version": "v1"})
    assert type(build({"storage_root": str(tmp_path)})).__name__ == "Application"


def test_a_partial_version_is_refused_at_build(tmp_path):
    from rayline.serve import build

    make_registry(tmp_path)
    (Registry(tmp_path).model(NAME).checkpoint_dir("v1") / "preprocessor.json").unlink()
    with pytest.raises(RegistryError, match="partial, preprocessor.json is missing"):
        build({"storage_root": str(tmp_path)})


def test_non_finite_weights_are_refused(tmp_path):
    from rayline.serve.model import ServedModel, require_finite_weights

    make_registry(tmp_path)
    model = ServedModel.load(tmp_path, NAME, "v1").model
    with torch.no_grad():
        next(model.parameters())[0, 0] = float("nan")
    with pytest.raises(RegistryError, match="NaN or infinite weights"):
        require_finite_weights(model, "v1")


def test_build_args_are_checked(tmp_path):
    from rayline.serve import build

    with pytest.raises(RegistryError, match="no models yet"):
        build({"storage_root": str(tmp_path)})
    with pytest.raises(ValidationError, match="storag_root"):
        build({"storag_root": str(tmp_path)})
    with pytest.raises(ValidationError, match="max_batch_size"):
        build({"storage_root": str(tmp_path), "serve": {"max_batch_size": 0}})


def test_serve_config_replicas_and_limits():
    assert ServeConfig().max_body_bytes == 1 << 20
    assert ServeConfig().host == "127.0.0.1"
    with pytest.raises(ValidationError, match="not both"):
        ServeConfig(num_replicas=2, autoscaling={"max_replicas": 3})
    with pytest.raises(ValidationError, match="above max_replicas"):
        ServeConfig(autoscaling={"min_replicas": 3, "max_replicas": 2})
    with pytest.raises(ValidationError, match=r"autoscaling\.look_back_period_s[\s\S]*greater than 10"):
        ServeConfig(autoscaling={"look_back_period_s": 10})
    with pytest.raises(ValidationError, match="overload_status"):
        ServeConfig(overload_status=500)


def test_deployment_options_come_from_the_config():
    from rayline.serve.app import deployment_options
    from rayline.serve.settings import replica_settings

    cfg = ServeConfig(
        autoscaling={"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 8, "look_back_period_s": 12},
        max_ongoing_requests=16,
        max_queued_requests=4,
        overload_status=429,
        retry_after_s=2.5,
        max_batch_size=8,
        batch_wait_timeout_s=0.01,
        max_body_bytes=4096,
        request_timeout_s=3.0,
    )
    options = deployment_options(cfg, replica_settings(cfg, ModelVersion("m", "v2")))
    assert "num_replicas" not in options
    assert options["autoscaling_config"]["max_replicas"] == 4
    assert options["autoscaling_config"]["target_ongoing_requests"] == 8
    assert options["autoscaling_config"]["look_back_period_s"] == 12
    assert (options["max_ongoing_requests"], options["max_queued_requests"]) == (16, 4)
    assert options["backpressure_config"] == {"status_code": 429, "retry_after_s": 2.5}
    assert options["user_config"] == {
        "model_name": "m",
        "model_version": "v2",
        "max_batch_size": 8,
        "batch_wait_timeout_s": 0.01,
        "max_body_bytes": 4096,
        "request_timeout_s": 3.0,
    }
    three = ServeConfig(num_replicas=3)
    assert deployment_options(three, replica_settings(three, ModelVersion("m", "v1")))["num_replicas"] == 3


def test_register_helper_uses_the_given_serve_section(tmp_path):
    from rayline.checkpoint import checkpoint_config

    ref = register(tmp_path, serve=ServeConfig(max_batch_size=7))
    assert checkpoint_config(Registry(tmp_path).checkpoint_dir(ref)).serve.max_batch_size == 7


def test_app_config_round_trips_through_build_args(tmp_path):
    from rayline.serve.app import BuildArgs
    from rayline.serve.control import app_config

    cfg = ServeConfig(autoscaling={"max_replicas": 3}, port=8123)
    args = app_config(str(tmp_path), ModelVersion("m", "v1"), cfg, token_sha256="ab")["args"]
    parsed = BuildArgs.model_validate(args)
    assert (parsed.serve, parsed.model_name, parsed.version) == (cfg, "m", "v1")
