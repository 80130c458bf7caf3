"""Presets of `dagrow compare`: the seeds' experiments, each with its source and its directional claims.

A preset is a builder ``(quick: bool) -> Experiment`` registered with :func:`register_preset`. The
``--quick`` version is small enough for a test (under a minute); the default run is sized to finish in
under ten minutes on two CPU cores with ``--jobs 1``. ``claims`` turn a preset's rows into one line
each, saying what was checked, what was measured and whether it holds; they are printed in
summary.md and asserted (for the quick runs) by tests/test_compare.py.

The seeds are in the shared design folder (seeds/README.md says which covers what).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .compare import Experiment, RunKey, TaskSource, by_run, make_row, mean_std
from .loop import GrowthConfig
from .planner import STRATEGIES
from .spec import GraphSpec, parse_spec

Rows = list[dict[str, Any]]


@dataclass(frozen=True)
class Preset:
    name: str
    summary: str
    source: str
    build: Callable[[bool], Experiment]


PRESETS: dict[str, Preset] = {}


def register_preset(name: str, summary: str, source: str):
    def deco(build: Callable[[bool], Experiment]) -> Callable[[bool], Experiment]:
        PRESETS[name] = Preset(name, summary, source, build)
        return build

    return deco


def list_presets() -> list[str]:
    return list(PRESETS)


def make_preset(name: str, *, quick: bool = False) -> Experiment:
    """The preset's experiment; ValueError naming the presets for an unknown name."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {', '.join(PRESETS)}")
    preset = PRESETS[name]
    exp = preset.build(quick)
    exp.description = f"{preset.summary} Source: {preset.source}" + (" (quick version)" if quick else "")
    return exp


def mlp(
    name: str,
    inputs: int,
    hidden: list[int],
    outputs: int,
    *,
    activation: str = "relu",
    bias: bool = True,
    growth: dict[str, Any] | None = None,
) -> GraphSpec:
    """A chain MLP spec ``x -> h1 -> ... -> out`` (no hidden node: a linear model)."""
    names = [f"h{i + 1}" for i in range(len(hidden))]
    nodes: dict[str, Any] = {
        n: {"width": w, "activation": activation, "bias": bias} for n, w in zip(names, hidden, strict=True)
    }
    nodes["out"] = {"width": outputs, "bias": bias}
    chain = ["x", *names, "out"]
    data: dict[str, Any] = {
        "name": name,
        "inputs": {"x": {"shape": [inputs]}},
        "nodes": nodes,
        "edges": [{"from": a, "to": b} for a, b in zip(chain, chain[1:], strict=False)],
        "outputs": ["out"],
    }
    if growth is not None:
        data["growth"] = growth
    return parse_spec(data)


# --------------------------------------------------------------------------------------------------
# Reading claims off the rows
# --------------------------------------------------------------------------------------------------


def final(rows: Rows, column: str, **match: Any) -> list[float]:
    """``column`` of the last row of every run whose first row matches ``match``."""
    return [
        float(run[-1][column])
        for run in by_run(rows).values()
        if all(run[0][k] == v for k, v in match.items())
    ]


def area(rows: Rows, column: str = "train_loss", **match: Any) -> list[float]:
    """Per matching run, the mean of ``column`` over its evaluated rows after the start."""
    return [
        _mean([r[column] for r in run[1:]])
        for run in by_run(rows).values()
        if all(run[0][k] == v for k, v in match.items())
    ]


def _mean(values: list[float]) -> float:
    return mean_std(values)[0]


def verdict(ok: bool) -> str:
    return "holds" if ok else "does NOT hold"


def compare_claim(text: str, left: list[float], right: list[float], *, lower: bool, what: str) -> str:
    """'holds' when mean(left) is below (``lower``) or above mean(right)."""
    a, b = _mean(left), _mean(right)
    if math.isnan(a) or math.isnan(b):
        return f"{text}: not measured (runs missing)"
    return f"{text}: {verdict(a < b if lower else a > b)} ({what} {a:.4g} vs {b:.4g})"


def contrast(
    rows: Rows, text: str, column: str, a: dict[str, Any], b: dict[str, Any], *, lower: bool = True
) -> str:
    """:func:`compare_claim` on ``column`` of the last rows of the runs matching ``a`` and ``b``."""
    what = column.replace("_metric", " " + (rows[0]["metric"] if rows else "metric")).replace("_", " ")
    return compare_claim(text, final(rows, column, **a), final(rows, column, **b), lower=lower, what=what)


