"""Ray Train: the per-worker loop and the driver that builds the TorchTrainer."""

from rayline.train.driver import TrainOutcome, fit

__all__ = ["TrainOutcome", "fit"]
