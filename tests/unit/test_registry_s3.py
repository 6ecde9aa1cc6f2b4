"""The registry on an S3-compatible store (moto's server on 127.0.0.1), through pyarrow's S3 client."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from test_registry import write_checkpoint

from rayline.registry import ModelVersion, Registry, RegistryError
from rayline.storage import StorageError, display, join, location, object_lock, with_endpoint
from s3_server import start_s3_server


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = start_s3_server(tmp_path_factory.mktemp("moto") / "moto.log")
    yield server
    server.stop()


@pytest.fixture
def bucket(s3, request):
    name = request.node.name.lower().replace("_", "-")[:50].strip("-")
    s3.create_bucket(name)
    return name


def test_a_registry_in_a_bucket_registers_serves_promotes_and_rolls_back(s3, bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("RAYLINE_CACHE", str(tmp_path / "cache"))
    root = s3.uri(bucket, "rayline")
    registry = Registry(root)
    models = [write_checkpoint(tmp_path / f"ck{i}", epoch=i) for i in range(2)]
    v1 = registry.register(tmp_path / "ck0", run_name="r", data_fingerprint="f")
    v2 = registry.register(tmp_path / "ck1", run_name="r", data_fingerprint="f", artifacts={"curve.png": b"png"})

    assert (v1, v2) == (ModelVersion("reg", "v1"), ModelVersion("reg", "v2"))
    keys = s3.keys(bucket, "rayline/registry/models/reg/")
    assert "rayline/registry/models/reg/v2/checkpoint/model.pt" in keys
    assert "rayline/registry/models/reg/v2/curve.png" in keys
    assert "rayline/registry/models/reg/serving.json" in keys
    assert not [k for k in keys if k.endswith(".ticket")], "every lock ticket is removed"
    # A second client (another process, another node) sees the same registry through the bucket alone.
    other = Registry(root)
    assert other.names() == ["reg"] and other.model("reg").versions() == ["v1", "v2"]
    assert other.model("reg").serving_version() == "v2"
    loaded = other.load(v2)
    x = torch.randn(3, 2)
    models[1].eval()
    assert torch.allclose(loaded.model(x), models[1](x)), "the version's weights came back from the bucket"
    assert loaded.version == v2

    other.model("reg").set_serving("v1")
    assert registry.model("reg").serving_version() == "v1"
    assert registry.model("reg").serving_history()[-1] == "v2"
    assert registry.model("reg").rollback_serving() == "v2"
    assert other.model("reg").serving_version() == "v2"


def test_a_changed_version_in_the_bucket_is_fetched_again_and_checked(s3, bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("RAYLINE_CACHE", str(tmp_path / "cache"))
    root = s3.uri(bucket, "r")
    write_checkpoint(tmp_path / "ck")
    ref = Registry(root).register(tmp_path / "ck", run_name="r", data_fingerprint="f")
    first = Registry(root).checkpoint_dir(ref)
    assert Registry(root).checkpoint_dir(ref) == first, "a node fetches a version once"

    s3.client().put_object(Bucket=bucket, Key="r/registry/models/reg/v1/checkpoint/model.pt", Body=b"tampered")
    assert Registry(root).checkpoint_dir(ref) == first, "same manifest, same copy"
    manifest_key = "r/registry/models/reg/v1/checkpoint/manifest.json"
    manifest = s3.client().get_object(Bucket=bucket, Key=manifest_key)["Body"].read()
    s3.client().put_object(Bucket=bucket, Key=manifest_key, Body=manifest.replace(b"{", b"{ ", 1))
    refetched = Registry(root).checkpoint_dir(ref)
    assert refetched != first, "a changed manifest is a new copy"
    with pytest.raises(RegistryError, match="do not match the checkpoint manifest"):
        Registry(root).load(ref)


def test_concurrent_registrations_claim_distinct_versions_and_one_marker_history(s3, bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("RAYLINE_CACHE", str(tmp_path / "cache"))
    root = s3.uri(bucket, "r")
    write_checkpoint(tmp_path / "ck")
    claimed, errors = [], []

    def register() -> None:
        try:
            claimed.append(Registry(root).register(tmp_path / "ck", run_name="r", data_fingerprint="f"))
        except Exception as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=register) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(v.version for v in claimed) == ["v1", "v2", "v3", "v4"]
    entry = Registry(root).model("reg")
    # Each registration served its version under the lock: the newest serves, the other three are its history.
    assert entry.serving_version() == "v4"
    assert sorted(entry.serving_history()) == ["v1", "v2", "v3"]


def test_the_object_lock_lets_one_holder_in_at_a_time(s3, bucket):
    folder = location(s3.uri(bucket, "lock"))
    counter = folder / "counter"
    counter.write_text("0")

    def add_one_five_times() -> None:
        for _ in range(5):
            with object_lock(folder):
                counter.write_text(str(int(counter.read_text()) + 1))  # a lost update without the lock

    threads = [threading.Thread(target=add_one_five_times) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counter.read_text() == "15"


def test_an_unknown_bucket_is_a_storage_error_naming_the_root_without_options(s3):
    root = s3.uri("no-such-bucket", "r")
    with pytest.raises(StorageError, match=r"storage.root s3://no-such-bucket/r: bucket no-such-bucket") as caught:
        Registry(root).names()
    assert "endpoint_override" not in str(caught.value)


def test_uris_keep_their_options_when_joined_and_shown():
    root = with_endpoint("s3://b/p", "http://127.0.0.1:9000")
    assert root == "s3://b/p?endpoint_override=127.0.0.1%3A9000&scheme=http"
    assert join(root, "runs", "x") == "s3://b/p/runs/x?endpoint_override=127.0.0.1%3A9000&scheme=http"
    assert display(join(root, "runs")) == "s3://b/p/runs"
    assert with_endpoint("/local/path", "http://h:1") == "/local/path"
    assert join("/a", "b") == "/a/b"


def test_a_lock_ticket_left_by_a_dead_process_is_ignored_once_stale(s3, bucket, monkeypatch):
    import rayline.storage as storage

    folder = location(s3.uri(bucket, "lock"))
    (folder / ".locks" / "dead-process.ticket").write_text("12345")  # its writer died holding the lock
    with pytest.raises(StorageError, match="another process holds the registry lock"), object_lock(folder, timeout_s=1):
        pass
    monkeypatch.setattr(storage, "LOCK_STALE_AFTER_S", 2.0)  # instead of waiting the real 120 s
    time.sleep(3.0)
    with object_lock(folder, timeout_s=5):
        assert not (folder / ".locks" / "dead-process.ticket").exists(), "the stale ticket was removed"
