"""The plots of ``dagrow compare`` (matplotlib, the optional ``plot`` extra): the metric against the
parameters with every group's band and the static baselines' frontier, and the loss against the steps.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .bundle import atomic_write
from .results import groups, mean_std


def _value_at(run: list[dict[str, Any]], x: str, y: str, at: float) -> float:
    """The run's last ``y`` with ``x <= at`` (nan outside the run's range)."""
    pts = [r for r in run if r[y] != ""]
    if not pts or at < pts[0][x] or at > pts[-1][x]:
        return math.nan
    return float([r for r in pts if r[x] <= at][-1][y])


def band(runs: list[list[dict[str, Any]]], x: str, y: str) -> tuple[list[float], list[float], list[float]]:
    """(grid, mean, std) of ``y`` against ``x`` over runs, each run a step function of ``x``, where every
    run has a value: the curve stops where its shortest run ends, so each point averages every seed
    (a mean over only the seeds that grew furthest would jump at the ends)."""
    grid = sorted({r[x] for run in runs for r in run if r[y] != ""})
    values = [[_value_at(run, x, y, at) for run in runs] for at in grid]
    kept = [(at, vs) for at, vs in zip(grid, values, strict=True) if not any(math.isnan(v) for v in vs)]
    grid = [at for at, _ in kept] or grid
    means, stds = [], []
    for vs in [vs for _, vs in kept] or values:
        m, s = mean_std([v for v in vs if not math.isnan(v)])
        means.append(m)
        stds.append(s)
    return grid, means, stds


def _spans_decades(values: list[float]) -> bool:
    pos = [v for v in values if v > 0 and not math.isnan(v)]
    return bool(pos) and max(pos) / min(pos) >= 10


def _figure():
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    return fig, fig.add_subplot()


def _save(fig, path: Path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))


def _plot_band(ax, runs: list[list[dict[str, Any]]], x: str, y: str, label: str) -> None:
    grid, m, s = band(runs, x, y)
    style = {"ls": "--" if label.startswith("static") else "-", "marker": "." if len(grid) < 40 else None}
    (line,) = ax.plot(grid, m, label=f"{label} (n={len(runs)})", **style)
    # a band of a positive quantity (loss, mse) that would reach 0 is cut at a tenth of the mean (log axes)
    positive = all(r[y] == "" or float(r[y]) > 0 for run in runs for r in run)
    lo = [a - b if a - b > 0 or not positive else a / 10 for a, b in zip(m, s, strict=True)]
    hi = [a + b for a, b in zip(m, s, strict=True)]
    ax.fill_between(grid, lo, hi, color=line.get_color(), alpha=0.2)


def _frontier(ax, grouped: dict[str, list[list[dict[str, Any]]]]) -> None:
    """The static baselines' final (parameters, test metric) as one dashed black line with error bars."""
    pts = []
    for label, runs in grouped.items():
        if label.startswith("static"):
            ends = [run[-1] for run in runs]
            m, s = mean_std([e["test_metric"] for e in ends])
            pts.append((mean_std([e["parameters"] for e in ends])[0], m, s, label.removeprefix("static ")))
    if not pts:
        return
    pts.sort()
    xs, ys, errs, names = zip(*pts, strict=True)
    ax.errorbar(
        xs,
        ys,
        yerr=errs,
        color="black",
        ls="--",
        marker="s",
        capsize=3,
        label="static baselines, trained from scratch",
    )
    for px, py, name in zip(xs, ys, names, strict=True):
        ax.annotate(name, (px, py), textcoords="offset points", xytext=(4, -10), fontsize=7)


def _finish(ax, fig, path: Path, title: str) -> None:
    ax.set_title(title + (": mean ± std over seeds" if title else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_metric(rows: list[dict[str, Any]], path: Path, title: str = "", split: str = "test") -> None:
    """The ``split``'s metric against parameters (against steps when no run changes size): a line and a
    band over seeds per growth group, the static baselines as a frontier."""
    grouped = groups(rows)
    col = f"{split}_metric"
    fixed = all(len({r["parameters"] for r in run}) == 1 for runs in grouped.values() for run in runs)
    x = "step" if fixed else "parameters"
    fig, ax = _figure()
    for label, runs in grouped.items():
        if x == "step":
            _plot_band(ax, runs, x, col, label)
        elif not label.startswith("static"):  # from the untrained start, then each size as trained
            _plot_band(ax, runs, x, col, label)
    if x == "parameters":
        _frontier(ax, grouped)
    if x == "parameters" and _spans_decades([r[x] for r in rows]):
        ax.set_xscale("log")
    if rows[0]["metric"] == "mse" and _spans_decades([r[col] for r in rows if r[col] != ""]):
        ax.set_yscale("log")
    ax.set_xlabel("number of parameters" if x == "parameters" else "training steps")
    ax.set_ylabel(f"{split} {rows[0]['metric']}")
    _finish(ax, fig, path, title)


def plot_loss(rows: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Training loss (whole train split) against training steps, a band over seeds per group."""
    fig, ax = _figure()
    for label, runs in groups(rows).items():
        _plot_band(ax, runs, "step", "train_loss", label)
    if _spans_decades([r["train_loss"] for r in rows if r["train_loss"] != ""]):
        ax.set_yscale("log")
    ax.set_xlabel("training steps")
    ax.set_ylabel("training loss (whole train split)")
    _finish(ax, fig, path, title)


def write_plots(out: Path, rows: list[dict[str, Any]], title: str = "", split: str = "test") -> list[Path]:
    """DIR/metric_vs_params.png (the ``split``'s metric) and DIR/loss_vs_steps.png (ImportError without
    matplotlib)."""
    import matplotlib  # noqa: F401 - fail early with ImportError when the extra is missing

    if not rows:
        return []
    paths = [out / "metric_vs_params.png", out / "loss_vs_steps.png"]
    plot_metric(rows, paths[0], title, split)
    plot_loss(rows, paths[1], title)
    return paths
