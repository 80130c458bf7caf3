"""digits-cnn: a small residual CNN grown on the 8x8 digits (channels of the two residual blocks'
inner nodes), tiny vs gradmax vs random against static CNNs of the grown sizes (issue 14)."""

from __future__ import annotations

from typing import Any

from ..compare import Experiment, TaskSource
from ..config import GrowthConfig
from ..spec import GraphSpec, parse_spec
from .common import Rows, ends_above, seed_count
from .core import register_preset

CONV = {"type": "conv2d", "kernel": 3, "padding": 1}


def resnet(name: str, a1: int, a2: int, *, growth: dict[str, Any] | None = None) -> GraphSpec:
    """specs/resnet_digits.yaml's residual CNN (batch norm on every conv node) with ``a1`` and ``a2``
    channels inside its two blocks (ReLU with derivative 1 at 0, so that gradmax's zero fan-in channels
    can learn).

    ``img [1, 8, 8] -conv-> stem (8) -conv-> a1 -conv-> b1 (8, + stem) -avg_pool-> p1 (8, 4x4)
    -conv-> a2 -conv-> b2 (8, + p1) -flatten-> flat (128) -> out (10)``."""
    act = "relu_grad1"
    data: dict[str, Any] = {
        "name": name,
        "inputs": {"img": {"shape": [1, 8, 8]}},
        "nodes": {
            "stem": {"norm": "batch_norm", "channels": 8, "activation": act},
            "a1": {"norm": "batch_norm", "channels": a1, "activation": act},
            "b1": {"norm": "batch_norm", "channels": 8, "activation": act},
            "p1": {"channels": 8, "bias": False},
            "a2": {"norm": "batch_norm", "channels": a2, "activation": act},
            "b2": {"norm": "batch_norm", "channels": 8, "activation": act},
            "flat": {"width": 128, "bias": False},
            "out": {"width": 10},
        },
        "edges": [
            {"from": "img", "to": "stem", "op": CONV},
            {"from": "stem", "to": "a1", "op": CONV},
            {"from": "a1", "to": "b1", "op": CONV},
            {"from": "stem", "to": "b1", "op": "identity"},
            {"from": "b1", "to": "p1", "op": {"type": "avg_pool", "kernel": 2}},
            {"from": "p1", "to": "a2", "op": CONV},
            {"from": "a2", "to": "b2", "op": CONV},
            {"from": "p1", "to": "b2", "op": "identity"},
            {"from": "b2", "to": "flat", "op": "flatten"},
            {"from": "flat", "to": "out"},
        ],
        "outputs": ["out"],
    }
    if growth is not None:
        data["growth"] = growth
    return parse_spec(data)


@register_preset(
    "digits-cnn",
    "A residual CNN grown on scikit-learn's 8x8 digits (the inner channels of its two blocks, from 1 "
    "each, two channels per growth, Adam): tiny vs gradmax vs random, against static CNNs of 1 and 6 "
    "inner channels.",
    "issue 14 (conv growth); initialisations as in seeds 000-002.",
)
def build(quick: bool) -> Experiment:
    spec = resnet("resnet_digits_1", 1, 1, growth={"widen": "all", "new_nodes": "none"})
    config = GrowthConfig(
        strategy="amplitude_factor",
        growths=2 if quick else 5,
        every=30 if quick else 40,
        neurons=2,
        optimizer="adam",
        lr=1e-2,
        batch_size=64,
        growth_batch=256,
    )
    # 5 growths of 2 channels take the inner channels from 1 + 1 to 12 in all: as many parameters as 6 + 6
    statics = {f"c{w}": resnet(f"static_c{w}", w, w) for w in ((1, 3) if quick else (1, 6))}
    return Experiment(
        "digits-cnn",
        spec,
        TaskSource("digits", options=(("image", True),)),
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
            ("gradmax ends above random in test accuracy", {"init": "gradmax"}, {"init": "random"}),
            (
                "growth beats the static starting net (1 inner channel)",
                {"kind": "grow"},
                {"init": "c1", "kind": "static"},
            ),
            (
                "growth ends above the static net of the grown size (6 + 6 inner channels)",
                {"kind": "grow"},
                {"init": "c6", "kind": "static"},
            ),
        ],
    )
