"""Ray Tune: search spaces, the resource planner, the search driver and its report."""

from rayline.tune.driver import SearchOutcome, run_search
from rayline.tune.plan import Plan, PlanError, plan_trials
from rayline.tune.space import Param, apply_params, load_search_space

__all__ = [
    "Param",
    "Plan",
    "PlanError",
    "SearchOutcome",
    "apply_params",
    "load_search_space",
    "plan_trials",
    "run_search",
]
