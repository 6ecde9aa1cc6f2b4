"""The typed config tree: one frozen pydantic model per section, loaded from YAML plus --set overrides.

Nothing here touches Ray; a bad file is rejected before any cluster resource is claimed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from rayline.errors import RaylineError
from rayline.storage import is_remote, with_endpoint


class ConfigError(RaylineError, ValueError):
    """A user-caused config problem; the message names the file, the dotted path and the bad value."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


PositiveInt = Annotated[int, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]
PositiveFraction = Annotated[float, Field(gt=0.0, lt=1.0)]


# ---------------------------------------------------------------- data


class ConstantImputation(Section):
    constant: float
    """Value that replaces a missing numeric cell."""


NumericImputation = Literal["median", "mean", "drop_row", "error"] | ConstantImputation
"""How a missing numeric cell is filled: the training split's median or mean, a constant ({constant: X}),
dropping the row (training and batch prediction; a served row with it is refused), or an error."""
CategoricalMissing = Literal["category", "drop_row", "error"]
"""category: a missing categorical cell is a category of its own (the default)."""
FeatureKind = Literal["numeric", "categorical"]


class FeatureConfig(Section):
    name: str = Field(min_length=1)
    """Column name in the source."""
    kind: FeatureKind = "numeric"
    """numeric columns are standardized; categorical ones are one-hot encoded (or embedded, see encoding)."""
    missing: NumericImputation | CategoricalMissing | None = None
    """How missing cells of this column are handled; none = data.missing's rule for the column's kind."""
    indicator: bool | None = None
    """Add a 0/1 "was missing" input beside a numeric column; none = data.missing.indicator."""
    max_categories: PositiveInt | None = None
    """Most categories kept (most frequent first; the rest become one "other" category); none =
    data.max_categories."""
    encoding: Literal["auto", "onehot", "embedding"] = "auto"
    """How a categorical column reaches the model: onehot, a learned embedding, or auto (embedding when it keeps
    more than data.embedding_threshold categories)."""

    @model_validator(mode="after")
    def _missing_fits_kind(self) -> FeatureConfig:
        categorical_only = self.missing == "category"
        numeric_only = isinstance(self.missing, ConstantImputation) or self.missing in ("median", "mean")
        if self.kind == "numeric" and categorical_only:
            raise ValueError(f"missing 'category' is for categorical features; {self.name!r} is numeric")
        if self.kind == "categorical" and numeric_only:
            raise ValueError(
                f"missing {self.missing!r} is for numeric features; categorical {self.name!r} takes "
                "category, drop_row or error"
            )
        if self.kind == "categorical" and self.indicator:
            raise ValueError(f"indicator is for numeric features; categorical {self.name!r} keeps missing apart")
        return self


class MissingConfig(Section):
    numeric: NumericImputation = "median"
    """Default rule for missing numeric cells: median, mean, {constant: X}, drop_row or error."""
    categorical: CategoricalMissing = "category"
    """Default rule for missing categorical cells: category (its own category), drop_row or error."""
    indicator: bool = False
    """Default for feature.indicator: add a 0/1 "was missing" input beside each numeric column."""


class SplitConfig(Section):
    validation: PositiveFraction = 0.15
    """Share of rows held out for validation (model selection, early stopping)."""
    test: Fraction = 0.15
    """Share of rows held out for the final test metric."""
    seed: int = 0
    """Seed of the shuffle that assigns rows to splits; same seed, same split."""

    @model_validator(mode="after")
    def _leaves_training_rows(self) -> SplitConfig:
        if self.validation + self.test >= 1.0:
            raise ValueError(
                f"validation + test = {self.validation + self.test:g} leaves no training rows; keep their sum below 1"
            )
        return self


class DataConfig(Section):
    source: str = Field(min_length=1)
    """A file, a directory or a glob; local path or a pyarrow-filesystem URI (s3://, gs://, ...). A directory
    written by Spark or Hive (part files, _SUCCESS, .crc, key=value/ partition folders) reads as one table."""
    format: Literal["parquet", "csv", "json"] | None = None
    """File format; inferred from the file extension when omitted. json means JSON lines."""
    task: Literal["classification", "regression"]
    """What the model predicts: a class (classification) or a number (regression)."""
    label: str = Field(min_length=1)
    """Column holding the target."""
    features: list[FeatureConfig] | Literal["auto"] = "auto"
    """Input columns, in the order the model sees them (a bare name means a numeric column), or auto: every
    column but the label and data.exclude, kinds inferred from the schema (`rayline validate --data` prints
    them)."""
    exclude: list[str] = []
    """Columns features: auto leaves out (ids, leaks); columns that look like ids are left out anyway."""
    missing: MissingConfig = MissingConfig()
    """Data-wide rules for missing cells; a feature's own missing/indicator settings override them."""
    max_categories: PositiveInt = 100
    """Most categories a categorical column keeps (most frequent first); rarer values share one "other"."""
    embedding_threshold: PositiveInt = 16
    """A categorical column (encoding auto) keeping more categories than this gets a learned embedding."""
    embedding_dim: PositiveInt | None = None
    """Width of each embedding; none = min(16, round(1.6 * categories ** 0.56))."""
    split: SplitConfig = SplitConfig()
    """How rows are divided into train / validation / test."""

    @field_validator("features", mode="before")
    @classmethod
    def _bare_names_are_numeric(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"name": v} if isinstance(v, str) else v for v in value]
        return value

    @model_validator(mode="after")
    def _columns_are_distinct(self) -> DataConfig:
        if self.features == "auto":
            if self.label in self.exclude:
                raise ValueError(f"the label column {self.label!r} is in data.exclude; the label is never a feature")
            return self
        if not self.features:
            raise ValueError("features is an empty list; name at least one column, or write features: auto")
        if self.exclude:
            raise ValueError("data.exclude is only read with features: auto; drop the columns from features instead")
        names = [f.name for f in self.features]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"feature names must be unique; repeated: {duplicates}")
        if self.label in names:
            raise ValueError(f"the label column {self.label!r} is also listed as a feature")
        return self

    @property
    def resolved(self) -> bool:
        """True once features is a list of columns (features: auto is resolved against the source's schema)."""
        return self.features != "auto"


