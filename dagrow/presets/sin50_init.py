"""sin50-init: pure growth on sin50 (no gradient steps), TINY against the other initialisations
(seed 001, Algorithm 3)."""

from __future__ import annotations

from ..compare import Experiment
from .common import Rows, contrast, seed_count, sin50_setup
from .core import register_preset


@register_preset(
    "sin50-init",
    "Pure growth on sin50 (no gradient steps: SGD at learning rate 0, neurons added "
    "round robin with their gamma*), TINY vs random vs gradmax vs north.",
    "seed 001 (TINY slides), Algorithm 3 and 'Experiment (1): Random vs TINY'.",
)
def build(quick: bool) -> Experiment:
    spec, config, task = sin50_setup(quick, optimizer="sgd", lr=0.0)
    inits = ["tiny", "random"] if quick else ["tiny", "random", "gradmax", "north"]
    return Experiment(
        "sin50-init", spec, task, config, ["naive"], inits, seeds=seed_count(quick), claims=claims
    )


def claims(rows: Rows) -> list[str]:
    tiny, random = {"init": "tiny"}, {"init": "random"}
    return [
        contrast(rows, "TINY ends below random in training loss (pure growth)", "train_loss", tiny, random),
        contrast(
            rows,
            "TINY ends above random in test accuracy (pure growth)",
            "test_metric",
            tiny,
            random,
            lower=False,
        ),
    ]
