"""The serve benchmark's targets, each marked met or not from the medians over rounds.

For rayline (and, when measured, rayline-haproxy / rayline-proxy), per model, with medians over rounds:
  - at concurrency 32, requests/s >= 3x LitServe's on the digits CNN, >= 1.3x on the heavy MLP;
  - at concurrency 32, requests/s >= 2x stock Ray Serve's on both;
  - at concurrency 1, p50 no higher than LitServe's;
  - heavy MLP: at concurrency 32, requests/s >= 60% of the model's ceiling (rows/s alone at batch
    max_batch_size, one thread);
  - no errors at concurrency 1/8/32;
  - overload (each concurrency measured): answered requests/s >= 90% of its concurrency-32 figure, p99 of
    answered requests <= request_timeout_s, and every request not answered refused with 503 + Retry-After
    (no other status, timeout or connection error), summed over rounds.
For the rayline-grpc row (the defaults plus serve.grpc, load over gRPC): p50 at concurrency 1 no higher than the
rayline row's over HTTP. For the rayline-onnx row (the defaults plus serve.runtime onnxruntime): the model alone at
batch 1 (one thread) at least as fast as torch's, and p50 at concurrency 1 no higher than the rayline row's.
A target whose peer or concurrency was not measured is reported as null (not met, not failed).
"""

from __future__ import annotations

from typing import Any

LITSERVE_RATIO = {"cnn": 3.0, "mlp": 1.3}
RAY_SERVE_RATIO = 2.0
CEILING_FRACTION = 0.6
OVERLOAD_FRACTION = 0.9


def median(row: dict | None, key: str) -> float | None:
    if not row or key not in row:
        return None
    return row[key]["median"]


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def at_least(value: float | None, bound: float) -> bool | None:
    return None if value is None else value >= bound


