"""sin50-depth: depth selection on sin50 from a thin 50-4-4-10 ReLU net, every strategy against fixed
MLPs (seed 001, Algorithms 1-2)."""

from __future__ import annotations

from ..compare import Experiment
from ..planner import STRATEGIES
from .common import Rows, contrast, growth_decreases, mlp, seed_count, sin50_setup, verdict
from .core import register_preset


@register_preset(
    "sin50-depth",
    "Depth selection on sin50 (x ~ N(0, I_50), 10 classes) from a thin 50-4-4-10 "
    "ReLU net: naive vs max_eigenvalue vs amplitude_factor (one TINY neuron per growth at its "
    "gamma*, then one best update of every layer), against fixed MLPs of 1 to 4 hidden layers.",
    "seed 001 (TINY slides), Algorithms 1-2 and 'Experiment (2)'.",
)
def build(quick: bool) -> Experiment:
    spec, config, task = sin50_setup(quick, optimizer="best_update")
    statics = {f"{k}x8": mlp(f"static_{k}x8", 50, [8] * k, 10) for k in range(1, 5)}
    return Experiment(
        "sin50-depth",
        spec,
        task,
        config,
        list(STRATEGIES),
        ["tiny"],
        seeds=seed_count(quick),
        statics={} if quick else statics,
        claims=claims,
    )


def claims(rows: Rows) -> list[str]:
    fell, applied = growth_decreases([r for r in rows if r["strategy"] != "natural"], init="tiny")
    return [
        contrast(
            rows,
            "amplitude_factor ends above naive in test accuracy",
            "test_metric",
            {"strategy": "amplitude_factor"},
            {"strategy": "naive"},
            lower=False,
        ),
        f"every applied TINY growth lowers the loss on its growth batch: {verdict(fell == applied)} "
        f"({fell} of {applied})",
    ]
