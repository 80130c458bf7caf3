"""teacher-student: GradMax's teacher-student setting, a student grown to the teacher's width
(seed 002, section 4.1), under its notebook's protocol: full-batch SGD at lr 0.1 without momentum on
1,000 training samples, a new teacher for each seed, 10 seeds; claims paired over seeds."""

from __future__ import annotations

from ..compare import Experiment, TaskSource
from ..config import GrowthConfig
from ..results import paired_area, paired_claim, paired_final
from .common import Rows, mlp, seed_count
from .core import register_preset

N = 1428  # 1,000 training samples (70 %), 214 validation and 214 test samples from the same teacher


@register_preset(
    "teacher-student",
    "GradMax's teacher-student setting under its notebook's protocol: teacher 10:10:10 without bias "
    "(a new teacher per seed), student 10:5:10 with ReLU of derivative 1 at 0, grown by one neuron "
    "every 200 full-batch SGD steps (lr 0.1, no momentum, 1,000 training samples) to width 10, 1,500 "
    "steps; gradmax vs random_fan_out (GradMax's random baseline) vs random vs tiny vs static widths "
    "5 and 10; claims paired over 10 seeds.",
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
        lr=0.1,
        momentum=0.0,
        batch_size=100_000,  # full batch
        growth_batch="all",
        final_steps=100 if quick else 500,
    )
    statics = {
        "w5": mlp("small", 10, [5], 10, activation="relu_grad1", bias=False),
        "w10": mlp("big", 10, [10], 10, activation="relu_grad1", bias=False),
    }
    return Experiment(
        "teacher-student",
        spec,
        TaskSource("teacher_student", n=N, per_seed=True),
        config,
        ["naive"],
        ["gradmax", "random_fan_out", "random", "tiny"],
        seeds=seed_count(quick, 10),
        statics=statics,
        claims=claims,
    )


def claims(rows: Rows) -> list[str]:
    gradmax = {"init": "gradmax", "kind": "grow"}

    def final(text: str, other: dict) -> str:
        return paired_claim(
            text, paired_final(rows, "train_loss", gradmax, other, lower=True), "final train mse"
        )

    return [
        final(
            "gradmax ends below random_fan_out in training loss", {"init": "random_fan_out", "kind": "grow"}
        ),
        final("gradmax ends below random in training loss", {"init": "random", "kind": "grow"}),
        final("gradmax ends below tiny in training loss", {"init": "tiny", "kind": "grow"}),
        paired_claim(
            "gradmax's training loss per parameter (area under its curve) is below random_fan_out's",
            paired_area(rows, "train_loss", gradmax, {"init": "random_fan_out", "kind": "grow"}, lower=True),
            "mean train mse",
        ),
        final("gradmax ends below the small static student", {"init": "w5", "kind": "static"}),
        final(
            "gradmax ends below the big static student (trained from scratch)",
            {"init": "w10", "kind": "static"},
        ),
    ]
