"""Gradient compression: combinations that cannot work are refused at load time, naming the field; the hooks
change the gradients DDP applies and count the bytes they hand to the all-reduce (one gloo process, no Ray)."""

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from pipelines import digits_config
from rayline.config import CompressionConfig, ConfigError
from rayline.pipeline import format_epoch
from rayline.train.compression import attach_compression

TRANSFORMER = {"kind": "transformer", "token_size": 8, "d_model": 32, "n_heads": 2, "n_layers": 2, "ffn_size": 64}


@pytest.mark.parametrize(
    ("train", "reason"),
    [
        ({"strategy": "fsdp"}, "fsdp reduce-scatters sharded gradients itself"),
        ({"strategy": "tensor"}, "tensor parallelism has one replica"),
        ({"strategy": "pipeline"}, "pipeline parallelism has one replica"),
        ({"strategy": "hybrid", "num_workers": 4, "mesh": [2, 2]}, "hybrid's data-parallel dimension is FSDP"),
    ],
)
@pytest.mark.parametrize("kind", ["fp16", "powersgd"])
def test_compression_is_refused_for_every_strategy_but_ddp(tmp_path, train, reason, kind):
    with pytest.raises(ConfigError, match=rf"train.compression.kind '{kind}' compresses ddp's .*{reason}"):
        digits_config(tmp_path, model=TRANSFORMER, train={**train, "compression": {"kind": kind}})


def test_a_federated_run_refuses_compression(tmp_path):
    with pytest.raises(ConfigError, match=r"federated: clients send their model updates.*drop train.compression"):
        digits_config(tmp_path, federated={"clients": 4}, train={"compression": {"kind": "fp16"}})


def test_powersgd_needs_two_plain_steps_first(tmp_path):
    with pytest.raises(ConfigError, match=r"train.compression.start_step: Input should be greater than or equal to 2"):
        digits_config(tmp_path, train={"compression": {"kind": "powersgd", "start_step": 1}})


def test_bf16_autocast_takes_compression_over_gloo(tmp_path):
    """bf16 autocasts the forward pass only: gradients stay fp32, so gloo reduces fp32 or fp16, never bf16."""
    for kind in ("fp16", "powersgd"):
        cfg = digits_config(tmp_path, train={"precision": "bf16", "compression": {"kind": kind}})
        assert (cfg.train.precision, cfg.train.compression.kind) == ("bf16", kind)


def test_defaults_send_plain_fp32_gradients(tmp_path):
    assert digits_config(tmp_path).train.compression == CompressionConfig(kind="none", rank=2, start_step=1000)


@pytest.fixture
def gloo(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield dist.group.WORLD
    dist.destroy_process_group()


def train_steps(compression: CompressionConfig, group, steps: int) -> tuple[list[dict], torch.Tensor]:
    """Per step: the bytes sent and the compression ratio; and the first layer's gradient of the last step."""
    torch.manual_seed(0)
    model = DistributedDataParallel(
        torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)),
        process_group=group,
        gradient_as_bucket_view=True,
    )
    traffic = attach_compression(model, compression, group)
    x_bf, y_b = torch.randn(steps, 16, 64), torch.randint(0, 10, (steps, 16))
    per_step = []
    for step in range(steps):
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x_bf[step]), y_b[step]).backward()
        per_step.append(traffic.epoch_metrics(1))
    return per_step, model.module[0].weight.grad.clone()


FULL = (64 * 32 + 32 + 32 * 10 + 10) * 4
"""fp32 bytes of the MLP's gradients."""
RANK2 = ((32 + 64) * 2 + 32 + (10 + 32) * 2 + 10) * 4
"""PowerSGD rank 2: P and Q of both weight matrices; the biases, too small to gain, as they are."""


def test_each_kind_counts_the_bytes_its_hook_sends_and_changes_the_gradients(gloo):
    plain, plain_grad = train_steps(CompressionConfig(), gloo, steps=4)
    half, half_grad = train_steps(CompressionConfig(kind="fp16"), gloo, steps=4)
    low_rank, low_rank_grad = train_steps(CompressionConfig(kind="powersgd", start_step=2), gloo, steps=4)

    assert [m["grad_bytes_per_step"] for m in plain] == [FULL] * 4
    assert [m["grad_bytes_per_step"] for m in half] == [FULL / 2] * 4
    assert [m["grad_bytes_per_step"] for m in low_rank] == [FULL, FULL, RANK2, RANK2], "start_step 2: two plain"
    assert low_rank[-1]["compression_ratio"] == pytest.approx(FULL / RANK2)
    # fp16 rounds each gradient; PowerSGD replaces a weight's gradient by its rank-2 approximation.
    assert not torch.equal(half_grad, plain_grad) and torch.allclose(half_grad, plain_grad, atol=1e-3)
    assert torch.linalg.matrix_rank(plain_grad) > 2 and torch.linalg.matrix_rank(low_rank_grad) <= 2


def test_the_progress_line_shows_the_bytes_per_step(tmp_path):
    metrics = {"epoch": 0, "train_loss": 1.0, "samples_per_s": 100}
    assert format_epoch({**metrics, "grad_bytes_per_step": 9640.0, "compression_ratio": 1.0}, 2).endswith(
        "grads 9.4 KiB/step"
    )
    line = format_epoch({**metrics, "grad_bytes_per_step": 1272.0, "compression_ratio": 7.58}, 2)
    assert line.endswith("grads 1.2 KiB/step (7.6x less)")