def evaluate(models: dict[str, Any], serve_cfg: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind, result in models.items():
        med = result["medians"]
        for ours in ("rayline", "rayline-haproxy", "rayline-proxy"):
            if ours in med:
                out.setdefault(ours, {})[kind] = targets_for(kind, ours, med, result["model"], serve_cfg)
        if "rayline-grpc" in med:
            out.setdefault("rayline-grpc", {})[kind] = grpc_targets(med)
        if "rayline-onnx" in med:
            out.setdefault("rayline-onnx", {})[kind] = onnx_targets(med, result["model"])
    return out


def grpc_targets(med: dict) -> dict[str, Any]:
    """gRPC beside HTTP on the same defaults: p50 at concurrency 1 no higher than HTTP's (the rayline row)."""
    grpc_p50, http_p50 = (
        median(med["rayline-grpc"].get("1"), "p50_ms"),
        median(med.get("rayline", {}).get("1"), "p50_ms"),
    )
    rows = med["rayline-grpc"]
    figures = {
        "c1_p50_ms": grpc_p50,
        "c1_p50_http_ms": http_p50,
        "c32_req_per_s": median(rows.get("32"), "req_per_s"),
        "c32_http_req_per_s": median(med.get("rayline", {}).get("32"), "req_per_s"),
    }
    met = {
        "c1_p50_not_above_http": None if grpc_p50 is None or http_p50 is None else grpc_p50 <= http_p50,
        "no_errors_c1_c8_c32": all(rows[c]["errors"] == 0 for c in ("1", "8", "32") if c in rows),
    }
    return {"figures": figures, "met": met, "overload": {}}


def onnx_targets(med: dict, model: dict) -> dict[str, Any]:
    """serve.runtime onnxruntime against torch (the rayline row): the model alone at batch 1 at least as fast,
    and the endpoint's p50 at concurrency 1 no higher."""
    onnx_p50, torch_p50 = (
        median(med["rayline-onnx"].get("1"), "p50_ms"),
        median(med.get("rayline", {}).get("1"), "p50_ms"),
    )
    alone = model.get("onnxruntime_ceiling", {}).get("rows_per_s_by_batch", {})
    torch_alone = model["ceiling"]["rows_per_s_by_batch"]
    rows = med["rayline-onnx"]
    figures = {
        "batch1_rows_per_s": alone.get(1),
        "batch1_rows_per_s_torch": torch_alone.get(1),
        "c1_p50_ms": onnx_p50,
        "c1_p50_torch_ms": torch_p50,
        "c32_req_per_s": median(rows.get("32"), "req_per_s"),
        "c32_torch_req_per_s": median(med.get("rayline", {}).get("32"), "req_per_s"),
    }
    met = {
        "batch1_model_at_least_torch": None if not alone else alone[1] >= torch_alone[1],
        "c1_p50_not_above_torch": None if onnx_p50 is None or torch_p50 is None else onnx_p50 <= torch_p50,
        "no_errors_c1_c8_c32": all(rows[c]["errors"] == 0 for c in ("1", "8", "32") if c in rows),
    }
    return {"figures": figures, "met": met, "overload": {}}


def targets_for(kind: str, ours: str, med: dict, model: dict, serve_cfg: Any) -> dict[str, Any]:
    rows = med[ours]
    mine32, mine1 = median(rows.get("32"), "req_per_s"), median(rows.get("1"), "p50_ms")
    lit = med.get("litserve", {})
    stock = med.get("ray-serve", {})
    figures = {
        "c32_req_per_s": mine32,
        "c32_over_litserve": ratio(mine32, median(lit.get("32"), "req_per_s")),
        "c32_over_ray_serve": ratio(mine32, median(stock.get("32"), "req_per_s")),
        "c32_over_bare": ratio(mine32, median(med.get("bare", {}).get("32"), "req_per_s")),
        "c1_p50_ms": mine1,
        "c1_p50_litserve_ms": median(lit.get("1"), "p50_ms"),
        "c32_fraction_of_ceiling": ratio(mine32, model["ceiling"]["rows_per_s"]),
    }
    lit_p50 = figures["c1_p50_litserve_ms"]
    met = {
        f"c32_at_least_{LITSERVE_RATIO[kind]}x_litserve": at_least(figures["c32_over_litserve"], LITSERVE_RATIO[kind]),
        f"c32_at_least_{RAY_SERVE_RATIO}x_ray_serve": at_least(figures["c32_over_ray_serve"], RAY_SERVE_RATIO),
        "c1_p50_not_above_litserve": None if mine1 is None or lit_p50 is None else mine1 <= lit_p50,
        "no_errors_c1_c8_c32": all(rows[c]["errors"] == 0 for c in ("1", "8", "32") if c in rows),
    }
    if kind == "mlp":
        met[f"c32_at_least_{CEILING_FRACTION:.0%}_of_ceiling"] = at_least(
            figures["c32_fraction_of_ceiling"], CEILING_FRACTION
        )
    overload = {}
    for c, row in rows.items():
        if int(c) > 32:
            overload[c] = overload_targets(row, mine32, serve_cfg.request_timeout_s)
    return {"figures": figures, "met": met, "overload": overload}


def overload_targets(row: dict, c32_req_per_s: float | None, request_timeout_s: float) -> dict[str, Any]:
    answered = median(row, "req_per_s")
    p99 = median(row, "p99_ms")
    unexplained = row["errors"] + (row["refused_503"] - row["refused_503_with_retry_after"])
    return {
        "req_per_s": answered,
        "fraction_of_c32": ratio(answered, c32_req_per_s),
        "p99_answered_ms": p99,
        "refused_503": row["refused_503"],
        "refused_503_with_retry_after": row["refused_503_with_retry_after"],
        "other_errors_and_timeouts": row["errors"],
        "met": {
            f"req_per_s_at_least_{OVERLOAD_FRACTION:.0%}_of_c32": at_least(ratio(answered, c32_req_per_s), 0.9),
            "p99_answered_within_request_timeout": None if p99 is None else p99 <= request_timeout_s * 1e3,
            "excess_refused_with_503_retry_after": unexplained == 0,
        },
    }


def report(targets: dict[str, Any]) -> str:
    """One line per target: met, NOT MET or not measured."""
    lines = []
    for ours, per_model in targets.items():
        for kind, result in per_model.items():
            lines.append(f"{ours} / {kind}: {result['figures']}")
            checks = dict(result["met"])
            for c, over in result["overload"].items():
                checks.update({f"c{c}_{name}": ok for name, ok in over["met"].items()})
            for name, ok in checks.items():
                lines.append(f"  {'met' if ok else 'not measured' if ok is None else 'NOT MET'}: {name}")
    return "\n".join(lines)
