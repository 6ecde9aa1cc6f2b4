"""What the `rayline` command prints beyond one-liners: the registered-models table, a prediction, a report."""

from __future__ import annotations


def models_table(records: list[dict], serving: dict[str, str | None]) -> str:
    """Registered versions in aligned columns: name, version, epoch, the key metrics present, created."""
    metrics = [
        f"{split}_{key}"
        for key in ("accuracy", "f1_macro", "roc_auc", "rmse", "mae", "r2")
        for split in ("val", "test")
        if any(f"{split}_{key}" in {**r.get("metrics", {}), **r.get("test_metrics", {})} for r in records)
    ]
    compared = any("comparison" in r.get("evaluation", {}) for r in records)
    rows = [["", "name", "version", "epoch", *metrics, *(["baseline"] if compared else []), "created"]]
    for r in records:
        shown = {**r.get("metrics", {}), **r.get("test_metrics", {})}
        rows.append(
            [
                "*" if serving.get(r["name"]) == r["version"] else "",
                r["name"],
                r["version"],
                str(r["epoch"] + 1),
                *(format_metric(shown.get(k)) for k in metrics),
                *([baseline_verdict(r)] if compared else []),
                r.get("created_at", ""),
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    right = {3, *range(4, 4 + len(metrics))}  # numbers line up on the right
    lines = [
        "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        for row in rows
    ]
    return "\n".join(line.rstrip() for line in lines)


def baseline_verdict(record: dict) -> str:
    """How the version did against the linear baseline on the test split: ok, WORSE, or - (not compared)."""
    comparison = record.get("evaluation", {}).get("comparison")
    if comparison is None:
        return "-"
    return "WORSE" if comparison.get("worse_than_baseline") else "ok"


def format_metric(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def describe_prediction(prediction: dict) -> str:
    if "label" in prediction:
        return f"label {prediction['label']} (p={prediction['probabilities'][prediction['label']]:.4f})"
    return f"value {prediction['value']:.4f}"


def print_report(report) -> None:
    shown = " ".join(f"{k}={v:.4f}" for k, v in report.test_metrics.items())
    print(f"registered model {report.version}; test: {shown or '(no test split)'}")
