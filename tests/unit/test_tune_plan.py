import pytest

from rayline.config import validate_config
from rayline.tune.plan import PlanError, plan_trials


def config(**overrides):
    raw = {
        "name": "t",
        "data": {"source": "/x.parquet", "task": "classification", "label": "y", "features": ["a"]},
        "train": {"num_workers": 2, "cpus_per_worker": 1.0},
        "tune": {"search_space": "/s.yaml", "num_samples": 8, "trial_driver_cpus": 0.5, "data_reserve_cpus": 1.0},
    }
    for section, values in overrides.items():
        raw[section] = {**raw.get(section, {}), **values}
    return validate_config(raw)


NODE = {"CPU": 8.0}


def test_concurrency_is_what_fits_after_the_data_reserve():
    # (8 CPUs - 1 reserved) / (0.5 driver + 2 x 1.0 workers) = 2.8 -> 2
    plan = plan_trials(config(), {"CPU": 8.0}, [NODE])
    assert plan.max_concurrent_trials == 2
    assert plan.cpus_per_trial == 2.5


def test_concurrency_respects_the_users_cap_and_the_trial_count():
    assert (
        plan_trials(config(tune={"max_concurrent_trials": 1}), {"CPU": 64.0}, [{"CPU": 64.0}]).max_concurrent_trials
        == 1
    )
    assert plan_trials(config(tune={"num_samples": 3}), {"CPU": 64.0}, [{"CPU": 64.0}]).max_concurrent_trials == 3


def test_a_search_that_cannot_fit_one_trial_fails_with_what_it_needs():
    with pytest.raises(PlanError) as err:
        plan_trials(config(train={"num_workers": 4}), {"CPU": 2.0}, [{"CPU": 2.0}])
    message = str(err.value)
    assert "one trial needs 4.5 CPUs" in message
    assert "the cluster has 2 CPUs" in message
    assert "Lower train.num_workers" in message


def test_gpu_trials_are_planned_by_gpus():
    cfg = config(train={"use_gpu": True, "num_workers": 2})
    assert plan_trials(cfg, {"CPU": 32.0, "GPU": 4.0}, [{"CPU": 32.0, "GPU": 4.0}]).max_concurrent_trials == 2
    with pytest.raises(PlanError, match="and 2 GPUs"):
        plan_trials(cfg, {"CPU": 32.0, "GPU": 1.0}, [{"CPU": 32.0, "GPU": 1.0}])


def test_a_worker_bigger_than_any_node_is_rejected():
    cfg = config(train={"cpus_per_worker": 16.0, "num_workers": 1})
    with pytest.raises(PlanError, match="no node can hold one training worker"):
        plan_trials(cfg, {"CPU": 32.0}, [{"CPU": 8.0}] * 4)
