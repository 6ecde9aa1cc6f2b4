"""Is the default model at least as good as a linear baseline on small tabular sets?

    .venv/bin/python benchmarks/tabular_defaults.py        # writes benchmarks/results/tabular_defaults.json
    .venv/bin/python benchmarks/tabular_defaults.py --set model.hidden_sizes=[32] --out /tmp/try.json

For each of scikit-learn's bundled tabular sets (diabetes: regression, 442 rows; breast_cancer: 2 classes,
569 rows; wine: 3 classes, 178 rows), written as a plain CSV, and each split seed, it runs the full pipeline
(Ray Data prep, Ray Train DDP on 2 workers, test scoring, registration) with rayline's default model and
training settings: the YAML names only the data, the split seed and storage. The pipeline itself fits the
baseline (scikit-learn LogisticRegression / Ridge with their default settings on the same preprocessed
training split) and scores both on the same test split; this script collects the two numbers. Target: the
model is not worse than the baseline on any (dataset, seed): test_accuracy >= the baseline's, test_rmse <=.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATASETS = {"diabetes": "regression", "breast_cancer": "classification", "wine": "classification"}
NEEDED: dict[str, list[str]] = {}
"""Settings a set cannot run without. Empty since a default batch larger than a small split's per-replica share
shrinks by itself; the stored results/tabular_defaults.json predates that and ran wine with batch 32."""


def write_table(name: str, path: Path) -> list[str]:
    """The bundled set as a CSV with a "target" column and a string "row_id" (not a feature); returns the feature
    names. The id is there because the split hashes each row's values with the seed, and pandas' hash takes the
    seed's key only for text: on all-numeric rows every data.split.seed would give the same split."""
    from sklearn import datasets

    loaded = getattr(datasets, f"load_{name}")(as_frame=True)
    frame = loaded.frame.rename(columns=lambda c: c.replace(" ", "_").replace("/", "_"))
    features = [c for c in frame.columns if c != "target"]
    frame.insert(0, "row_id", [f"r{i:05d}" for i in range(len(frame))])
    frame.to_csv(path, index=False)
    return features


def run_one(name: str, seed: int, work: Path, overrides: list[str]) -> dict:
    from rayline.config import apply_override, validate_config
    from rayline.pipeline import train_and_register

    source = work / f"{name}.csv"
    features = write_table(name, source)
    raw = {
        "name": f"{name}-seed{seed}",
        "data": {
            "source": str(source),
            "task": DATASETS[name],
            "label": "target",
            "features": features,
            "split": {"seed": seed},
        },
        "storage": {"root": str(work / "store")},
    }
    for override in [*NEEDED.get(name, []), *overrides]:
        apply_override(raw, override)
    cfg = validate_config(raw)
    epochs: list[dict] = []
    started = time.perf_counter()
    report = train_and_register(cfg, on_epoch=epochs.append, log=print)
    comparison = report.evaluation["comparison"]
    return {
        "dataset": name,
        "seed": seed,
        "metric": comparison["metric"],
        "model": comparison["model"],
        "baseline": comparison["baseline"],
        "worse_than_baseline": comparison["worse_than_baseline"],
        "epochs_run": len(epochs),
        "best_epoch": int(report.best_metrics["epoch"]),
        "wall_s": round(time.perf_counter() - started, 1),
        "test_metrics": report.test_metrics,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override KEY=VALUE")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "tabular_defaults.json"))
    args = parser.parse_args()

    from rayline.config import ModelConfig, TrainConfig
    from rayline.runtime import connect

    connect()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.datasets:
            for seed in args.seeds:
                work = Path(tmp) / f"{name}-{seed}"
                work.mkdir()
                rows.append(run_one(name, seed, work, args.overrides))
                r = rows[-1]
                print(f"{name} seed {seed}: {r['metric']} model {r['model']:.4f} baseline {r['baseline']:.4f}")
    result = {
        "defaults": {
            "model": ModelConfig().model_dump(),
            "train": TrainConfig().model_dump(exclude={"checkpoint", "pipeline"}),
        },
        "overrides": args.overrides,
        "needed_per_dataset": NEEDED,
        "rows": rows,
        "target_met": not any(r["worse_than_baseline"] for r in rows),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"{'dataset':14} {'seed':>4} {'metric':12} {'model':>9} {'baseline':>9}")
    for r in rows:
        flag = "  WORSE" if r["worse_than_baseline"] else ""
        print(f"{r['dataset']:14} {r['seed']:>4} {r['metric']:12} {r['model']:9.4f} {r['baseline']:9.4f}{flag}")
    print(f"wrote {args.out}; target met: {result['target_met']}")


if __name__ == "__main__":
    main()