def growth_decreases(rows: Rows, **match: Any) -> tuple[int, int]:
    """(growths whose loss on the growth batch fell, growths applied), over rows matching ``match``."""
    applied = [
        r
        for r in rows
        if r["event"] == "growth"
        and r["loss_before"] != ""
        and r["loss_after"] != ""
        and all(r[k] == v for k, v in match.items())
    ]
    return sum(float(r["loss_after"]) < float(r["loss_before"]) for r in applied), len(applied)


# --------------------------------------------------------------------------------------------------
# Growth presets
# --------------------------------------------------------------------------------------------------


def _seeds(quick: bool, default: int = 3) -> int:
    return 1 if quick else default


@register_preset(
    "regression1d",
    "A one-neuron net grown neuron by neuron (TINY, full batch, best update) on "
    "f(x) = 2 sin(x) + x; the loss must fall with each neuron.",
    "seed 000 (TINY paper summary), 'first experiments' 1.",
)
def regression1d(quick: bool) -> Experiment:
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
        seeds=_seeds(quick),
        claims=regression1d_claims,
    )


def regression1d_claims(rows: Rows) -> list[str]:
    fell, applied = growth_decreases(rows, init="tiny")
    first = [r for r in rows if r["event"] == "start"]
    claims = [
        f"the training loss falls with each TINY neuron: {verdict(applied > 0 and fell == applied)}"
        f" ({fell} of {applied} growths lowered the loss on the growth batch)"
    ]
    claims.append(
        compare_claim(
            "the grown model ends below the one-neuron start",
            final(rows, "train_loss"),
            [float(r["train_loss"]) for r in first],
            lower=True,
            what="train mse",
        )
    )
    return claims


def _sin50(quick: bool, **config: Any) -> tuple[GraphSpec, GrowthConfig, TaskSource]:
    """The thin 50-4-4-10 ReLU net, one neuron per growth with one training step between growths."""
    spec = mlp("mlp_sin50", 50, [4, 4], 10, growth={"widen": "all", "new_nodes": "none", "max_width": 256})
    schedule = GrowthConfig(growths=6 if quick else 40, every=1, batch_size=1024, growth_batch=1024, **config)
    return spec, schedule, TaskSource("sin50", n=3000 if quick else 20000)


@register_preset(
    "sin50-depth",
    "Depth selection on sin50 (x ~ N(0, I_50), 10 classes) from a thin 50-4-4-10 "
    "ReLU net: naive vs max_eigenvalue vs amplitude_factor (one TINY neuron per growth at its "
    "gamma*, then one best update of every layer), against fixed MLPs of 1 to 4 hidden layers.",
    "seed 001 (TINY slides), Algorithms 1-2 and 'Experiment (2)'.",
)
def sin50_depth(quick: bool) -> Experiment:
    spec, config, task = _sin50(quick, optimizer="best_update")
    statics = {f"{k}x8": mlp(f"static_{k}x8", 50, [8] * k, 10) for k in range(1, 5)}
    return Experiment(
        "sin50-depth",
        spec,
        task,
        config,
        list(STRATEGIES),
        ["tiny"],
        seeds=_seeds(quick),
        statics={} if quick else statics,
        claims=sin50_depth_claims,
    )


def sin50_depth_claims(rows: Rows) -> list[str]:
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


@register_preset(
    "sin50-init",
    "Pure growth on sin50 (no gradient steps: SGD at learning rate 0, neurons added "
    "round robin with their gamma*), TINY vs random vs gradmax vs north.",
    "seed 001 (TINY slides), Algorithm 3 and 'Experiment (1): Random vs TINY'.",
)
def sin50_init(quick: bool) -> Experiment:
    spec, config, task = _sin50(quick, optimizer="sgd", lr=0.0)
    inits = ["tiny", "random"] if quick else ["tiny", "random", "gradmax", "north"]
    return Experiment(
        "sin50-init", spec, task, config, ["naive"], inits, seeds=_seeds(quick), claims=sin50_init_claims
    )


def sin50_init_claims(rows: Rows) -> list[str]:
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


@register_preset(
    "teacher-student",
    "GradMax's teacher-student setting: teacher 10:10:10 without bias, student "
    "10:5:10 with ReLU of derivative 1 at 0, grown by one neuron every 200 full-batch SGD steps "
    "(lr 0.1) to width 10, 1500 steps; gradmax vs random vs tiny vs static widths 5 and 10. dagrow's SGD has "
    "momentum 0.9, so lr 0.01 here gives GradMax's step of 0.1 in the steady state.",
    "seed 002 (GradMax paper), section 4.1 and its code's setting.",
)
def teacher_student(quick: bool) -> Experiment:
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
        seeds=_seeds(quick, 5),
        statics=statics,
        claims=teacher_student_claims,
    )


