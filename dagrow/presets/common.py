"""What several presets share: the chain-MLP spec, the seed count, the sin50 setting, and reading
directional claims off a run's rows (each claim is one line saying what was checked, what was measured
and whether it holds)."""

from __future__ import annotations

import math
from typing import Any

from ..compare import TaskSource
from ..config import GrowthConfig
from ..results import by_run, mean_std, paired_claim, paired_final, runs_matching
from ..spec import GraphSpec, parse_spec

Rows = list[dict[str, Any]]


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


def seed_count(quick: bool, default: int = 3) -> int:
    """Seeds per combination: one for the quick version."""
    return 1 if quick else default


def sin50_setup(quick: bool, **config: Any) -> tuple[GraphSpec, GrowthConfig, TaskSource]:
    """The thin 50-4-4-10 ReLU net, one neuron per growth with one training step between growths."""
    spec = mlp("mlp_sin50", 50, [4, 4], 10, growth={"widen": "all", "new_nodes": "none", "max_width": 256})
    schedule = GrowthConfig(growths=6 if quick else 40, every=1, batch_size=1024, growth_batch=1024, **config)
    return spec, schedule, TaskSource("sin50", n=3000 if quick else 20000)


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
        mean([r[column] for r in run[1:]])
        for run in by_run(rows).values()
        if all(run[0][k] == v for k, v in match.items())
    ]


def mean(values: list[float]) -> float:
    """The mean of the finite values given (blanks and NaN skipped); NaN when there are none."""
    return mean_std(values)[0]


def verdict(ok: bool) -> str:
    return "holds" if ok else "does NOT hold"


def compare_claim(text: str, left: list[float], right: list[float], *, lower: bool, what: str) -> str:
    """'holds' when mean(left) is below (``lower``) or above mean(right)."""
    a, b = mean(left), mean(right)
    if math.isnan(a) or math.isnan(b):
        return f"{text}: not measured (runs missing)"
    return f"{text}: {verdict(a < b if lower else a > b)} ({what} {a:.4g} vs {b:.4g})"


def ends_above(rows: Rows, contrasts: list[tuple[str, dict[str, Any], dict[str, Any]]]) -> list[str]:
    """One :func:`contrast` claim per ``(text, a, b)``: a's runs end above b's in test metric."""
    return [contrast(rows, t, "test_metric", a, b, lower=False) for t, a, b in contrasts]


def contrast(
    rows: Rows, text: str, column: str, a: dict[str, Any], b: dict[str, Any], *, lower: bool = True
) -> str:
    """``column`` of the last rows of the runs matching ``a`` and ``b``: paired over seeds
    (:func:`~dagrow.results.paired_final`) when each side has one run per seed, else the means
    (:func:`compare_claim`)."""
    what = column.replace("_metric", " " + (rows[0]["metric"] if rows else "metric")).replace("_", " ")
    one_per_seed = all(len(runs_matching(rows, **m)) == len(final(rows, column, **m)) > 0 for m in (a, b))
    if one_per_seed:
        return paired_claim(text, paired_final(rows, column, a, b, lower=lower), what)
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