# ---------------------------------------------------------------- model


class ModelConfig(Section):
    kind: Literal["mlp", "cnn", "transformer"] = "mlp"
    """mlp for flat/tabular inputs; cnn for image-shaped inputs (see image_shape); transformer over feature tokens."""
    hidden_sizes: list[PositiveInt] = [32]
    """Widths of the hidden layers (mlp) or of the dense head after the convolutions (cnn). The default (with
    dropout 0.3, weight decay 1.0, lr 0.003 and early stopping) ties or beats a linear baseline on 6 of 9 small
    tabular runs and trails it slightly on 3 (benchmarks/tabular_defaults.py, on the sets it was chosen on)."""
    channels: list[PositiveInt] = [16, 32]
    """Output channels of each 3x3 convolution block (cnn only)."""
    image_shape: tuple[PositiveInt, PositiveInt, PositiveInt] | None = None
    """(channels, height, width) the flat feature vector is reshaped to (cnn only)."""
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.3
    """Dropout probability after each hidden layer (transformer: on each residual branch)."""
    token_size: PositiveInt = 1
    """Consecutive inputs that form one token (transformer only): 1 = one token per feature, 8 = rows of 8x8 digits."""
    d_model: PositiveInt = 64
    """Width of the token embeddings and the residual stream (transformer only)."""
    n_heads: PositiveInt = 4
    """Attention heads per layer; must divide d_model (transformer only)."""
    n_layers: PositiveInt = 2
    """Transformer blocks; pipeline parallelism splits the model between them (transformer only)."""
    ffn_size: PositiveInt = 128
    """Hidden width of each block's feed-forward layer (transformer only)."""

    @model_validator(mode="after")
    def _cnn_needs_shape(self) -> ModelConfig:
        if self.kind == "cnn" and self.image_shape is None:
            raise ValueError("model.kind 'cnn' needs model.image_shape, e.g. [1, 8, 8]")
        if self.kind == "transformer" and self.d_model % self.n_heads:
            raise ValueError(f"model.n_heads {self.n_heads} must divide model.d_model {self.d_model}")
        return self


def model_input_problem(model: ModelConfig, num_inputs: int, inputs: str) -> str | None:
    """Why `model` cannot take `num_inputs` inputs per row (`inputs` says where they come from, e.g. "the 60
    features"), with the settings that would fit; None when it can (an mlp takes any width)."""
    if model.kind == "cnn":
        values = model.image_shape[0] * model.image_shape[1] * model.image_shape[2]
        if values != num_inputs:
            fits = ", ".join(str(list(s)) for s in image_shapes(num_inputs, channels=model.image_shape[0]))
            return (
                f"model.image_shape {list(model.image_shape)} holds {values} values, but {inputs} give "
                f"{num_inputs} inputs per row; shapes that fit: {fits}"
            )
    if model.kind == "transformer" and num_inputs % model.token_size:
        fits = ", ".join(str(d) for d in divisors(num_inputs))
        return (
            f"model.token_size {model.token_size} does not cut the {num_inputs} inputs per row that {inputs} give "
            f"into whole tokens; sizes that fit: {fits}"
        )
    return None