def teacher_student_claims(rows: Rows) -> list[str]:
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


@register_preset(
    "digits",
    "An MLP 64-4-10 grown on scikit-learn's digits (Adam, minibatches, two neurons per "
    "growth): tiny vs gradmax vs random, against static widths 4 to 64.",
    "the growth loop issue's example; initialisations as in seeds 000-002.",
)
def digits(quick: bool) -> Experiment:
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
        seeds=_seeds(quick),
        statics=statics,
        claims=digits_claims,
    )


def digits_claims(rows: Rows) -> list[str]:
    return [
        contrast(
            rows,
            "tiny ends above random in test accuracy",
            "test_metric",
            {"init": "tiny"},
            {"init": "random"},
            lower=False,
        ),
        contrast(
            rows,
            "growth beats the static starting net (width 4)",
            "test_metric",
            {"kind": "grow"},
            {"init": "w4", "kind": "static"},
            lower=False,
        ),
    ]


# --------------------------------------------------------------------------------------------------
# narrow: seed 004, its own training routine (no growth)
# --------------------------------------------------------------------------------------------------

NARROW_METHODS = ("pgd", "gd")
NARROW_INITS = ("mirrored", "lecun")


@dataclass(frozen=True)
class NarrowSettings:
    n: int = 500
    d: int = 50
    steps: int = 3000
    every: int = 100
    lr: float = 1.0
    eps: float = 5.0
    activation: str = "tanh"

    @property
    def width(self) -> int:
        return 2 * math.ceil(self.n / self.d)  # m >= 2n/d, even for the pairs


