"""The torch module to an ONNX file: torch's exporter, then the string lookups torch cannot express, the class
names and the metadata; and ONNX Runtime's dynamic int8 quantization."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rayline.data.preprocess import Preprocessor
from rayline.edge.contract import CATEGORICAL_INPUT, NUMERIC_INPUT, ExportError, input_names, output_names
from rayline.edge.graph import InputLayout, exportable

OPSET = 18
"""The default-domain opset asked of both exporters (ONNX Runtime 1.16 and later run it)."""
ML_OPSET = 2
"""ai.onnx.ml, for LabelEncoder (string keys to int64 and back)."""
SLOTS_INPUT = "category_slots"
"""The torch graph's categorical input, fed by the string lookups once they are in front of it."""
LABEL_INDEX = "label_index"
EXAMPLE_ROWS = 2


def export_onnx(
    preprocessor: Preprocessor,
    model: nn.Module,
    path: Path,
    metadata: dict[str, str],
    exporters: tuple[str, ...] = ("dynamo", "torchscript"),
) -> str:
    """Write the self-contained graph to `path`; returns the exporter that made it, the first of `exporters` that
    succeeds: "dynamo" (torch.export, torch's current exporter), else "torchscript" (the older one)."""
    import onnx

    module = exportable(preprocessor, model)
    args, names = example_inputs(preprocessor)
    failures = []
    for exporter in exporters:
        try:
            proto = EXPORTERS[exporter](module, args, names, preprocessor)
            break
        except Exception as err:  # any failure of one exporter is worth a try with the next
            failures.append(f"{exporter}: {one_line(err)}")
    else:
        raise ExportError(f"torch could not export this model to ONNX: {'; '.join(failures)}")
    strip_trace_info(proto)
    layout = InputLayout.of(preprocessor)
    if layout.categorical:
        add_category_lookup(proto, layout)
    if preprocessor.classes is not None:
        add_label_names(proto, preprocessor.classes)
    for key, value in {**metadata, "rayline.exporter": exporter}.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save_model(proto, str(path))
    return exporter


def example_inputs(preprocessor: Preprocessor) -> tuple[tuple[torch.Tensor, ...], list[str]]:
    """Tensors the exporters trace with, and the torch graph's input names."""
    layout = InputLayout.of(preprocessor)
    args, names = [], []
    if layout.numeric:
        args.append(torch.zeros(EXAMPLE_ROWS, len(layout.numeric), dtype=torch.float64))
        names.append(NUMERIC_INPUT)
    if layout.categorical:
        args.append(torch.zeros(EXAMPLE_ROWS, len(layout.categorical), dtype=torch.long))
        names.append(SLOTS_INPUT)
    return tuple(args), names


def torch_output_names(preprocessor: Preprocessor) -> list[str]:
    return ["probabilities", LABEL_INDEX] if preprocessor.classes is not None else ["value"]


def export_with_dynamo(module: nn.Module, args: tuple, names: list[str], preprocessor: Preprocessor) -> Any:
    batch = torch.export.Dim("n")
    with quiet():
        program = torch.onnx.export(
            module,
            args,
            dynamo=True,
            input_names=names,
            output_names=torch_output_names(preprocessor),
            dynamic_shapes=tuple({0: batch} for _ in args),
            opset_version=OPSET,
            verbose=False,
        )
    return program.model_proto


def export_with_torchscript(module: nn.Module, args: tuple, names: list[str], preprocessor: Preprocessor) -> Any:
    import onnx

    outputs = torch_output_names(preprocessor)
    buffer = io.BytesIO()
    with quiet():
        torch.onnx.export(
            module,
            args,
            buffer,
            dynamo=False,
            input_names=names,
            output_names=outputs,
            dynamic_axes={name: {0: "n"} for name in names + outputs},
            opset_version=OPSET,
        )
    return onnx.load_from_string(buffer.getvalue())


def strip_trace_info(proto: Any) -> None:
    """Drop what the dynamo exporter records about the Python it traced (stack traces, module paths, source file
    names) and the inferred shapes of intermediate values: most of a small model's bytes, nothing ONNX Runtime
    needs (it infers shapes itself), and this machine's paths in a shipped file."""
    for node in proto.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    del proto.graph.metadata_props[:]
    del proto.graph.value_info[:]


EXPORTERS = {"dynamo": export_with_dynamo, "torchscript": export_with_torchscript}


