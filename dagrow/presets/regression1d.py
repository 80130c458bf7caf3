"""regression1d: a one-neuron net grown neuron by neuron by TINY on f(x) = 2 sin(x) + x (seed 000)."""

from __future__ import annotations

from ..compare import Experiment, TaskSource
from ..config import GrowthConfig
from .common import Rows, compare_claim, final, growth_decreases, mlp, seed_count, verdict
from .core import register_preset


@register_preset(
    "regression1d",
    "A one-neuron net grown neuron by neuron (TINY, full batch, best update) on "
    "f(x) = 2 sin(x) + x; the loss must fall with each neuron.",
    "seed 000 (TINY paper summary), 'first experiments' 1.",
)
def build(quick: bool) -> Experiment:
    # x -> out alone cannot grow under TINY: with one input, a new node's inputs (x, 1) are exactly what out
    # already sees, so the projected bottleneck is orthogonal to them and every eigenvalue is 0 (see
    # docs/design.md). The smallest net TINY can grow has one hidden neuron (tanh: smooth, as in its theory).
    spec = mlp("one_neuron_1d", 1, [1], 1, activation="tanh", growth={"widen": "all", "new_nodes": "none"})
    config = GrowthConfig(
        growths=4 if quick else 20,
        every=1,
        optimizer="best_update",
        batch_size=10_000,
        growth_batch=10_000,
        joint_update=True,
    )
    return Experiment(
        "regression1d",
        spec,
        TaskSource("regression1d"),
        config,
        ["amplitude_factor"],
        ["tiny", "random"] if not quick else ["tiny"],
        seeds=seed_count(quick),
        claims=claims,
    )


def claims(rows: Rows) -> list[str]:
    fell, applied = growth_decreases(rows, init="tiny")
    first = [r for r in rows if r["event"] == "start"]
    lines = [
        f"the training loss falls with each TINY neuron: {verdict(applied > 0 and fell == applied)}"
        f" ({fell} of {applied} growths lowered the loss on the growth batch)"
    ]
    lines.append(
        compare_claim(
            "the grown model ends below the one-neuron start",
            final(rows, "train_loss"),
            [float(r["train_loss"]) for r in first],
            lower=True,
            what="train mse",
        )
    )
    return lines
