"""The ClientApp of the Flower side of benchmarks/federated_bench.py (run by benchmarks/federated_flower.py, in
Flower's virtualenv). A module of its own so that Flower's Ray actors import it by name.

Each call trains one client as Flower's PyTorch quickstart does: the global ArrayRecord into the model, local SGD
epochs over the client's rows, the new arrays and "num-examples" in the reply. The model is rayline's
(rayline.models.build_model, from the checkout on PYTHONPATH), the rows are rayline's partition of its prepared
training split, and batch order and dropout are seeded as rayline's ClientGroup seeds them.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

client_app = ClientApp()


@lru_cache(maxsize=1)
def client_data(inputs: str) -> dict[str, np.ndarray]:
    """Read once per ClientApp actor process, as Flower's examples cache their partitions."""
    with np.load(inputs) as stored:
        return {key: stored[key] for key in ("x_train", "y_train", "client_offsets", "client_rows")}


def build_model(spec_json: str) -> torch.nn.Module:
    from rayline.config import ModelConfig
    from rayline.models import build_model as rayline_build_model

    spec = json.loads(spec_json)
    return rayline_build_model(ModelConfig.model_validate(spec["model"]), **spec["shape"])


def client_seed(seed: int, round_index: int, client: int) -> int:
    """The seed rayline.federated.client.hash_seed gives this client in this round (round_index from 0)."""
    return int(np.random.SeedSequence([seed, round_index, client]).generate_state(1)[0])


def local_rows(config: ConfigRecord, partition: int) -> tuple[torch.Tensor, torch.Tensor]:
    data = client_data(str(config["inputs"]))
    offsets = data["client_offsets"]
    rows = data["client_rows"][offsets[partition] : offsets[partition + 1]]
    return torch.from_numpy(data["x_train"][rows]), torch.from_numpy(data["y_train"][rows])


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    config = msg.content["config"]
    partition = int(context.node_config["partition-id"])
    model = build_model(str(config["model-spec"]))
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    model.train()
    x, y = local_rows(config, partition)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config["lr"], momentum=config["momentum"], weight_decay=config["weight-decay"]
    )
    seed = client_seed(int(config["seed"]), int(config["server-round"]) - 1, partition)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    batch_size = int(config["batch-size"])
    losses = []
    for _ in range(int(config["local-epochs"])):
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(y), batch_size):
            batch = order[start : start + batch_size]
            loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
            losses.append(loss.item())
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    metrics = {
        "train_loss": float(np.mean(losses)),
        "num-examples": len(y),
        "pid": os.getpid(),
        "torch-threads": torch.get_num_threads(),
    }
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)
