"""An export from a registry in a bucket (moto's S3 server on 127.0.0.1): the version is fetched to the node cache,
exported, and the export lands in the version's record in the bucket."""

from __future__ import annotations

import pytest

from faults import register_tiny_model
from rayline.checkpoint import file_sha256
from rayline.export import export_version
from rayline.registry import Registry
from s3_server import start_s3_server


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = start_s3_server(tmp_path_factory.mktemp("moto") / "moto.log")
    yield server
    server.stop()


def test_export_from_a_bucket_is_recorded_in_the_bucket(s3, tmp_path, monkeypatch):
    monkeypatch.setenv("RAYLINE_CACHE", str(tmp_path / "cache"))
    s3.create_bucket("export")
    root = s3.uri("export", "rayline")
    register_tiny_model(tmp_path / "local", name="tiny")
    version = Registry(root).register(tmp_path / "local" / "checkpoint-tiny", run_name="tiny", data_fingerprint="f")

    report = export_version(root, "tiny", tmp_path / "out", log=lambda _: None)

    (entry,) = Registry(root).record(version)["exports"]  # read back from the bucket by a fresh client
    assert entry["sha256"] == file_sha256(report.files[0].path)
    assert entry["parity"]["max_abs_diff"] <= 1e-5
    assert "rayline/registry/models/tiny/v1/record.json" in s3.keys("export", "rayline/registry/models/tiny/")