def narrow_data(s: NarrowSettings) -> tuple[torch.Tensor, ...]:
    """n training points and n test points on the unit sphere of R^d with random +-1 labels."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2 * s.n, s.d, generator=g, dtype=torch.float64)
    x = x / x.norm(dim=1, keepdim=True)
    y = torch.randint(0, 2, (2 * s.n,), generator=g).double() * 2 - 1
    return x[: s.n], y[: s.n], x[s.n :], y[s.n :]


def narrow_run(exp: Experiment, key: RunKey) -> Rows:
    """Full-batch (projected) gradient descent on 1/2 mean (y - f)^2 for a one-hidden-layer net of width m.

    ``mirrored``: mirrored LeCun initialisation (w_{j+m/2} = w_j) and the pairwise output layer
    f(x) = sum_j v_j (sigma(w_j x) - sigma(w_{j+m/2} x)), so f = 0 at initialisation; ``lecun``: plain
    LeCun initialisation and f(x) = sum_j v_j sigma(w_j x). ``pgd`` projects w back onto the ball
    ||w - w0||_F <= eps after every step (v is free); ``gd`` does not.
    """
    import time

    s: NarrowSettings = exp.settings
    started = time.perf_counter()
    x, y, xt, yt = narrow_data(s)
    m, act = s.width, getattr(torch, s.activation)
    g = torch.Generator().manual_seed(key.seed)
    w = torch.randn(m, s.d, generator=g, dtype=torch.float64) / math.sqrt(s.d)
    if key.init == "mirrored":
        w[m // 2 :] = w[: m // 2]
        v = torch.randn(m // 2, generator=g, dtype=torch.float64) / math.sqrt(m)
    else:
        v = torch.randn(m, generator=g, dtype=torch.float64) / math.sqrt(m)
    w0 = w.clone()
    w.requires_grad_(True)
    v.requires_grad_(True)

    def f(inp: torch.Tensor) -> torch.Tensor:
        h = act(inp @ w.T)
        return (h[:, : m // 2] - h[:, m // 2 :]) @ v if key.init == "mirrored" else h @ v

    def row(step: int) -> dict[str, Any]:
        with torch.no_grad():
            out, out_t = f(x), f(xt)
            scores = {
                "train_loss": float(0.5 * (out - y).square().mean()),
                "train_metric": float((out.sign() == y).double().mean()),
                "test_loss": float(0.5 * (out_t - yt).square().mean()),
                "test_metric": float((out_t.sign() == yt).double().mean()),
                "distance": float((w - w0).norm()),
            }
        return make_row(
            key,
            "accuracy",
            started,
            growth=0,
            step=step,
            event="end" if step == s.steps else "train",
            parameters=w.numel() + v.numel(),
            site=f"||w - w0|| = {scores.pop('distance'):.3g}",
            val_loss=scores["train_loss"],
            val_metric=scores["train_metric"],
            **scores,
        )

    rows = [row(0)]
    rows[0]["event"] = "start"
    for step in range(1, s.steps + 1):
        loss = 0.5 * (f(x) - y).square().mean()
        gw, gv = torch.autograd.grad(loss, (w, v))
        with torch.no_grad():
            w -= s.lr * gw
            v -= s.lr * gv
            if key.strategy == "pgd":
                delta = w - w0
                norm = float(delta.norm())
                if norm > s.eps:
                    w.copy_(w0 + delta * (s.eps / norm))
        if step % s.every == 0:
            rows.append(row(step))
    return rows


@register_preset(
    "narrow",
    "Fewer than n neurons: a one-hidden-layer tanh net of width m = 2n/d (m < n) memorises "
    "n random +-1 labels with mirrored LeCun initialisation, the pairwise output layer and "
    "projected gradient descent (||w - w0|| <= eps); ablations: no constraint, plain init. "
    "The 'val' columns repeat the training set (what is memorised); test is chance by design.",
    "seed 004 (NeurIPS 2021 slides), Theorems 1-2 and the ablation on synthetic data.",
)
def narrow(quick: bool) -> Experiment:
    settings = NarrowSettings(n=60, d=10, steps=600, every=50, eps=2.0) if quick else NarrowSettings()
    exp = Experiment(
        "narrow",
        None,
        TaskSource(name="narrow (random labels)"),
        GrowthConfig(growths=0, every=settings.every),
        ["pgd", "gd"],
        list(NARROW_INITS),
        seeds=_seeds(quick),
        runner=narrow_run,
        strategy_choices=NARROW_METHODS,
        init_choices=NARROW_INITS,
        metric_name="accuracy",
        claims=narrow_claims,
        plot_split="train",
        settings=settings,
    )
    return exp


def narrow_claims(rows: Rows) -> list[str]:
    starts = [r for r in rows if r["event"] == "start" and r["init"] == "mirrored"]
    zero = all(abs(float(r["train_loss"]) - 0.5) < 1e-12 for r in starts)  # f = 0 and y = +-1: loss 1/2
    pgd = final(rows, "train_metric", strategy="pgd", init="mirrored")
    gd = final(rows, "train_metric", strategy="gd", init="mirrored")
    claims = [
        f"mirrored initialisation outputs 0 (start loss 1/2): {verdict(bool(starts) and zero)}",
        f"mirrored init + pairwise output + PGD memorises the random labels: "
        f"{verdict(bool(pgd) and _mean(pgd) >= 0.99)} (train accuracy {_mean(pgd):.4g})",
        f"unconstrained GD fails to memorise with this narrow width: "
        f"{verdict(bool(gd) and _mean(gd) < 0.99)} (train accuracy {_mean(gd):.4g})",
    ]
    for method, init in (("gd", "mirrored"), ("pgd", "lecun")):
        other = final(rows, "train_loss", strategy=method, init=init)
        if other:
            claims.append(
                compare_claim(
                    f"PGD + mirrored ends below {method} + {init} in training loss",
                    final(rows, "train_loss", strategy="pgd", init="mirrored"),
                    other,
                    lower=True,
                    what="train loss",
                )
            )
    return claims


# --------------------------------------------------------------------------------------------------
# senn: the natural strategy (seed 003)
# --------------------------------------------------------------------------------------------------


@register_preset(
    "senn",
    "SENN's 1-D regression (y = 2 sin(x) + x, 50 points) from one hidden tanh neuron: the natural "
    "strategy grows while the natural expansion score rises by more than its thresholds, then stops; "
    "amplitude_factor adds a neuron every round (10 growths).",
    "seed 003 (SENN paper summary), its first experiment; the SENN issue's examples.",
)
def senn(quick: bool) -> Experiment:
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
        max_rounds=3 if quick else 60,
    )
    return Experiment(
        "senn",
        spec,
        TaskSource("regression1d", n=50),
        config,
        ["natural", "amplitude_factor"],
        ["tiny"],
        seeds=_seeds(quick),
        claims=senn_claims,
        overrides={"natural": {"growths": None}},
    )


def senn_claims(rows: Rows) -> list[str]:
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
