"""Who the clients are: the source column that names them, each client's training rows (as positions in the
prepared training split) and its held-out slice, and which clients each round trains. Everything is seeded, so a
resumed run deals the same."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rayline.config import ConfigError, FederatedConfig, PipelineConfig, round_size

DIRICHLET_DRAWS = 10
"""Draws of a Dirichlet partition before giving up on one where every client has rows (as Flower does)."""
MIN_CLIENT_ROWS = 2
"""Rows a simulated client needs: one to train on and one to hold out."""


@dataclass(frozen=True)
class Client:
    name: str
    train_rows: np.ndarray
    """Positions in the prepared training split this client trains on (sorted)."""
    holdout_rows: np.ndarray
    """Positions it keeps out of training, for its own metrics (sorted)."""

    @property
    def num_samples(self) -> int:
        return len(self.train_rows)


def simulated_clients(cfg: FederatedConfig, labels: np.ndarray | None, num_rows: int) -> list[Client]:
    """clients: N over the training split, iid or label-skewed by Dirichlet(alpha) (labels None: regression,
    where dirichlet has no labels to skew and is refused)."""
    rng = np.random.default_rng(cfg.seed)
    if num_rows < cfg.clients * MIN_CLIENT_ROWS:
        raise ConfigError(
            f"federated.clients {cfg.clients}: the training split has {num_rows} rows, fewer than "
            f"{MIN_CLIENT_ROWS} per client"
        )
    if cfg.partition == "iid":
        shares = np.array_split(rng.permutation(num_rows), cfg.clients)
    else:
        if labels is None:
            raise ConfigError("federated.partition dirichlet skews clients by label; a regression has none (use iid)")
        shares = dirichlet_shares(labels, cfg.clients, cfg.alpha, rng)
    return [with_holdout(f"client-{i}", rows, cfg.holdout, rng) for i, rows in enumerate(shares)]


def dirichlet_shares(labels: np.ndarray, clients: int, alpha: float, rng: np.random.Generator) -> list[np.ndarray]:
    """Hsu et al. 2019: the rows of each class are dealt to the clients in proportions drawn from
    Dirichlet(alpha, ..., alpha); drawn again while some client gets fewer than MIN_CLIENT_ROWS rows."""
    for _ in range(DIRICHLET_DRAWS):
        shares: list[list[np.ndarray]] = [[] for _ in range(clients)]
        for label in np.unique(labels):
            rows = rng.permutation(np.flatnonzero(labels == label))
            cuts = (np.cumsum(rng.dirichlet(np.full(clients, alpha))) * len(rows)).astype(int)[:-1]
            for client, part in enumerate(np.split(rows, cuts)):
                shares[client].append(part)
        merged = [np.concatenate(parts) for parts in shares]
        sizes = [len(m) for m in merged]
        if min(sizes) >= MIN_CLIENT_ROWS:
            return merged
    smallest = int(np.argmin(sizes))
    raise ConfigError(
        f"federated.alpha {alpha}: in {DIRICHLET_DRAWS} Dirichlet draws over {len(labels)} rows, some client kept "
        f"fewer than {MIN_CLIENT_ROWS} rows (last draw: client-{smallest} got {sizes[smallest]}); raise alpha or "
        "lower federated.clients"
    )


def column_clients(cfg: FederatedConfig, values: np.ndarray, what: str | None = None) -> list[Client]:
    """partition_by (or client_files): one client per distinct value, in sorted order of the values."""
    what = what or f"federated.partition_by {cfg.partition_by!r}"
    names = np.asarray(values).astype(str)
    distinct = sorted(set(names.tolist()))
    if len(distinct) < 2:
        raise ConfigError(
            f"{what}: the training rows hold {len(distinct)} distinct value(s) ({distinct}); federated learning "
            "needs at least 2 clients"
        )
    rng = np.random.default_rng(cfg.seed)
    clients = [with_holdout(name, np.flatnonzero(names == name), cfg.holdout, rng) for name in distinct]
    empty = [c.name for c in clients if c.num_samples == 0]
    if empty:
        raise ConfigError(
            f"{what}: client(s) {empty} have no training rows once "
            f"{cfg.holdout:.0%} of their rows are held out; lower federated.holdout or merge them"
        )
    return clients


def with_holdout(name: str, rows: np.ndarray, holdout: float, rng: np.random.Generator) -> Client:
    """Keep `holdout` of a client's rows out of training (none of a single-row client)."""
    rows = rng.permutation(np.asarray(rows, dtype=np.int64))
    kept = int(round(holdout * len(rows))) if len(rows) > 1 else 0
    return Client(name, np.sort(rows[kept:]), np.sort(rows[:kept]))


def check_clients(cfg: FederatedConfig, clients: list[Client]) -> None:
    """What needs the client count, which partition_by learns only from the data."""
    if cfg.min_clients > len(clients):
        raise ConfigError(f"federated.min_clients {cfg.min_clients} is more than the {len(clients)} clients")
    per_round = round_size(cfg, len(clients))
    if cfg.min_clients > per_round:
        raise ConfigError(
            f"federated.min_clients {cfg.min_clients} is more than the {per_round} clients chosen per round "
            "(federated.clients_per_round)"
        )


def round_clients(cfg: FederatedConfig, num_clients: int, round_index: int, attempt: int) -> list[int]:
    """The clients a round (and a retry of it) trains: the same for the same round, run after run."""
    rng = np.random.default_rng([cfg.seed, round_index, attempt])
    return sorted(rng.choice(num_clients, size=round_size(cfg, num_clients), replace=False).tolist())


def client_column(cfg: PipelineConfig) -> str | None:
    """The source column the prepared files carry as each row's client: partition_by, or the row's file."""
    from rayline.data.read import SOURCE_PATH_COLUMN

    return SOURCE_PATH_COLUMN if cfg.federated.client_files else cfg.federated.partition_by


def with_client_column(cfg: PipelineConfig) -> PipelineConfig:
    """federated.partition_by names clients, never an input: it must be in the source, and features: auto
    leaves it out. client_files needs a source of several files."""
    from rayline.data.files import resolve_source
    from rayline.data.read import SOURCE_PATH_COLUMN, read_sample

    files = resolve_source(cfg.data.source, cfg.data.format)
    names = read_sample(files, 1, cfg.data.source).column_names
    if cfg.federated.client_files:
        if len(files.paths) < 2:
            raise ConfigError(
                f"federated.client_files: data.source {cfg.data.source} is {len(files.paths)} file; one client per "
                "file needs a folder or glob of several"
            )
        if SOURCE_PATH_COLUMN in names:
            raise ConfigError(
                f"federated.client_files: {cfg.data.source} has a column {SOURCE_PATH_COLUMN!r}, the name Ray Data "
                "gives each row's file; rename it, or name the clients by a column with partition_by"
            )
        return cfg
    column = cfg.federated.partition_by
    if column is None:
        return cfg
    if column not in names:
        raise ConfigError(f"federated.partition_by {column!r} is not a column of {cfg.data.source} (it has {names})")
    if cfg.data.resolved:
        if column in {f.name for f in cfg.data.features}:
            raise ConfigError(f"federated.partition_by {column!r} is also in data.features; drop it from there")
        return cfg
    if column in cfg.data.exclude:
        return cfg
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"exclude": [*cfg.data.exclude, column]})})
