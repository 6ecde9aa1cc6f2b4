"""The torch process group for Ray Train, set up without torch on the Train controller.

Ray's TorchConfig lives in a module that imports torch, and every run's controller unpickles the backend config
and runs its setup, so each run (and each Tune trial) spent about a second and a half of CPU importing torch in a
process that never uses it. This config starts the same gloo or nccl group, the same way (MASTER_ADDR/PORT from
rank 0, the torchrun environment variables, init_process_group), with every torch call made on the workers."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import ray
from ray.exceptions import GetTimeoutError
from ray.train._internal.utils import get_address_and_port
from ray.train.backend import Backend, BackendConfig
from ray.train.constants import DEFAULT_TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S, TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S
from ray.train.v2._internal.util import TrainingFramework

logger = logging.getLogger(__name__)


@dataclass
class ProcessGroupConfig(BackendConfig):
    backend: str = "gloo"
    """gloo between CPU workers, nccl between GPUs."""
    timeout_s: int = 1800

    @property
    def backend_cls(self):
        return ProcessGroupBackend

    @property
    def train_func_context(self):
        # Read where the training function is built (the driver, or a Tune trial) and entered on the workers.
        from ray.train.torch.config import TorchConfigContextManager

        return TorchConfigContextManager

    @property
    def framework(self):
        return TrainingFramework.TORCH


class ProcessGroupBackend(Backend):
    share_cuda_visible_devices: bool = True

    def on_start(self, worker_group, backend_config: ProcessGroupConfig):
        address, port = worker_group.execute_single(0, get_address_and_port)
        worker_group.execute(set_distributed_environment, address=address, port=port)
        joins = [
            worker_group.execute_single_async(
                rank,
                join_process_group,
                backend=backend_config.backend,
                world_rank=rank,
                world_size=len(worker_group),
                timeout_s=backend_config.timeout_s,
            )
            for rank in range(len(worker_group))
        ]
        ray.get(joins)

    def on_shutdown(self, worker_group, backend_config: ProcessGroupConfig):
        leaving = worker_group.execute_async(leave_process_group, destroy=len(worker_group) > 1)
        timeout_s = float(
            os.environ.get(TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S, DEFAULT_TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S)
        )
        try:
            ray.get(leaving, timeout=timeout_s)
        except GetTimeoutError:
            logger.warning("the torch process group did not shut down within %s s", timeout_s)


# Run on the workers (pickled by reference to this module, so the controller never imports torch).


def set_distributed_environment(address: str, port: int) -> None:
    from ray.train.torch.config import _set_torch_distributed_env_vars

    os.environ["MASTER_ADDR"] = address
    os.environ["MASTER_PORT"] = str(port)
    _set_torch_distributed_env_vars()


def join_process_group(backend: str, world_rank: int, world_size: int, timeout_s: int) -> None:
    from ray.train.torch.config import _setup_torch_process_group

    _setup_torch_process_group(
        backend=backend, world_rank=world_rank, world_size=world_size, init_method="env://", timeout_s=timeout_s
    )


def leave_process_group(destroy: bool) -> None:
    from ray.train.torch.config import _shutdown_torch

    _shutdown_torch(destroy_process_group=destroy)
