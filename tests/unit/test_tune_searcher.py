"""The search algorithm each tune.searcher gets, and the concurrency cap it carries (no cluster needed)."""

import pytest
from ray.tune.search import Searcher

from rayline.config import TuneConfig
from rayline.tune.driver import make_searcher


@pytest.mark.parametrize("searcher", ["random", "grid"])
def test_random_and_grid_search_carry_the_planned_concurrency(searcher):
    """Tune ignores max_concurrent_trials for these (only a log warning), so the cap must travel with them."""
    algorithm = make_searcher(TuneConfig(search_space="space.yaml", searcher=searcher), max_concurrent=2)
    assert algorithm.max_concurrent == 2


def test_optuna_is_a_searcher_that_tune_caps_itself():
    assert isinstance(make_searcher(TuneConfig(search_space="space.yaml"), max_concurrent=2), Searcher)


@pytest.mark.parametrize(("num_samples", "random_first"), [(1, 2), (8, 2), (12, 3), (24, 6), (100, 10)])
def test_tpe_models_most_of_a_small_budget_instead_of_sampling_it_at_random(num_samples, random_first):
    algorithm = make_searcher(TuneConfig(search_space="space.yaml", num_samples=num_samples), max_concurrent=2)
    assert algorithm._sampler._n_startup_trials == random_first
