"""senn: SENN's 1-D regression, the natural strategy deciding when to stop growing (seed 003)."""

from __future__ import annotations

from ..compare import Experiment, TaskSource
from ..config import GrowthConfig, NaturalConfig
from ..results import by_run
from .common import Rows, contrast, mlp, seed_count, verdict
from .core import register_preset


@register_preset(
    "senn",
    "SENN's 1-D regression (y = 2 sin(x) + x, 50 points) from one hidden tanh neuron: the natural "
    "strategy grows while the natural expansion score rises by more than its thresholds, then stops; "
    "amplitude_factor adds a neuron every round (10 growths).",
    "seed 003 (SENN paper summary), its first experiment; the SENN issue's examples.",
)
def build(quick: bool) -> Experiment:
    """SENN's 1-D regression: from one hidden neuron, natural growth (no cap: it decides when to stop)
    against amplitude_factor (a neuron every round, 10 growths)."""
    growth = {"widen": "all", "new_nodes": "none"}  # as in examples/senn_regression1d.py: width only
    spec = mlp("senn1d", 1, [1], 1, activation="tanh", growth=growth)
    config = GrowthConfig(
        growths=10,
        every=50 if quick else 200,
        optimizer="adam",
        lr=1e-2,
        batch_size=64,
        growth_batch=1024,
        natural=NaturalConfig(max_rounds=3 if quick else 60),
    )
    return Experiment(
        "senn",
        spec,
        TaskSource("regression1d", n=50),
        config,
        ["natural", "amplitude_factor"],
        ["tiny"],
        seeds=seed_count(quick),
        claims=claims,
        overrides={"natural": {"growths": None}},
    )


def claims(rows: Rows) -> list[str]:
    natural = [run for run in by_run(rows).values() if run[0]["strategy"] == "natural"]
    stopped = [
        run for run in natural if any(r["event"] == "stop" and "stopped growing" in r["site"] for r in run)
    ]
    sizes = [run[-1]["parameters"] for run in natural]
    return [
        "natural growth stops by itself (no growth cap): "
        f"{verdict(bool(natural) and len(stopped) == len(natural))}"
        f" ({len(stopped)} of {len(natural)} runs; final parameters {', '.join(map(str, sizes))})",
        contrast(
            rows,
            "natural ends with a lower test mse than amplitude_factor",
            "test_metric",
            {"strategy": "natural"},
            {"strategy": "amplitude_factor"},
        ),
    ]
