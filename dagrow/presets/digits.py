"""digits: an MLP 64-4-10 grown on scikit-learn's digits, tiny vs gradmax vs random against static
widths (the growth loop issue's example)."""

from __future__ import annotations

from ..compare import Experiment, TaskSource
from ..config import GrowthConfig
from .common import Rows, ends_above, mlp, seed_count
from .core import register_preset


@register_preset(
    "digits",
    "An MLP 64-4-10 grown on scikit-learn's digits (Adam, minibatches, two neurons per "
    "growth): tiny vs gradmax vs random, against static widths 4 to 64.",
    "the growth loop issue's example; initialisations as in seeds 000-002.",
)
def build(quick: bool) -> Experiment:
    # relu_grad1 (ReLU with derivative 1 at 0) so that gradmax's zero fan-in neurons can learn
    spec = mlp(
        "mlp_digits", 64, [4], 10, activation="relu_grad1", growth={"widen": "all", "new_nodes": "none"}
    )
    config = GrowthConfig(
        strategy="amplitude_factor",
        growths=3 if quick else 14,
        every=50 if quick else 100,
        neurons=2,
        optimizer="adam",
        lr=1e-2,
        batch_size=64,
        growth_batch=1024,
    )
    statics = {
        f"w{w}": mlp(f"static_w{w}", 64, [w], 10, activation="relu_grad1")
        for w in ((4, 32) if quick else (4, 8, 16, 32, 64))
    }
    return Experiment(
        "digits",
        spec,
        TaskSource("digits"),
        config,
        ["amplitude_factor"],
        ["tiny", "gradmax", "random"],
        seeds=seed_count(quick),
        statics=statics,
        claims=claims,
    )


def claims(rows: Rows) -> list[str]:
    return ends_above(
        rows,
        [
            ("tiny ends above random in test accuracy", {"init": "tiny"}, {"init": "random"}),
            (
                "growth beats the static starting net (width 4)",
                {"kind": "grow"},
                {"init": "w4", "kind": "static"},
            ),
        ],
    )