def check_model_inputs(cfg: PipelineConfig, num_inputs: int | None = None, inputs: str | None = None) -> None:
    """Refuse, on the driver, a model that cannot take the run's inputs per row: `num_inputs` once the
    preprocessor is fitted (categorical widths), else what the listed features fix (nothing when they do not)."""
    width = listed_input_width(cfg.data) if num_inputs is None else num_inputs
    if width is None:
        return
    problem = model_input_problem(cfg.model, width, inputs or features_phrase(cfg.data))
    if problem:
        raise ConfigError(problem)


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def image_shapes(num_inputs: int, channels: int, most: int = 4) -> list[tuple[int, int, int]]:
    """(channels, height, width) shapes that hold num_inputs values, squarest first; the configured channel
    count when it divides num_inputs, else one channel."""
    c = channels if num_inputs % channels == 0 else 1
    pixels = num_inputs // c
    heights = [h for h in divisors(pixels) if h * h <= pixels]
    return [(c, h, pixels // h) for h in reversed(heights)][:most]


def listed_input_width(data: DataConfig) -> int | None:
    """Model inputs per row when the config alone fixes them (listed numeric features: one each, two with a
    missing indicator); None when it depends on the data (features: auto, categorical features)."""
    if not data.resolved or any(f.kind != "numeric" for f in data.features):
        return None
    indicators = [f.indicator if f.indicator is not None else data.missing.indicator for f in data.features]
    return sum(2 if indicator else 1 for indicator in indicators)


def features_phrase(data: DataConfig) -> str:
    """ "the 64 features" (after features: auto is resolved)."""
    count = len(data.features) if data.resolved else 0
    return f"the {count} feature{'s' if count != 1 else ''}"


# ---------------------------------------------------------------- train


class OptimizerConfig(Section):
    name: Literal["adam", "adamw", "sgd"] = "adamw"
    """Optimizer algorithm."""
    lr: Annotated[float, Field(gt=0.0)] = 3e-3
    """Learning rate (the peak, under train.lr_schedule)."""
    weight_decay: Annotated[float, Field(ge=0.0)] = 1.0
    """L2 penalty (decoupled for adamw: each step shrinks the weights by lr * weight_decay)."""
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.9
    """Momentum (sgd only)."""


class CheckpointConfig(Section):
    keep: PositiveInt = 2
    """How many checkpoints to keep, ranked by metric."""
    metric: str = "val_loss"
    """Reported metric that ranks checkpoints and picks the best one."""
    mode: Literal["min", "max"] = "min"
    """Whether a lower (min) or higher (max) metric is better."""


class LRScheduleConfig(Section):
    kind: Literal["constant", "cosine", "step"] = "constant"
    """constant keeps optimizer.lr; cosine anneals it to min_lr_ratio * lr by the last epoch; step multiplies it
    by gamma every step_epochs."""
    warmup_epochs: Annotated[int, Field(ge=0)] = 0
    """Epochs over which the learning rate rises linearly from lr / (warmup_epochs + 1) to lr, stepped per batch."""
    step_epochs: PositiveInt = 10
    """For kind step: epochs between reductions."""
    gamma: Annotated[float, Field(gt=0.0, le=1.0)] = 0.1
    """For kind step: factor applied every step_epochs."""
    min_lr_ratio: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    """For kind cosine: the final learning rate as a share of lr."""


class EarlyStoppingConfig(Section):
    metric: str = "val_loss"
    """Reported validation metric watched, e.g. val_loss, val_accuracy, val_f1_macro, val_rmse, val_r2."""
    mode: Literal["min", "max"] | None = None
    """Whether lower or higher is better; none = max for accuracy, f1, auc and r2, min otherwise."""
    patience: PositiveInt = 30
    """Epochs in a row without an improvement of more than min_delta before training stops."""
    min_delta: Annotated[float, Field(ge=0.0)] = 0.0
    """Smallest change of the metric that counts as an improvement."""

    @property
    def direction(self) -> Literal["min", "max"]:
        from rayline.evaluation import metric_mode

        return self.mode or metric_mode(self.metric)


class PipelineParallelConfig(Section):
    microbatches: PositiveInt = 4
    """Micro-batches each batch is cut into as it flows through the stages; must divide train.batch_size."""
    schedule: Literal["gpipe", "1f1b"] = "gpipe"
    """gpipe runs all forwards then all backwards; 1f1b interleaves them (needs microbatches >= stages)."""


class CompressionConfig(Section):
    kind: Literal["none", "fp16", "powersgd"] = "none"
    """How strategy ddp sends gradients (a DDP communication hook): none as fp32; fp16 at half the bytes; powersgd
    as rank-`rank` factors of each weight matrix, with error feedback (biases and small matrices as they are)."""
    rank: PositiveInt = 2
    """For kind powersgd: the rank of each matrix's approximation; higher is closer to the full gradient."""
    start_step: Annotated[int, Field(ge=2)] = 1000
    """For kind powersgd: optimizer steps of plain fp32 all-reduce before compressing (PyTorch's default; the first
    steps are the most sensitive to inexact gradients); at least 2, as DDP settles its buckets in the first."""


COMPRESSION_REFUSED = {
    "fsdp": "fsdp reduce-scatters sharded gradients itself and takes no DDP communication hook",
    "tensor": "tensor parallelism has one replica, so there is no gradient all-reduce to compress",
    "pipeline": "pipeline parallelism has one replica, so there is no gradient all-reduce to compress",
    "hybrid": "hybrid's data-parallel dimension is FSDP, which takes no DDP communication hook",
    "parameter_server": "parameter_server workers push their gradients to server shards, with no all-reduce",
    "auto": "auto may choose fsdp, tensor or pipeline, which take no DDP communication hook",
}
"""Why each strategy but ddp cannot compress its gradients."""


class ParameterServerConfig(Section):
    shards: PositiveInt = 1
    """Server actors the model's parameters (and their optimizer state) are split across, by size."""
    mode: Literal["sync", "async", "bounded"] = "sync"
    """sync averages every worker's gradient of a version, then steps (like ddp); async applies each gradient as it
    arrives; bounded applies it too, but refuses one computed more than max_staleness versions ago. Under async and
    bounded the workers share each epoch's rows, each taking the next few batches when it is ready, so a faster
    worker trains on more of them and none waits for a straggler."""
    max_staleness: Annotated[int, Field(ge=0)] | None = None
    """For mode bounded (and required there): the most versions a shard's parameters may have moved on since the
    pull a gradient was computed from; staler gradients are refused (dropped, and counted)."""
    timeout_s: Annotated[float, Field(gt=0.0)] = 120.0
    """How long a worker waits for a shard to answer a pull or a push before failing (so the run restarts from its
    last checkpoint, under train.max_failures, instead of hanging)."""

    @model_validator(mode="after")
    def _staleness_for_bounded(self) -> ParameterServerConfig:
        if self.mode == "bounded" and self.max_staleness is None:
            raise ValueError("train.parameter_server.mode 'bounded' needs train.parameter_server.max_staleness")
        if self.mode != "bounded" and self.max_staleness is not None:
            raise ValueError(
                f"train.parameter_server.max_staleness is only read by mode 'bounded', not {self.mode!r}; drop it"
            )
        return self


Strategy = Literal["ddp", "fsdp", "tensor", "pipeline", "hybrid", "parameter_server", "auto"]


class TrainConfig(Section):
    num_workers: Annotated[int, Field(ge=1)] = 2
    """Training workers, each a Ray actor; the strategy decides how they share the model and the data."""
    cpus_per_worker: Annotated[float, Field(gt=0.0)] = 1.0
    """CPUs each worker reserves."""
    use_gpu: bool = False
    """Train on one GPU per worker with the nccl backend and CUDA device meshes (gloo on CPU otherwise)."""
    strategy: Strategy = "ddp"
    """ddp replicates the model; fsdp shards parameters and optimizer state (FSDP2); tensor splits each layer's
    projections across workers; pipeline gives each worker a run of layers; hybrid combines two on a 2-D mesh;
    parameter_server keeps parameters and optimizer state on server actors that workers push gradients to; auto
    picks ddp, fsdp, tensor or pipeline from what a worker must hold against train.memory_per_worker_gb."""
    memory_per_worker_gb: Annotated[float, Field(gt=0.0)] | None = None
    """For strategy auto: the memory one worker may use. Default: on GPU, the driver's first GPU; on CPU, this
    machine's memory divided by train.num_workers."""
    hybrid: Literal["fsdp+tensor", "fsdp+pipeline"] = "fsdp+tensor"
    """For strategy hybrid: what the data-parallel and the model-parallel dimension of train.mesh do."""
    mesh: tuple[PositiveInt, PositiveInt] | None = None
    """For strategy hybrid: [data-parallel, model-parallel] sizes; their product must equal num_workers."""
    pipeline: PipelineParallelConfig = PipelineParallelConfig()
    """Pipeline-parallel settings (strategy pipeline, hybrid fsdp+pipeline); the stages are its workers."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """bf16 autocasts the forward pass (CPU and GPU); parameters, gradients and optimizer state stay fp32."""
    grad_accumulation_steps: PositiveInt = 1
    """Batches whose gradients are summed before each optimizer step (gradients sync only on the last)."""
    grad_clip_norm: Annotated[float, Field(gt=0.0)] | None = None
    """Clip the global gradient norm (over every shard and stage) to this value; none = no clipping."""
    compression: CompressionConfig = CompressionConfig()
    """Gradient compression for strategy ddp (through DDP communication hooks)."""
    parameter_server: ParameterServerConfig | None = None
    """For strategy parameter_server: its shards and update mode (none = one shard, sync)."""
    epochs: PositiveInt = 200
    """Most passes over the training split; early stopping (on by default) usually ends training sooner."""
    batch_size: PositiveInt = 64
    """Rows per step on each data-parallel replica."""
    cache_shard_mb: Annotated[float, Field(ge=0.0)] = 64.0
    """A worker holds its share of the prepared data in memory when that is at most this many MiB (the whole split
    under parameter_server async and bounded, whose workers share it), and every epoch shuffles it in place; a
    larger share (or 0 here) is streamed from the prepared files every epoch, so a worker's memory stays flat
    however large the data. Only speed depends on it: a share of any size trains."""
    shuffle_window_mb: Annotated[float, Field(gt=0.0)] = 64.0
    """A streamed share is shuffled in windows of this many MiB of row groups, taken in a new random order every
    epoch (rows of one window mix; a row's neighbours change with the window each epoch)."""
    seed: int = 0
    """Seed for weight initialisation and data order."""
    optimizer: OptimizerConfig = OptimizerConfig()
    """Optimizer settings."""
    lr_schedule: LRScheduleConfig = LRScheduleConfig()
    """How the learning rate changes over the epochs."""
    early_stopping: EarlyStoppingConfig | None = EarlyStoppingConfig()
    """Stop when a validation metric stops improving (default: val_loss, patience 30); the best checkpoint is
    still the one registered. null turns it off."""
    class_weight: Literal["none", "balanced"] = "none"
    """balanced weights each class's loss by n_rows / (n_classes * rows of that class) in the training split
    (classification only), so rare classes count as much as common ones."""
    baseline: bool = True
    """Also fit a linear baseline (logistic or ridge regression) on the driver on the same preprocessed split,
    and report the model against it on the test split."""
    checkpoint: CheckpointConfig = CheckpointConfig()
    """Which checkpoints to keep and which is best."""
    max_failures: Annotated[int, Field(ge=0)] = 0
    """Worker-group failures to recover from (restarting from the latest checkpoint)."""
    poll_interval_s: Annotated[float, Field(gt=0.0, le=60.0)] = 0.25
    """How often Ray Train's controller collects the workers' reports and checks their health. A worker's
    second report waits until its first is collected, so Ray's default (2 s) holds epochs shorter than that
    back. Each poll is one remote call to every worker."""
    start_timeout_s: Annotated[float, Field(gt=0.0)] = 300.0
    """On an autoscaling cluster, how long a run waits for nodes that can hold its workers before it fails (a
    fixed cluster that cannot hold them fails at once)."""

    @property
    def data_parallel_size(self) -> int:
        """Replicas that each read their own slice of the data."""
        if self.strategy == "hybrid":
            return self.mesh[0]
        return 1 if self.strategy in ("tensor", "pipeline") else self.num_workers

    @property
    def model_parallel_size(self) -> int:
        """Workers one replica of the model is split across (tensor degree or pipeline stages)."""
        return self.num_workers // self.data_parallel_size

    @property
    def model_parallelism(self) -> Literal["tensor", "pipeline"] | None:
        if self.strategy == "hybrid":
            return "tensor" if self.hybrid == "fsdp+tensor" else "pipeline"
        return self.strategy if self.strategy in ("tensor", "pipeline") else None

    @model_validator(mode="after")
    def _parallel_layout_fits(self) -> TrainConfig:
        if self.strategy == "hybrid":
            if self.mesh is None:
                raise ValueError("train.strategy 'hybrid' needs train.mesh [data-parallel, model-parallel], e.g. [2,2]")
            if self.mesh[0] * self.mesh[1] != self.num_workers:
                raise ValueError(
                    f"train.mesh {list(self.mesh)} needs {self.mesh[0] * self.mesh[1]} workers but "
                    f"train.num_workers is {self.num_workers}; make the product equal num_workers"
                )
        elif self.mesh is not None:
            raise ValueError(
                f"train.mesh is only read by strategy 'hybrid'; strategy {self.strategy!r} uses all "
                "train.num_workers along one dimension, so drop train.mesh"
            )
        if self.memory_per_worker_gb is not None and self.strategy != "auto":
            raise ValueError(
                f"train.memory_per_worker_gb is only read by strategy 'auto' (strategy is {self.strategy!r}); "
                "drop it or set train.strategy auto"
            )
        if self.compression.kind != "none" and self.strategy != "ddp":
            raise ValueError(
                f"train.compression.kind {self.compression.kind!r} compresses ddp's gradient all-reduce, but "
                f"{COMPRESSION_REFUSED[self.strategy]}; use train.strategy ddp or train.compression.kind none"
            )
        self._parameter_server_fits()
        if self.model_parallelism == "pipeline":
            stages, micro = self.model_parallel_size, self.pipeline.microbatches
            if self.batch_size % micro:
                raise ValueError(f"train.pipeline.microbatches {micro} must divide train.batch_size {self.batch_size}")
            if self.pipeline.schedule == "1f1b" and micro < stages:
                raise ValueError(
                    f"train.pipeline.schedule '1f1b' needs train.pipeline.microbatches >= the {stages} stages"
                )
        return self

    def _parameter_server_fits(self) -> None:
        if self.strategy != "parameter_server":
            if self.parameter_server is not None:
                raise ValueError(
                    f"train.parameter_server is only read by strategy 'parameter_server', not {self.strategy!r}; "
                    "drop it or set train.strategy parameter_server"
                )
            return
        not_applying = {
            "train.use_gpu": "shards hold parameters on CPU for now; set it false" if self.use_gpu else None,
            "train.grad_accumulation_steps": "every batch's gradient is pushed to the shards; set it to 1"
            if self.grad_accumulation_steps != 1
            else None,
        }
        for path, why in not_applying.items():
            if why is not None:
                raise ValueError(f"{path} does not apply to strategy 'parameter_server': {why}")

    @property
    def server(self) -> ParameterServerConfig:
        """The parameter-server settings in force (defaults where the section is left out)."""
        return self.parameter_server or ParameterServerConfig()


def check_parallel_plan(model: ModelConfig, train: TrainConfig) -> None:
    """Checks that need both sections: can this model be split the way the strategy splits it?"""
    split = train.model_parallelism
    if split is None:
        return
    what = f"train.strategy {train.strategy!r}" + (f" ({train.hybrid})" if train.strategy == "hybrid" else "")
    if model.kind != "transformer":
        raise ValueError(
            f"{what} splits transformer layers, but model.kind is {model.kind!r}; "
            "use model.kind transformer, or strategy ddp or fsdp for mlp and cnn"
        )
    degree = train.model_parallel_size
    if split == "tensor":
        for name, value in (("model.n_heads", model.n_heads), ("model.ffn_size", model.ffn_size)):
            if value % degree:
                raise ValueError(f"{what} splits {name} {value} across {degree} workers; make it divisible by {degree}")
    elif degree > model.n_layers:
        raise ValueError(
            f"{what} needs a layer per stage: {degree} stages but model.n_layers is {model.n_layers}; "
            "add layers or use fewer workers"
        )


# ---------------------------------------------------------------- tune


class SchedulerConfig(Section):
    kind: Literal["asha", "fifo"] = "asha"
    """asha stops weak trials early; fifo runs every trial to max_t."""
    max_t: PositiveInt = 10
    """Most epochs any trial trains."""
    grace_period: PositiveInt = 1
    """Epochs a trial always gets before it can be stopped."""
    reduction_factor: Annotated[float, Field(gt=1.0)] = 2.0
    """ASHA keeps 1/reduction_factor of the trials at each rung."""

    @model_validator(mode="after")
    def _grace_fits_budget(self) -> SchedulerConfig:
        if self.grace_period > self.max_t:
            raise ValueError(f"grace_period {self.grace_period} exceeds max_t {self.max_t}; no trial could be stopped")
        return self


class TuneConfig(Section):
    search_space: str = Field(min_length=1)
    """Path to a search-space YAML (see tune/); relative paths start at the working directory."""
    num_samples: PositiveInt = 8
    """Trials to run (for grid search: repeats of the grid)."""
    metric: str = "val_accuracy"
    """Reported metric the search optimises."""
    mode: Literal["min", "max"] = "max"
    """Whether the search minimises or maximises metric."""
    searcher: Literal["optuna", "random", "grid"] = "optuna"
    """How new trial parameters are chosen."""
    seed: int = 0
    """Seed of the searcher."""
    scheduler: SchedulerConfig = SchedulerConfig()
    """Early-stopping scheduler."""
    max_concurrent_trials: PositiveInt | None = None
    """Upper bound on trials at once; the planner may lower it to what the cluster fits."""
    points_to_evaluate: list[dict[str, Any]] = []
    """Parameter sets (dotted path -> value) to try first, e.g. known good settings (optuna, random)."""
    trial_driver_cpus: Annotated[float, Field(gt=0.0)] = 0.25
    """CPUs the Tune actor that drives each trial's trainer reserves."""
    data_reserve_cpus: Annotated[float, Field(ge=0.0)] = 0.5
    """CPUs the planner leaves free for Ray Data tasks."""
    trial_start_timeout_s: Annotated[float, Field(gt=0.0)] = 60.0
    """A trial whose workers cannot be placed in this time fails with an error instead of waiting."""


# ---------------------------------------------------------------- serve


SERVE_METRICS_PUSH_S = 10.0
"""Ray Serve's interval between load reports (its metrics_interval_s), which the averaging window must exceed."""


class ServeAutoscalingConfig(Section):
    min_replicas: Annotated[int, Field(ge=0)] = 1
    """Fewest replicas; 0 lets an idle app scale to zero (the first request then waits for a replica)."""
    max_replicas: PositiveInt = 2
    """Most replicas."""
    target_ongoing_requests: Annotated[float, Field(gt=0.0)] = 16.0
    """Requests in flight per replica the autoscaler aims for; batching wants this well above 1."""
    upscale_delay_s: Annotated[float, Field(ge=0.0)] = 5.0
    """How long load must stay high before a replica is added."""
    downscale_delay_s: Annotated[float, Field(ge=0.0)] = 60.0
    """How long load must stay low before a replica is removed."""
    look_back_period_s: Annotated[float, Field(gt=SERVE_METRICS_PUSH_S)] = 30.0
    """Window the load is averaged over; shorter reacts sooner to a change of load and to a spike alike. Above
    the 10 s at which replicas report their load."""

    @model_validator(mode="after")
    def _range_is_ordered(self) -> ServeAutoscalingConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas {self.min_replicas} is above max_replicas {self.max_replicas}")
        return self


class ServeGrpcConfig(Section):
    port: Annotated[int, Field(ge=1, le=65535)] = 9000
    """Port of the gRPC endpoint (service rayline.Rayline, rayline/serve/rayline.proto), on serve.host beside HTTP."""


class ServeConfig(Section):
    host: str = "127.0.0.1"
    """Address the endpoint binds to (and, with haproxy, each replica's own HTTP port and Serve's fallback proxy);
    loopback unless you mean to expose it. HAProxy's stats and metrics pages always bind 127.0.0.1."""
    port: Annotated[int, Field(ge=1, le=65535)] = 8000
    """HTTP port of the endpoint."""
    ingress: Literal["haproxy", "proxy"] = "haproxy"
    """haproxy: HAProxy on the head node in front of replicas that answer HTTP themselves (several times the
    requests/s); proxy: Serve's Python proxy, for replicas on several nodes or where no HAProxy binary exists."""
    route_prefix: str = Field(default="/", pattern=r"^/")
    """URL prefix of the endpoint."""
    app_name: str = "rayline"
    """Serve application name."""
    num_replicas: PositiveInt = 1
    """Replicas of the model deployment (a fixed count; see autoscaling for a range)."""
    autoscaling: ServeAutoscalingConfig | None = None
    """Scale replicas with load between min_replicas and max_replicas; omit for num_replicas fixed."""
    cpus_per_replica: Annotated[float, Field(gt=0.0)] = 0.5
    """CPUs each replica reserves."""
    torch_threads: PositiveInt = 1
    """Intra-op threads of each replica's forward pass (torch's or ONNX Runtime's); replicas share the node's cores
    with the HTTP path."""
    runtime: Literal["torch", "onnxruntime"] = "torch"
    """What runs the forward pass: torch (the checkpoint's module after the preprocessor), or onnxruntime (each
    replica exports the checkpoint's ONNX graph, preprocessing inside, and runs it with ONNX Runtime)."""
    grpc: ServeGrpcConfig | None = None
    """Also answer gRPC (service rayline.Rayline) on grpc.port; off when omitted. Only applies when Serve starts."""
    max_batch_size: PositiveInt = 32
    """Most rows a replica runs through the model in one forward pass."""
    batch_wait_timeout_s: Annotated[float, Field(ge=0.0)] = 0.005
    """How long a batch waits to fill before it runs."""
    max_ongoing_requests: PositiveInt = 64
    """Requests a replica handles at once; further ones queue (max_queued_requests)."""
    max_queued_requests: Annotated[int, Field(ge=-1)] = 256
    """Requests waiting for a replica before new ones are refused (overload_status); -1 for no limit. Counted per
    replica with haproxy, per proxy with proxy."""
    overload_status: Literal[503, 429] = 503
    """HTTP status of a request refused because the queue is full."""
    retry_after_s: Annotated[float, Field(ge=0.0)] = 1.0
    """Retry-After header (seconds, rounded up) sent with an overload refusal."""
    request_timeout_s: Annotated[float, Field(gt=0.0)] = 30.0
    """Longest a predict request may take inside a replica, queueing included, before a 504."""
    health_check_period_s: Annotated[float, Field(gt=0.0)] = 5.0
    """How often Serve checks each replica; three failed checks in a row replace it. A replica fails the check
    while a forward pass has run longer than request_timeout_s (a model call that never returns)."""
    max_body_bytes: PositiveInt = 1 << 20
    """Largest request body accepted (413 above it)."""
    max_models_per_replica: PositiveInt = 3
    """Registry versions one replica keeps loaded for /v1/models/{version}/predict (least recently used go)."""

    @model_validator(mode="after")
    def _one_replica_setting(self) -> ServeConfig:
        if self.autoscaling is not None and "num_replicas" in self.model_fields_set:
            raise ValueError("set serve.num_replicas (a fixed count) or serve.autoscaling (a range), not both")
        return self


# ---------------------------------------------------------------- storage and root


class MlflowConfig(Section):
    uri: str
    """MLflow tracking URI: a tracking server (http://host:5000) or a local store (a path or file:...)."""
    experiment: str | None = None
    """MLflow experiment the runs go to; created if missing. Defaults to the pipeline name."""


class TrackingConfig(Section):
    mlflow: MlflowConfig | None = None
    """Log every training run and search to MLflow: one run per training run, a parent run per search with
    one child per trial (params, per-epoch metrics, curves, confusion matrix, the registry record)."""
    tensorboard: bool = False
    """Write TensorBoard event files per run and per trial under storage.root/runs/<run>/tensorboard, so
    `tensorboard --logdir <storage.root>/runs` shows them side by side (on an object store, written locally and
    copied there after each epoch)."""

    @property
    def enabled(self) -> bool:
        return self.mlflow is not None or self.tensorboard


class RegistryConfig(Section):
    model_name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]+$")
    """Name the trained model is registered under; versions are numbered per name. Defaults to the pipeline
    name."""


class StorageConfig(Section):
    root: str = ".rayline"
    """Where runs, prepared data and the model registry live: a local path, shared storage on multi-node clusters,
    or an object-store URI (s3://bucket/prefix, gs://...; credentials come from the standard environment)."""
    endpoint_override: str | None = None
    """Endpoint of an S3-compatible store for storage.root (http://127.0.0.1:9000 for MinIO). Unset: the
    AWS_ENDPOINT_URL environment variable, else the cloud's own. (An s3:// data.source takes the same variable,
    or pyarrow's options in its URI: ?endpoint_override=host:port&scheme=http.)"""

    @property
    def uri(self) -> str:
        """The root as every process opens it: with endpoint_override among its URI options."""
        return with_endpoint(self.root, self.endpoint_override)

    @model_validator(mode="after")
    def _endpoint_needs_an_object_store(self) -> StorageConfig:
        if self.endpoint_override and not is_remote(self.root):
            raise ValueError(
                f"endpoint_override is set but root {self.root!r} is a local path; use an s3:// root or drop it"
            )
        return self

    run_name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]+$")
    """Name of the training run; the same name resumes it. Defaults to the pipeline name."""


# ---------------------------------------------------------------- federated


class PrivacyConfig(Section):
    clip_norm: Annotated[float, Field(gt=0.0)]
    """Each client's update is scaled down to at most this L2 norm before it is sent (required: noise on
    unbounded updates protects nothing)."""
    noise_multiplier: Annotated[float, Field(ge=0.0)] = 1.0
    """Gaussian noise on the sum of the round's updates, as a multiple of clip_norm (0: clipping only, no
    privacy guarantee)."""
    delta: Annotated[float, Field(gt=0.0, lt=1.0)] = 1e-5
    """The delta of the (epsilon, delta) guarantee; keep it below 1 / number of clients."""


class FederatedConfig(Section):
    partition_by: str | None = None
    """A column of the source: each distinct value is one client (a site, a hospital). Its hive folders
    (client=a/...) work as well. Give either this or clients."""
    clients: PositiveInt | None = None
    """Simulated clients that split the training rows by `partition`."""
    client_files: bool = False
    """Each file of data.source (a folder or glob of several files) is one client, named by its file name."""
    partition: Literal["iid", "dirichlet"] = "iid"
    """With clients: iid deals rows out at random; dirichlet gives each client a label mix drawn from
    Dirichlet(alpha) (Hsu et al. 2019)."""
    alpha: Annotated[float, Field(gt=0.0)] = 0.5
    """Dirichlet concentration: small is label-skewed (0.1), large is near iid (10)."""
    seed: int = 0
    """Seeds the partition, each round's choice of clients and each client's batch order."""
    holdout: Annotated[float, Field(ge=0.0, lt=0.5)] = 0.2
    """Share of each client's rows it keeps out of training, to report the global model's accuracy on
    each client's own data."""
    rounds: PositiveInt = 10
    """Rounds of: send the global model, train on the chosen clients, average their updates."""
    clients_per_round: Annotated[float, Field(gt=0.0)] = 1.0
    """Clients chosen each round: a count (>= 1) or a fraction of all clients (< 1; 1.0 means all)."""
    local_epochs: PositiveInt = 1
    """Passes each chosen client makes over its rows per round."""
    local_batch_size: PositiveInt = 32
    """Rows per local step (a client with fewer rows takes them all in one step)."""
    algorithm: Literal["fedavg", "fedprox", "fedavgm"] = "fedavg"
    """fedavg averages the updates; fedprox adds mu/2 * ||w - global||^2 to each client's loss; fedavgm
    applies the average with server momentum."""
    mu: Annotated[float, Field(ge=0.0)] = 0.01
    """FedProx's proximal weight."""
    server_lr: Annotated[float, Field(gt=0.0)] = 1.0
    """The server's step on the averaged update (1.0: the plain average)."""
    server_momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.9
    """FedAvgM's momentum."""
    clients_per_actor: PositiveInt | None = None
    """Clients each Ray actor holds and trains in turn; default: the clients spread over one actor per free
    CPU."""
    cpus_per_actor: Annotated[float, Field(gt=0.0)] = 1.0
    """CPUs each client actor reserves."""
    round_timeout_s: Annotated[float, Field(gt=0.0)] = 300.0
    """A round closes after this long with the clients that answered (if min_clients did)."""
    min_clients: PositiveInt = 1
    """Fewest answers a round needs; with fewer it is tried again with another choice of clients."""
    max_round_attempts: PositiveInt = 3
    """Tries of one round before the run fails."""
    secure_aggregation: bool = False
    """Clients add pairwise masks that cancel in the sum (Bonawitz et al. 2017), so the server only ever
    holds masked updates. A client lost mid-round fails that try of the round."""
    dp: PrivacyConfig | None = None
    """User-level differential privacy (DP-FedAvg, McMahan et al. 2018); omit for none."""

    @model_validator(mode="after")
    def _clients_named_once(self) -> FederatedConfig:
        named = [self.partition_by is not None, self.clients is not None, self.client_files]
        if sum(named) != 1:
            raise ValueError(
                "give one of partition_by (a column whose values are the clients), client_files: true (one client "
                "per file of data.source) or clients: N (simulated)"
            )
        if self.clients is None and self.partition != "iid":
            raise ValueError("partition (iid, dirichlet) splits simulated clients: use it with clients: N")
        if self.clients_per_round > 1 and self.clients_per_round != int(self.clients_per_round):
            raise ValueError(f"clients_per_round {self.clients_per_round} is neither a count nor a fraction <= 1")
        if self.clients is not None and self.min_clients > self.clients:
            raise ValueError(f"min_clients {self.min_clients} is more than the {self.clients} clients")
        if self.clients is not None and self.min_clients > round_size(self, self.clients):
            raise ValueError(
                f"min_clients {self.min_clients} is more than the {round_size(self, self.clients)} clients chosen "
                "per round (clients_per_round)"
            )
        return self


def round_size(cfg: FederatedConfig, num_clients: int) -> int:
    """Clients chosen per round out of num_clients."""
    wanted = cfg.clients_per_round
    count = round(wanted * num_clients) if wanted <= 1 else int(wanted)
    return max(1, min(num_clients, count))


class PipelineConfig(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    """Pipeline name; names runs and registry entries."""
    data: DataConfig
    """Where the data is and what to learn from it."""
    model: ModelConfig = ModelConfig()
    """Model family and size."""
    train: TrainConfig = TrainConfig()
    """Distributed training."""
    tune: TuneConfig | None = None
    """Hyperparameter search; omit to train once."""
    serve: ServeConfig = ServeConfig()
    """HTTP serving."""
    storage: StorageConfig = StorageConfig()
    """Run, prepared data and registry storage."""
    registry: RegistryConfig = RegistryConfig()
    """How the trained model is named in the registry."""
    tracking: TrackingConfig = TrackingConfig()
    """Experiment tracking: MLflow and TensorBoard."""
    federated: FederatedConfig | None = None
    """Federated learning over clients that keep their rows, instead of data-parallel training; omit for none."""

    @property
    def run_name(self) -> str:
        return self.storage.run_name or self.name

    @property
    def model_name(self) -> str:
        """The registry name this pipeline's models are versioned and served under."""
        return self.registry.model_name or self.name

    @model_validator(mode="after")
    def _federated_trains_alone(self) -> PipelineConfig:
        if self.federated is None:
            return self
        if self.tune is not None:
            raise ValueError("federated: and tune: cannot be combined yet; search the settings of a centralized run")
        if self.train.strategy != "ddp" or self.train.use_gpu:
            raise ValueError(
                "federated: trains whole models on CPU client actors; drop train.strategy "
                f"({self.train.strategy}) and train.use_gpu"
            )
        if self.train.compression.kind != "none":
            raise ValueError(
                "federated: clients send their model updates, not ddp gradients; drop train.compression "
                f"({self.train.compression.kind})"
            )
        if is_remote(self.storage.root):
            raise ValueError("federated: keeps its round checkpoints on a local or shared storage.root for now")
        if self.federated.partition_by is not None and self.federated.partition_by == self.data.label:
            raise ValueError(f"federated.partition_by {self.data.label!r} is the label; name a column of clients")
        return self

    @model_validator(mode="after")
    def _registry_can_hold_the_name(self) -> PipelineConfig:
        from rayline.registry_layout import is_name

        if not is_name(self.model_name):
            where = "registry.model_name" if self.registry.model_name else "name (the default registry.model_name)"
            raise ValueError(
                f"{where} {self.model_name!r} cannot name a registered model: start with a letter, digit or '_', "
                "at most 100 characters, and not a version such as v3"
            )
        return self

    @field_validator("model")
    @classmethod
    def _model_fits_inputs(cls, model: ModelConfig, info: ValidationInfo) -> ModelConfig:
        # Only where the config alone fixes the input width; the driver checks the rest once features are known.
        data = info.data.get("data")
        width = None if data is None else listed_input_width(data)
        if width is not None and (problem := model_input_problem(model, width, features_phrase(data))):
            raise ValueError(problem)
        return model

    @field_validator("train")
    @classmethod
    def _model_fits_strategy(cls, train: TrainConfig, info: ValidationInfo) -> TrainConfig:
        # A field validator (model is validated before train) so the error is reported under `train`.
        if "model" in info.data:
            check_parallel_plan(info.data["model"], train)
        return train


# ---------------------------------------------------------------- loading


def load_config(path: str | os.PathLike, overrides: list[str] = ()) -> PipelineConfig:
    """Read a pipeline YAML, apply `a.b.c=value` overrides, validate, and resolve relative paths."""
    path = Path(path)
    raw = read_yaml_mapping(path)
    for override in overrides:
        apply_override(raw, override)
    cfg = validate_config(raw, where=str(path))
    return resolve_paths(cfg, base=Path.cwd())


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    return raw


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Set one dotted key, e.g. 'train.optimizer.lr=0.01'; the value is parsed as YAML."""
    key, sep, text = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {override!r}: expected KEY=VALUE, e.g. train.epochs=5")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {override!r}: value is not valid YAML: {err}") from None
    try:
        apply_override_value(raw, key.strip(), value)
    except ConfigError as err:
        raise ConfigError(f"--set {override!r}: {err}") from None


def apply_override_value(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set raw[a][b][c] = value for key 'a.b.c', creating sections on the way."""
    parts = key.split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(parts[: i + 1])} is a value, not a section")
        node = child
    node[parts[-1]] = value


def validate_config(raw: dict[str, Any], where: str = "<config>") -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, where)) from None


