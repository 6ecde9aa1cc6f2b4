"""Mistakes a user can make with `rayline export` end in one line naming what and where, exit status 2."""

from __future__ import annotations

import sys

import pytest

from faults import register_tiny_model
from rayline.cli import main
from rayline.export import ExportError, export_version


@pytest.fixture
def root(tmp_path):
    register_tiny_model(tmp_path, name="tiny")
    return tmp_path


def export_error(capsys, *argv: str) -> str:
    assert main(["export", *argv]) == 2
    return capsys.readouterr().err


def test_unknown_model_name_is_named_with_the_ones_there_are(root, capsys):
    err = export_error(capsys, "nope", "--output", str(root / "out"), "--root", str(root))
    assert "no model named 'nope'" in err and "models: tiny" in err


def test_unknown_version_is_named_with_the_known_ones(root, capsys):
    err = export_error(capsys, "tiny/v9", "--output", str(root / "out"), "--root", str(root))
    assert "no model version 'v9' of 'tiny'" in err and "known: v1" in err


def test_output_that_is_a_file_is_refused_before_anything_is_exported(root, capsys):
    (root / "taken").write_text("not a folder")
    err = export_error(capsys, "tiny", "--output", str(root / "taken"), "--root", str(root))
    assert f"--output {root / 'taken'}: exists and is not a folder" in err


def test_output_on_an_object_store_is_refused(root, capsys):
    err = export_error(capsys, "tiny", "--output", "s3://bucket/models", "--root", str(root))
    assert "--output s3://bucket/models: must be a local folder" in err


def test_output_that_cannot_be_created_is_named(root, capsys):
    (root / "file").write_text("")
    err = export_error(capsys, "tiny", "--output", str(root / "file" / "inside"), "--root", str(root))
    assert f"--output {root / 'file' / 'inside'}: cannot create the folder" in err


def test_missing_onnx_packages_are_named_with_how_to_install_them(root, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what an environment without it gives: ImportError
    with pytest.raises(ExportError, match=r"needs the package\(s\) onnxruntime.*pip install onnxruntime"):
        export_version(str(root), "tiny", root / "out")


def test_unknown_format_or_quantization_is_refused_by_the_parser(root, capsys):
    for option in (["--format", "tflite"], ["--quantize", "fp16"]):
        with pytest.raises(SystemExit) as exited:
            main(["export", "tiny", "--output", str(root / "out"), "--root", str(root), *option])
        assert exited.value.code == 2
        assert "invalid choice" in capsys.readouterr().err
