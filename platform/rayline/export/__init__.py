"""`rayline export`: ONNX export of a registered version, with the preprocessing inside the graph (built by
rayline.edge), checked against rayline's own answers on every export.

    run.py       the export: graph, files, parity, int8, the registry record
    parity.py    ONNX Runtime against the Serve replica's code path, and the int8 limits
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rayline.edge.contract import ExportError

__all__ = ["ExportError", "ExportReport", "ExportedFile", "export_version"]

FORMATS = ("onnx",)
QUANTIZATIONS = ("int8",)
PACKAGES = ("onnx", "onnxscript", "onnxruntime")


@dataclass(frozen=True)
class ExportedFile:
    path: Path
    entry: dict[str, Any]
    """What the registry record holds about it (sha256, bytes, opset, exporter, quantization, parity)."""


@dataclass
class ExportReport:
    model: str
    contract_path: Path
    rows: str
    """Which rows the parity check ran on."""
    files: list[ExportedFile] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    """What to print: the parity figures, one line per file."""


def export_version(
    root: str,
    spec: str,
    output: str | Path,
    *,
    fmt: str = "onnx",
    quantize: str | None = None,
    allow_accuracy_drop: bool = False,
    log: Callable[[str], None] = print,
) -> ExportReport:
    """Export the registered version `spec` ("NAME" for its serving version, or "NAME/vN") from the registry at
    `root` into the folder `output`, check it against rayline's answers, and add it to the version's record.

    ExportError when the fp32 graph's answers differ from rayline's beyond the tolerance, or the int8 one loses
    more than the limits allow (unless allow_accuracy_drop); the int8 file is then removed."""
    check_options(fmt, quantize)
    require_packages()
    from rayline.export.run import run_export

    folder = output_folder(output)
    return run_export(root, spec, folder, quantize=quantize, allow_accuracy_drop=allow_accuracy_drop, log=log)


def check_options(fmt: str, quantize: str | None) -> None:
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r}: rayline exports {', '.join(FORMATS)}")
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ExportError(f"--quantize {quantize!r}: rayline quantizes to {', '.join(QUANTIZATIONS)}")


def require_packages() -> None:
    missing = []
    for name in PACKAGES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ExportError(
            f"rayline export needs the package(s) {', '.join(missing)}, which are not installed in "
            f"this Python environment; install them with: pip install {' '.join(missing)}"
        )


def output_folder(output: str | Path) -> Path:
    """--output as a local folder, created if needed; ExportError naming it if that is impossible."""
    text = str(output)
    if "://" in text:
        raise ExportError(f"--output {text}: must be a local folder (export writes files an edge device copies)")
    folder = Path(text).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ExportError(f"--output {text}: exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ExportError(f"--output {text}: cannot create the folder: {err.strerror or err}") from None
    if not is_writable(folder):
        raise ExportError(f"--output {text}: the folder is not writable")
    return folder.resolve()


def is_writable(folder: Path) -> bool:
    probe = folder / ".rayline-export-probe"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError:
        return False
    return True