def format_validation_error(err: ValidationError, where: str) -> str:
    lines = [f"{where}: {err.error_count()} invalid field(s)"]
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "missing":
            lines.append(f"  {path}: required field is missing")
            continue
        # A whole section as "got" buries the message; its checks name the values they refuse.
        shown = e["type"] != "extra_forbidden" and not isinstance(e["input"], dict)
        got = f" (got {e['input']!r})" if shown else ""
        message = "unknown field" if e["type"] == "extra_forbidden" else e["msg"].removeprefix("Value error, ")
        lines.append(f"  {path}: {message}{got}")
    return "\n".join(lines)


def resolve_paths(cfg: PipelineConfig, base: Path) -> PipelineConfig:
    """Make local paths absolute so Ray workers, whose working directory differs, find them."""
    data = cfg.data.model_copy(update={"source": absolute(cfg.data.source, base)})
    storage = cfg.storage.model_copy(update={"root": absolute(cfg.storage.root, base)})
    update: dict[str, Any] = {"data": data, "storage": storage}
    if cfg.tune is not None:
        space = absolute(cfg.tune.search_space, base)
        update["tune"] = cfg.tune.model_copy(update={"search_space": space})
    return cfg.model_copy(update=update)


def absolute(location: str, base: Path) -> str:
    if "://" in location:
        return location
    return str((base / Path(location).expanduser()).resolve())
