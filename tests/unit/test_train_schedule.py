"""Learning-rate schedules and early stopping, as pure functions of the epoch and the metric history."""

import math

import pytest

from rayline.config import EarlyStoppingConfig, LRScheduleConfig
from rayline.train.schedule import lr_factor, steps_per_epoch
from rayline.train.stopping import decide


def factors(schedule, epochs=10):
    return [lr_factor(schedule, epochs=epochs, epoch=e) for e in range(epochs)]


def test_constant_keeps_the_learning_rate():
    assert factors(LRScheduleConfig()) == [1.0] * 10


def test_warmup_rises_linearly_per_step_then_holds():
    schedule = LRScheduleConfig(warmup_epochs=3)
    assert lr_factor(schedule, epochs=10, epoch=0, progress=0.0) == pytest.approx(1 / 4)
    assert lr_factor(schedule, epochs=10, epoch=0, progress=0.5) == pytest.approx(1.5 / 4)
    assert lr_factor(schedule, epochs=10, epoch=2, progress=0.999) == pytest.approx(3.999 / 4)
    assert lr_factor(schedule, epochs=10, epoch=3) == 1.0


def test_cosine_falls_to_min_lr_ratio_at_the_last_epoch():
    schedule = LRScheduleConfig(kind="cosine", min_lr_ratio=0.1)
    values = factors(schedule, epochs=11)
    assert values[0] == 1.0
    assert values[5] == pytest.approx(0.1 + 0.9 * 0.5)
    assert values[-1] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(values, values[1:], strict=False))


def test_cosine_after_warmup_starts_at_the_full_rate():
    schedule = LRScheduleConfig(kind="cosine", warmup_epochs=2)
    values = factors(schedule, epochs=12)
    assert values[2] == 1.0
    assert values[-1] == pytest.approx(0.0, abs=1e-12)


def test_step_multiplies_by_gamma_every_step_epochs_after_warmup():
    schedule = LRScheduleConfig(kind="step", step_epochs=3, gamma=0.5, warmup_epochs=1)
    values = factors(schedule, epochs=8)
    assert values[1:] == pytest.approx([1, 1, 1, 0.5, 0.5, 0.5, 0.25])


def test_steps_per_epoch_counts_one_replicas_batches():
    assert steps_per_epoch(1000, 2, 64) == math.ceil(500 / 64)
    assert steps_per_epoch(10, 4, 64) == 1


def history(values, metric="val_loss"):
    return [{"epoch": e, metric: v} for e, v in enumerate(values)]


def test_early_stopping_waits_patience_epochs_after_the_best():
    rule = EarlyStoppingConfig(metric="val_loss", patience=2)
    values = [1.0, 0.8, 0.7, 0.75, 0.71]
    assert not decide(history(values[:4]), rule).stop
    verdict = decide(history(values), rule)
    assert (verdict.stop, verdict.best_epoch, verdict.epochs_without_improvement) == (True, 2, 2)


def test_early_stopping_min_delta_ignores_small_improvements():
    rule = EarlyStoppingConfig(metric="val_loss", patience=2, min_delta=0.05)
    verdict = decide(history([1.0, 0.98, 0.97]), rule)
    assert (verdict.stop, verdict.best_epoch) == (True, 0)


def test_early_stopping_maximises_accuracy_like_metrics():
    rule = EarlyStoppingConfig(metric="val_f1_macro", patience=1)
    assert rule.direction == "max"
    assert decide(history([0.5, 0.6, 0.55], "val_f1_macro"), rule).best_epoch == 1
    assert decide(history([0.5, 0.6, 0.55], "val_f1_macro"), rule).stop


def test_early_stopping_resumes_from_the_history_of_earlier_epochs():
    rule = EarlyStoppingConfig(metric="val_r2", patience=3)
    resumed = [{"epoch": e + 10, "val_r2": v} for e, v in enumerate([0.4, 0.5, 0.45, 0.44])]
    verdict = decide(resumed, rule)
    assert (verdict.best_epoch, verdict.epochs_without_improvement, verdict.stop) == (11, 2, False)


def test_the_run_says_when_early_stopping_ended_it():
    from pathlib import Path

    from rayline.config import validate_config
    from rayline.pipeline import format_epoch
    from rayline.train.driver import TrainOutcome

    cfg = validate_config(
        {
            "name": "t",
            "data": {"source": "x.csv", "task": "classification", "label": "y", "features": ["a"]},
            "train": {"epochs": 50, "early_stopping": {"metric": "val_loss", "patience": 4}},
        }
    )
    last = {"epoch": 11, "epochs_done": 12, "stopped_early": 1, "best_epoch": 7, "epochs_without_improvement": 4}
    outcome = TrainOutcome(Path("."), {}, Path("."), last_metrics=last)
    assert outcome.early_stopping_line(cfg) == (
        "early stopping: val_loss did not improve by 0 for 4 epochs; best epoch 8, stopped after epoch 12 of 50"
    )
    assert TrainOutcome(Path("."), {}, Path("."), last_metrics={"epoch": 49}).early_stopping_line(cfg) is None
    line = format_epoch(
        {**last, "train_loss": 0.3, "val_loss": 0.2, "val_f1_macro": 0.9, "lr": 0.01, "samples_per_s": 9}, 50
    )
    assert line.startswith("epoch 12/50") and "val_f1_macro 0.9000" in line and "lr 0.01" in line
