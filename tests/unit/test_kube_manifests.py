"""The KubeRay manifests are complete, use the image built from our Dockerfile, and run commands the CLI accepts."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import ray
import yaml

from rayline.cli import build_parser
from rayline.config import load_config

REPO = Path(__file__).resolve().parents[2]
KUBE = REPO / "platform" / "kubernetes"
IMAGE_ROOT = "/app"  # where the Dockerfile puts the project
SHARED = "/mnt/rayline"


def manifest(name: str) -> dict:
    return yaml.safe_load((KUBE / name).read_text())


def cluster_specs() -> dict[str, dict]:
    return {
        "RayJob": manifest("rayjob.yaml")["spec"]["rayClusterSpec"],
        "RayService": manifest("rayservice.yaml")["spec"]["rayClusterConfig"],
    }


def pod_specs(cluster: dict) -> list[dict]:
    return [cluster["headGroupSpec"]["template"]["spec"]] + [
        group["template"]["spec"] for group in cluster["workerGroupSpecs"]
    ]


def test_every_manifest_is_a_known_kind():
    kinds = {path.name: yaml.safe_load(path.read_text())["kind"] for path in KUBE.glob("*.yaml")}
    assert kinds == {"rayjob.yaml": "RayJob", "rayservice.yaml": "RayService", "storage.yaml": "PersistentVolumeClaim"}
    for name in ("rayjob.yaml", "rayservice.yaml"):
        assert manifest(name)["apiVersion"] == "ray.io/v1"
        assert manifest(name)["metadata"]["name"]


@pytest.mark.parametrize("kind", ["RayJob", "RayService"])
def test_clusters_have_the_required_fields_and_token_auth(kind):
    cluster = cluster_specs()[kind]
    assert cluster["rayVersion"] == ray.__version__, "the cluster runs the Ray the project pins"
    assert cluster["authOptions"] == {"mode": "token"}
    head = cluster["headGroupSpec"]
    assert "rayStartParams" in head and head["template"]["spec"]["containers"][0]["name"] == "ray-head"
    assert "dashboard-host" not in head["rayStartParams"], "leave the dashboard to KubeRay's pod-internal binding"
    for group in cluster["workerGroupSpecs"]:
        assert group["groupName"] and "rayStartParams" in group
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    for pod in pod_specs(cluster):
        for container in pod["containers"]:
            assert container["resources"]["requests"] == container["resources"]["limits"]
            assert {"name": "metrics", "containerPort": 8080} in container["ports"], "Prometheus scrapes every pod"


def test_every_container_runs_the_image_built_from_our_dockerfile():
    dockerfile = (KUBE / "Dockerfile").read_text()
    base = re.search(r"^FROM (\S+)", dockerfile, re.M).group(1)
    assert base.startswith(f"rayproject/ray:{ray.__version__}-py3"), base
    assert f"WORKDIR {IMAGE_ROOT}" in dockerfile and "pip install" in dockerfile
    images = {c["image"] for spec in cluster_specs().values() for pod in pod_specs(spec) for c in pod["containers"]}
    assert len(images) == 1, f"one image everywhere, got {images}"
    assert re.fullmatch(r"[\w./-]+/rayline:[\w.-]+", images.pop())


@pytest.mark.parametrize("kind", ["RayJob", "RayService"])
def test_every_pod_mounts_the_shared_read_write_many_volume(kind):
    claim = manifest("storage.yaml")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"], "nodes share checkpoints and the registry"
    for pod in pod_specs(cluster_specs()[kind]):
        [volume] = pod["volumes"]
        assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
        for container in pod["containers"]:
            [mount] = container["volumeMounts"]
            assert (mount["name"], mount["mountPath"]) == (volume["name"], SHARED)


def test_rayjob_entrypoint_is_a_rayline_command_the_cli_accepts(monkeypatch):
    spec = manifest("rayjob.yaml")["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["submissionMode"] == "K8sJobMode"
    argv = shlex.split(spec["entrypoint"])
    assert argv[0] == "rayline"
    args = build_parser().parse_args(argv[1:])
    assert (args.command, args.no_serve) == ("run", True), "a job trains and registers, then ends"
    overrides = dict(override.split("=", 1) for override in args.set)
    assert overrides["storage.root"] == SHARED
    # The image holds the repo at /app: the same pipeline, with the same overrides, validates here.
    pipeline = REPO / Path(args.pipeline).relative_to(IMAGE_ROOT)
    monkeypatch.chdir(REPO)
    cfg = load_config(pipeline, args.set)
    assert cfg.storage.root == SHARED
    assert Path(overrides["data.source"]).relative_to(IMAGE_ROOT) == Path("data/digits.parquet")
    assert "make-digits --output /app/data/digits.parquet" in (KUBE / "Dockerfile").read_text()


def test_rayservice_serves_the_registry_on_the_shared_volume():
    from ray.serve.schema import ServeDeploySchema

    spec = manifest("rayservice.yaml")["spec"]
    serve_config = ServeDeploySchema.model_validate(yaml.safe_load(spec["serveConfigV2"]))
    [app] = serve_config.applications
    assert app.import_path == "rayline.serve.app:build"
    assert app.args == {"storage_root": SHARED}
    assert serve_config.http_options.port == 8000
    for pod in pod_specs(spec["rayClusterConfig"]):
        for container in pod["containers"]:
            assert {"containerPort": 8000, "name": "serve"} in container["ports"]
            token = [e for e in container["env"] if e["name"] == "RAYLINE_API_TOKEN"]
            assert token and "secretKeyRef" in token[0]["valueFrom"], "the Serve port is guarded by rayline's token"
