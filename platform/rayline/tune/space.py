"""Search spaces: a YAML mapping from dotted config paths to distributions, checked before Ray starts.

# tune/digits.yaml
train.optimizer.lr: {loguniform: [0.0003, 0.01]}
model.hidden_sizes: {choice: [[64], [128]]}
model.dropout: {uniform: [0.0, 0.3]}
train.batch_size: {grid: [32, 64]}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from rayline.config import (
    ConfigError,
    PipelineConfig,
    Section,
    apply_override_value,
    check_model_inputs,
    format_validation_error,
    model_input_problem,
    read_yaml_mapping,
)

KINDS = ("choice", "grid", "uniform", "loguniform", "randint", "quniform")
TUNABLE_SECTIONS = ("model", "train")
# Fixed per search: the planner sizes trials from them, and the scheduler owns the epoch budget.
NOT_TUNABLE = {
    "train.num_workers": "every trial must need the same resources for the planner to fit them",
    "train.cpus_per_worker": "every trial must need the same resources for the planner to fit them",
    "train.use_gpu": "every trial must need the same resources for the planner to fit them",
    "train.epochs": "tune.scheduler.max_t sets the epoch budget of every trial",
}


@dataclass(frozen=True)
class Param:
    path: str
    kind: str
    args: tuple

    def describe(self) -> str:
        return f"{self.path}: {{{self.kind}: {list(self.args)}}}"


def load_search_space(path: str | Path, base: PipelineConfig) -> list[Param]:
    """Read and check a search-space file against the pipeline it will tune."""
    path = Path(path)
    raw = read_yaml_mapping(path)
    if not raw:
        raise ConfigError(f"{path}: the search space is empty; add at least one entry")
    return [parse_entry(str(key), value, base, where=f"{path}: {key}") for key, value in raw.items()]


def parse_entry(key: str, value: Any, base: PipelineConfig, where: str) -> Param:
    check_path(key, where)
    if not isinstance(value, dict) or len(value) != 1 or next(iter(value)) not in KINDS:
        raise ConfigError(f"{where}: expected one of {{{', '.join(KINDS)}: ...}}, got {value!r}")
    kind, args = next(iter(value.items()))
    args = check_args(kind, args, where)
    for sample in extreme_values(kind, args):
        check_value(base, key, sample, where)
    return Param(key, kind, tuple(args))


def check_path(key: str, where: str) -> None:
    parts = key.split(".")
    if parts[0] not in TUNABLE_SECTIONS:
        raise ConfigError(f"{where}: only model.* and train.* fields can be searched")
    if key in NOT_TUNABLE:
        raise ConfigError(f"{where}: {key} cannot be searched: {NOT_TUNABLE[key]}")
    model: type[BaseModel] = PipelineConfig
    for i, part in enumerate(parts):
        fields = model.model_fields
        if part not in fields:
            known = ", ".join(fields)
            raise ConfigError(f"{where}: {'.'.join(parts[: i + 1])} is not a config field (known: {known})")
        annotation = fields[part].annotation
        is_section = isinstance(annotation, type) and issubclass(annotation, Section)
        if i < len(parts) - 1 and not is_section:
            raise ConfigError(f"{where}: {'.'.join(parts[: i + 1])} is a value, not a section")
        if i == len(parts) - 1 and is_section:
            raise ConfigError(f"{where}: {key} is a section; name one of its fields")
        if is_section:
            model = annotation


def check_args(kind: str, args: Any, where: str) -> list:
    if not isinstance(args, list) or not args:
        raise ConfigError(f"{where}: {kind} takes a non-empty list, got {args!r}")
    if kind in ("choice", "grid"):
        return args
    expected = 3 if kind == "quniform" else 2
    if len(args) != expected or not all(is_number(a) for a in args):
        shape = "[low, high, q]" if kind == "quniform" else "[low, high]"
        raise ConfigError(f"{where}: {kind} takes {shape} as numbers, got {args!r}")
    low, high = args[0], args[1]
    if not low < high:
        raise ConfigError(f"{where}: {kind} needs low < high, got low={low} high={high}")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{where}: loguniform needs low > 0, got {low}")
    if kind == "randint" and not all(isinstance(a, int) for a in args):
        raise ConfigError(f"{where}: randint takes integers [low, high) , got {args!r}")
    if kind == "quniform" and not 0 < args[2] <= high - low:
        raise ConfigError(f"{where}: quniform needs 0 < q <= high - low, got q={args[2]}")
    return args


def extreme_values(kind: str, args: list) -> list:
    if kind in ("choice", "grid"):
        return args
    if kind == "randint":
        return [args[0], args[1] - 1]  # high is exclusive
    return [args[0], args[1]]


def check_model_inputs_of_trials(base: PipelineConfig, params: list[Param], num_inputs: int, inputs: str) -> None:
    """Every searched model value (and the base config) must take the fitted inputs per row: categorical
    features make the width known only once the preprocessor is fitted, on the driver, before any trial."""
    check_model_inputs(base, num_inputs, inputs)
    for p in params:
        if not p.path.startswith("model."):
            continue
        for value in extreme_values(p.kind, list(p.args)):
            trial = apply_params(base, {p.path: value})
            if problem := model_input_problem(trial.model, num_inputs, inputs):
                raise ConfigError(f"{base.tune.search_space}: {p.path}: the value {value!r} does not fit: {problem}")


def check_value(base: PipelineConfig, key: str, value: Any, where: str) -> None:
    try:
        apply_params(base, {key: value})
    except ConfigError as err:
        detail = str(err).split("\n", 1)[-1].strip()
        raise ConfigError(f"{where}: the value {value!r} is not valid for this pipeline: {detail}") from None


def apply_params(base: PipelineConfig, params: dict[str, Any]) -> PipelineConfig:
    """The base config with each dotted-path parameter set, validated as a whole."""
    raw = base.model_dump(mode="json")
    for key, value in params.items():
        apply_override_value(raw, key, value)
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, "trial parameters")) from None


def to_tune_space(params: list[Param], searcher: str) -> dict[str, Any]:
    """Ray Tune's param_space, keyed by dotted path."""
    from ray import tune

    if searcher == "optuna" and any(p.kind == "grid" for p in params):
        names = [p.path for p in params if p.kind == "grid"]
        raise ConfigError(f"grid entries {names} need tune.searcher: grid or random (Optuna samples, it does not grid)")
    if searcher == "grid":
        sampled = [p.path for p in params if p.kind not in ("grid", "choice")]
        if sampled:
            raise ConfigError(f"tune.searcher grid needs grid or choice entries only; {sampled} are sampled")
        return {p.path: tune.grid_search([encode(v) for v in p.args]) for p in params}
    build = {
        "choice": lambda a: tune.choice([encode(v) for v in a]),
        "grid": lambda a: tune.grid_search([encode(v) for v in a]),
        "uniform": lambda a: tune.uniform(*a),
        "loguniform": lambda a: tune.loguniform(*a),
        "randint": lambda a: tune.randint(*a),
        "quniform": lambda a: tune.quniform(*a),
    }
    return {p.path: build[p.kind](p.args) for p in params}


def encode(value: Any) -> Any:
    """Searchers store choices as scalars (Optuna warns otherwise): lists and mappings travel as JSON."""
    return json.dumps(value) if isinstance(value, list | dict) else value


def decode_params(params: dict[str, Any]) -> dict[str, Any]:
    return {key: decode(value) for key, value in params.items()}


def decode(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in "[{":
        return json.loads(value)
    return value


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
