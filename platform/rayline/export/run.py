"""One export, step by step: load the version as Serve does, write the fp32 graph and check it, then (if asked)
the int8 one, and record each file that passed in the registry."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from rayline.checkpoint import checkpoint_config, file_sha256
from rayline.edge.contract import ExportError, describe
from rayline.edge.onnx import check_graph_names, export_onnx, metadata_for, opset_of, quantize_int8
from rayline.edge.rows import ParityRows, parity_rows
from rayline.export import ExportedFile, ExportReport
from rayline.export.parity import (
    ParityReport,
    compare,
    fp32_problems,
    int8_problems,
    onnx_answers,
    served_answers,
)
from rayline.export.parity import describe as describe_parity
from rayline.registry import ModelVersion, Registry
from rayline.registry_layout import now, write_json
from rayline.serve.model import ServedModel


def run_export(
    root: str,
    spec: str,
    folder: Path,
    *,
    quantize: str | None,
    allow_accuracy_drop: bool,
    log: Callable[[str], None],
) -> ExportReport:
    registry = Registry(root)
    ref = registry.find(spec)
    served = ServedModel.load(root, ref.name, ref.version)  # checks the manifest hashes, as a replica does
    config = checkpoint_config(registry.checkpoint_dir(ref))
    pre = served.preprocessor
    stem = f"{ref.name}-{ref.version}"
    fp32_path, int8_path, contract_path = (folder / f"{stem}{suffix}" for suffix in (".onnx", ".int8.onnx", ".json"))
    files = {"fp32": fp32_path.name, **({"int8": int8_path.name} if quantize else {})}
    contract = describe(pre, model=str(ref), files=files)
    log(f"exporting {ref} ({config.model.kind}, {pre.task}) to {fp32_path}")
    exporter = export_onnx(pre, served.model, fp32_path, metadata_for(pre, str(ref)))
    check_graph_names(fp32_path, pre)
    rows = parity_rows(pre, config, served.record)
    log(f"  parity rows: {rows.description}")
    reference = served_answers(served, rows)
    fp32 = compare(reference, onnx_answers(fp32_path, served, rows), served, rows)
    report = ExportReport(str(ref), contract_path, rows.description)
    report.lines.append(f"fp32 ({exporter} exporter): {describe_parity(fp32)}")
    log(f"  {report.lines[-1]}")
    problems = fp32_problems(fp32)
    if problems:
        fp32_path.unlink(missing_ok=True)
        raise ExportError(f"{ref}: the exported graph does not reproduce rayline's answers: {'; '.join(problems)}")
    write_json(contract_path, contract)
    report.files.append(record(registry, ref, fp32_path, exporter, None, fp32, rows))
    if quantize:
        report.files.append(
            quantized(registry, ref, served, rows, fp32_path, int8_path, exporter, allow_accuracy_drop, report, log)
        )
    return report


def quantized(
    registry: Registry,
    ref: ModelVersion,
    served: ServedModel,
    rows: ParityRows,
    fp32_path: Path,
    int8_path: Path,
    exporter: str,
    allow_accuracy_drop: bool,
    report: ExportReport,
    log: Callable[[str], None],
) -> ExportedFile:
    """Quantize, check against rayline's answers and the limits, and record it; ExportError (the file removed)
    past a limit unless allow_accuracy_drop."""
    quantize_int8(fp32_path, int8_path)
    int8 = compare(served_answers(served, rows), onnx_answers(int8_path, served, rows), served, rows)
    size_ratio = int8_path.stat().st_size / fp32_path.stat().st_size
    report.lines.append(f"int8: {size_ratio:.1%} of the fp32 size, {describe_parity(int8)}")
    log(f"  {report.lines[-1]}")
    problems = int8_problems(int8, size_ratio, served.preprocessor.target_std)
    if problems and not allow_accuracy_drop:
        int8_path.unlink(missing_ok=True)
        raise ExportError(
            f"{ref}: the int8 model is past the limits: {'; '.join(problems)}; {int8_path.name} was removed "
            f"(the fp32 model {fp32_path.name} is kept); pass --allow-accuracy-drop to keep it anyway"
        )
    if problems:
        report.lines.append(f"int8 kept with --allow-accuracy-drop: {'; '.join(problems)}")
        log(f"  {report.lines[-1]}")
    extra = {"size_ratio": round(size_ratio, 4), "accepted_past_limits": problems}
    return record(registry, ref, int8_path, exporter, "int8-dynamic", int8, rows, extra)


def record(
    registry: Registry,
    ref: ModelVersion,
    path: Path,
    exporter: str,
    quantization: str | None,
    parity: ParityReport,
    rows: ParityRows,
    extra: dict[str, Any] | None = None,
) -> ExportedFile:
    entry = {
        "format": "onnx",
        "file": str(path),
        "sha256": file_sha256(path),
        "bytes": path.stat().st_size,
        "opset": opset_of(path),
        "exporter": exporter,
        "quantization": quantization,
        "parity": {**parity.to_dict(), "rows_description": rows.description},
        "exported_at": now(),
        **(extra or {}),
    }
    registry.record_export(ref, entry)
    return ExportedFile(path, entry)