def add_category_lookup(proto: Any, layout: InputLayout) -> None:
    """Put a string input in front of the torch graph's slot input: per categorical feature a LabelEncoder from
    the value's key to its slot, with "" (missing) and unseen values mapped as CategoricalStat.slots_of does."""
    from onnx import TensorProto, helper, numpy_helper

    graph = proto.graph
    nodes, slot_columns = [], []
    for i, f in enumerate(layout.categorical):
        other = len(f.categories) if f.other else -1
        missing = f.slots - 1 if f.missing_slot else other
        bounds = [
            numpy_helper.from_array(_int64([v]), f"category_{i}_{end}") for end, v in (("start", i), ("end", i + 1))
        ]
        graph.initializer.extend(bounds)
        column = f"category_{i}_text"
        nodes.append(
            helper.make_node("Slice", [CATEGORICAL_INPUT, bounds[0].name, bounds[1].name, "category_axis"], [column])
        )
        slot_columns.append(f"category_{i}_slot")
        nodes.append(
            helper.make_node(
                "LabelEncoder",
                [column],
                [slot_columns[-1]],
                domain="ai.onnx.ml",
                keys_strings=[*f.categories, ""],
                values_int64s=[*range(len(f.categories)), missing],
                default_int64=other,
                name=f"lookup_{i}",
            )
        )
    graph.initializer.append(numpy_helper.from_array(_int64([1]), "category_axis"))
    nodes.append(helper.make_node("Concat", slot_columns, [SLOTS_INPUT], axis=1))
    replace_input(
        graph,
        SLOTS_INPUT,
        helper.make_tensor_value_info(CATEGORICAL_INPUT, TensorProto.STRING, ["n", len(slot_columns)]),
    )
    prepend_nodes(graph, nodes)
    use_ml_domain(proto)


def add_label_names(proto: Any, classes: list[str]) -> None:
    """A string output `label`: the class name at label_index."""
    from onnx import TensorProto, helper

    graph = proto.graph
    node = helper.make_node(
        "LabelEncoder",
        [LABEL_INDEX],
        ["label"],
        domain="ai.onnx.ml",
        keys_int64s=list(range(len(classes))),
        values_strings=list(classes),
        default_string="",
        name="class_names",
    )
    graph.node.append(node)
    graph.output.insert(0, helper.make_tensor_value_info("label", TensorProto.STRING, ["n"]))
    use_ml_domain(proto)


def replace_input(graph: Any, old_name: str, new_input: Any) -> None:
    kept = [i for i in graph.input if i.name != old_name]
    del graph.input[:]
    graph.input.extend([*kept, new_input])


def prepend_nodes(graph: Any, nodes: list[Any]) -> None:
    existing = list(graph.node)
    del graph.node[:]
    graph.node.extend([*nodes, *existing])


def use_ml_domain(proto: Any) -> None:
    """Import ai.onnx.ml at ML_OPSET at least (the dynamo exporter may already import it at version 1)."""
    from onnx import helper

    for opset in proto.opset_import:
        if opset.domain == "ai.onnx.ml":
            opset.version = max(opset.version, ML_OPSET)
            return
    proto.opset_import.append(helper.make_opsetid("ai.onnx.ml", ML_OPSET))


def opset_of(path: Path) -> int:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def quantize_int8(source: Path, target: Path) -> None:
    """ONNX Runtime's dynamic quantization: int8 weights, activations quantized per batch at run time."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with quiet():
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)
    quantized = onnx.load(str(target))
    del quantized.graph.value_info[:]  # the quantizer's shape inference adds them back; the fp32 file has none
    onnx.save_model(quantized, str(target))


def check_graph_names(path: Path, preprocessor: Preprocessor) -> None:
    """An internal invariant: the file's inputs and outputs are the contract's."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    assert [i.name for i in graph.input] == input_names(InputLayout.of(preprocessor)), [i.name for i in graph.input]
    assert sorted(o.name for o in graph.output) == sorted(output_names(preprocessor))


def metadata_for(preprocessor: Preprocessor, model: str) -> dict[str, str]:
    """ONNX metadata_props: what the file is, the features of each input in order, and the class names. The
    categories and missing rules are in the JSON beside it (contract.describe), which would double a small
    model's file here."""
    layout = InputLayout.of(preprocessor)
    features = {
        NUMERIC_INPUT: [f.name for f in layout.numeric],
        CATEGORICAL_INPUT: [f.name for f in layout.categorical],
    }
    meta = {
        "rayline.model": model,
        "rayline.task": preprocessor.task,
        "rayline.label": preprocessor.label,
        "rayline.inputs": json.dumps({name: names for name, names in features.items() if names}),
    }
    if preprocessor.classes is not None:
        meta["rayline.classes"] = json.dumps(preprocessor.classes)
    return meta


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """The exporters and the quantizer log warnings and progress to the root logger, torch's and stdout."""
    root = logging.getLogger()
    saved = root.level
    root.setLevel(logging.ERROR)
    torch_logger = logging.getLogger("torch")
    torch_saved = torch_logger.level
    torch_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(saved)
        torch_logger.setLevel(torch_saved)


def _int64(values: list[int]) -> Any:
    import numpy as np

    return np.array(values, dtype=np.int64)


def one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:300]}"
