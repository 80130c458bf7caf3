"""teacher-student: GradMax's teacher-student setting, a student grown to the teacher's width
(seed 002, section 4.1)."""

from __future__ import annotations

from ..compare import Experiment, TaskSource
from ..config import GrowthConfig
from .common import Rows, area, compare_claim, contrast, mlp, seed_count
from .core import register_preset


@register_preset(
    "teacher-student",
    "GradMax's teacher-student setting: teacher 10:10:10 without bias, student "
    "10:5:10 with ReLU of derivative 1 at 0, grown by one neuron every 200 full-batch SGD steps "
    "(lr 0.1) to width 10, 1500 steps; gradmax vs random vs tiny vs static widths 5 and 10. dagrow's SGD has "
    "momentum 0.9, so lr 0.01 here gives GradMax's step of 0.1 in the steady state.",
    "seed 002 (GradMax paper), section 4.1 and its code's setting.",
)
def build(quick: bool) -> Experiment:
    growth = {"widen": ["h1"], "new_nodes": "none"}
    spec = mlp("student", 10, [5], 10, activation="relu_grad1", bias=False, growth=growth)
    config = GrowthConfig(
        strategy="naive",
        growths=5,
        every=40 if quick else 200,
        optimizer="sgd",
        lr=0.01,
        batch_size=100_000,
        growth_batch=100_000,
        final_steps=100 if quick else 500,
    )
    statics = {
        "w5": mlp("small", 10, [5], 10, activation="relu_grad1", bias=False),
        "w10": mlp("big", 10, [10], 10, activation="relu_grad1", bias=False),
    }
    return Experiment(
        "teacher-student",
        spec,
        TaskSource("teacher_student"),
        config,
        ["naive"],
        ["gradmax", "random", "tiny"],
        seeds=seed_count(quick, 5),
        statics=statics,
        claims=claims,
    )


def claims(rows: Rows) -> list[str]:
    gradmax = {"init": "gradmax"}
    mean_loss = compare_claim(
        "gradmax's training loss averaged over the run (the area under its curve) is below random's",
        area(rows, **gradmax),
        area(rows, init="random"),
        lower=True,
        what="mean train mse",
    )
    return [
        contrast(
            rows, "gradmax ends below random in training loss", "train_loss", gradmax, {"init": "random"}
        ),
        contrast(rows, "gradmax ends below tiny in training loss", "train_loss", gradmax, {"init": "tiny"}),
        mean_loss,
        contrast(
            rows,
            "the grown student ends below the small static student",
            "train_loss",
            {"kind": "grow"},
            {"init": "w5", "kind": "static"},
        ),
        contrast(
            rows,
            "gradmax ends below the big static student (trained from scratch)",
            "train_loss",
            gradmax,
            {"init": "w10", "kind": "static"},
        ),
    ]
