"""The rows of ``dagrow compare`` as tables: results.csv (written and read back), rows grouped by run and
by strategy x init, means with their spread, parameter budgets, and summary.md.

Rows (one per run and growth step, plus the initial model and the end) have the columns
:data:`COLUMNS`.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .bundle import atomic_write_text

if TYPE_CHECKING:
    from .compare import Experiment

COLUMNS = [
    "run",
    "kind",
    "strategy",
    "init",
    "seed",
    "growth",
    "step",
    "event",
    "site",
    "parameters",
    "train_loss",
    "train_metric",
    "val_loss",
    "val_metric",
    "test_loss",
    "test_metric",
    "metric",
    "seconds",
    "loss_before",
    "loss_after",
    "decision_seconds",
]


def write_results(out: Path, rows: Iterable[dict[str, Any]]) -> Path:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(out / "results.csv", buf.getvalue())


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a results.csv with numbers parsed (empty cells stay '')."""
    with open(path, encoding="utf-8", newline="") as fh:
        return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def _number(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


# --------------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------------


def by_run(rows: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    runs: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        runs.setdefault(r["run"], []).append(r)
    return runs


def group_label(kind: str, strategy: str, init: str) -> str:
    """``strategy / init`` for a growth run, ``static LABEL`` for a baseline."""
    return f"static {init}" if kind == "static" else f"{strategy} / {init}"


def groups(rows: Iterable[dict[str, Any]]) -> dict[str, list[list[dict[str, Any]]]]:
    """Runs (lists of rows) by group label (``strategy / init`` or ``static LABEL``), in first-seen order."""
    out: dict[str, list[list[dict[str, Any]]]] = {}
    for run in by_run(rows).values():
        r = run[0]
        out.setdefault(group_label(r["kind"], r["strategy"], r["init"]), []).append(run)
    return out


def mean_std(values: list[float]) -> tuple[float, float]:
    vals = [float(v) for v in values if v != "" and not math.isnan(float(v))]
    if not vals:
        return math.nan, math.nan
    m = sum(vals) / len(vals)
    return m, math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0


def plus_minus(values: list[float], digits: int = 4) -> str:
    m, s = mean_std(values)
    return "-" if math.isnan(m) else f"{m:.{digits}g} ± {s:.2g}"


def trained(run: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A run's rows after its untrained start (at a given size, the start is not what that size reaches)."""
    return [r for r in run if r["event"] != "start"] or run


def at_budget(run: list[dict[str, Any]], budget: float) -> dict[str, Any] | None:
    """The last row after the start with at most ``budget`` parameters (None if there is none)."""
    within = [r for r in trained(run) if r["parameters"] <= budget and r["test_metric"] != ""]
    return within[-1] if within else None


def budgets(rows: list[dict[str, Any]], count: int = 4) -> list[int]:
    """Parameter budgets that every growth run reaches: the static baselines' sizes in that range and up to
    ``count`` sizes that every run went through, else geometric steps from the largest first size after
    the start to the smallest final size."""
    grown = [run for g, runs in groups(rows).items() if not g.startswith("static") for run in runs]
    if not grown:
        return []
    lo = max(trained(run)[0]["parameters"] for run in grown)
    hi = min(max(r["parameters"] for r in run) for run in grown)
    statics = {r["parameters"] for r in rows if r["kind"] == "static" and lo <= r["parameters"] <= hi}
    common = sorted(set.intersection(*({r["parameters"] for r in trained(run)} for run in grown)))
    if common or statics:  # sizes every run went through: no run is judged before it reached the budget
        last = len(common) - 1
        picks = [common[round(i * last / max(count - 1, 1))] for i in range(count)] if common else []
        return sorted({int(p) for p in [*picks, *statics]})
    if hi <= lo:
        return [int(hi)]
    return sorted({round(lo * (hi / lo) ** (i / (count - 1))) for i in range(count)})


# --------------------------------------------------------------------------------------------------
# Curves compared at matched budgets: the area under metric-vs-parameters, paired over seeds
# --------------------------------------------------------------------------------------------------

Curve = list[tuple[float, float]]


def curve(run: list[dict[str, Any]], column: str = "test_metric") -> Curve:
    """(parameters, ``column``) of a run's evaluated rows in increasing size; at a size the run held for
    several rows, the last one (what training at that size reached), so the untrained start counts only
    until the run trained at its first size."""
    last: dict[float, float] = {}
    for r in run:
        if r[column] != "" and r["parameters"] != "":
            v = float(r[column])
            if not math.isnan(v):
                last[float(r["parameters"])] = v
    return sorted(last.items())


def common_range(curves: Iterable[Curve]) -> tuple[float, float] | None:
    """[max of the curves' first sizes, min of their last sizes]: the sizes every curve covers (None
    when some curve is empty or they do not overlap)."""
    curves = list(curves)
    if not curves or any(not c for c in curves):
        return None
    lo, hi = max(c[0][0] for c in curves), min(c[-1][0] for c in curves)
    return (lo, hi) if lo <= hi else None


def interpolate(c: Curve, p: float) -> float:
    """The piecewise-linear curve through ``c`` at size ``p`` (within its range)."""
    xs = [x for x, _ in c]
    if not xs[0] <= p <= xs[-1]:
        raise ValueError(f"size {p} is outside the curve's range {xs[0]}..{xs[-1]}")
    for (x0, y0), (x1, y1) in zip(c, c[1:], strict=False):
        if x0 <= p <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (p - x0) / (x1 - x0)
    return c[0][1]  # a curve of one point


def mean_over(c: Curve, lo: float, hi: float) -> float:
    """The area under the piecewise-linear curve on [lo, hi] divided by hi - lo: the curve's mean over
    that parameter range (exact: the trapezoid rule on a grid holding every knot); its value at ``lo``
    when the range is one size."""
    if hi == lo:
        return interpolate(c, lo)
    grid = sorted({lo, hi, *(x for x, _ in c if lo < x < hi)})
    ys = [interpolate(c, x) for x in grid]
    area = sum((x1 - x0) * (y0 + y1) / 2 for x0, x1, y0, y1 in zip(grid, grid[1:], ys, ys[1:], strict=False))
    return area / (hi - lo)


def runs_matching(rows: Iterable[dict[str, Any]], **match: Any) -> dict[int, list[dict[str, Any]]]:
    """The runs whose first row matches ``match``, by seed."""
    return {
        int(run[0]["seed"]): run
        for run in by_run(rows).values()
        if all(run[0][k] == v for k, v in match.items())
    }


@dataclass
class Paired:
    """Per-seed values of two arms, their paired differences ``a - b`` and what they say."""

    a: dict[int, float]
    b: dict[int, float]
    lower: bool  # a is better when lower
    where: str = ""  # the parameter range of an area, as text

    @property
    def seeds(self) -> list[int]:
        return sorted(set(self.a) & set(self.b))

    @property
    def differences(self) -> list[float]:
        return [self.a[s] - self.b[s] for s in self.seeds]

    @property
    def mean_difference(self) -> float:
        return mean_std(self.differences)[0]

    @property
    def standard_error(self) -> float:
        d = self.differences
        return mean_std(d)[1] / math.sqrt(len(d)) if len(d) > 1 else math.nan

    @property
    def wins(self) -> int:
        """Seeds where a is better than b."""
        return sum(d < 0 if self.lower else d > 0 for d in self.differences)

    @property
    def holds(self) -> bool:
        m = self.mean_difference
        return not math.isnan(m) and (m < 0 if self.lower else m > 0)

    @property
    def separated(self) -> bool:
        """The mean difference is more than two standard errors away from 0."""
        se = self.standard_error
        return not math.isnan(se) and abs(self.mean_difference) > 2 * se

    def describe(self) -> str:
        """``0.48 vs 0.36; paired difference +0.12 ± 0.02 (s.e.), better in 8 of 8 seeds``."""
        n = len(self.seeds)
        if not n:
            return "not measured (no seed has both runs)"
        ma = mean_std([self.a[s] for s in self.seeds])[0]
        mb = mean_std([self.b[s] for s in self.seeds])[0]
        se = self.standard_error
        spread = f" ± {se:.2g} (s.e.)" if not math.isnan(se) else ""
        sep = (
            ""
            if math.isnan(se)
            else ("; more than 2 s.e. from 0" if self.separated else "; within 2 s.e. of 0")
        )
        return (
            f"{ma:.4g} vs {mb:.4g}; paired difference {self.mean_difference:+.3g}{spread}{sep}, "
            f"better in {self.wins} of {n} seeds"
        )


def paired_final(
    rows: list[dict[str, Any]], column: str, a: dict[str, Any], b: dict[str, Any], *, lower: bool
) -> Paired:
    """``column`` of the last row of each run matching ``a`` and ``b``, paired by seed."""
    ra, rb = runs_matching(rows, **a), runs_matching(rows, **b)
    fa = {s: float(run[-1][column]) for s, run in ra.items() if run[-1][column] != ""}
    fb = {s: float(run[-1][column]) for s, run in rb.items() if run[-1][column] != ""}
    return Paired(fa, fb, lower)


def paired_area(
    rows: list[dict[str, Any]], column: str, a: dict[str, Any], b: dict[str, Any], *, lower: bool
) -> Paired:
    """Each run's mean of ``column`` over the parameter range every run of ``a`` and ``b`` covers (the
    area under its metric-vs-parameters curve divided by the range), paired by seed."""
    ra, rb = runs_matching(rows, **a), runs_matching(rows, **b)
    curves = {("a", s): curve(run, column) for s, run in ra.items()}
    curves |= {("b", s): curve(run, column) for s, run in rb.items()}
    span = common_range(curves.values())
    if span is None:
        return Paired({}, {}, lower, "no common parameter range")
    lo, hi = span
    means = {k: mean_over(c, lo, hi) for k, c in curves.items()}
    return Paired(
        {s: v for (arm, s), v in means.items() if arm == "a"},
        {s: v for (arm, s), v in means.items() if arm == "b"},
        lower,
        f"{lo:,.0f}..{hi:,.0f} parameters",
    )


def paired_claim(text: str, paired: Paired, what: str) -> str:
    """``TEXT: holds (WHAT over RANGE: a vs b; paired difference ..., better in n of N seeds)``."""
    where = f" over {paired.where}" if paired.where else ""
    if not paired.seeds:
        return f"{text}: not measured ({paired.where or 'runs missing'})"
    verdict = "holds" if paired.holds else "does NOT hold"
    return f"{text}: {verdict} ({what}{where}: {paired.describe()})"


def _growths(config: Any) -> str:
    """``10 growths``, ``growths up to 2,000 parameters`` or both."""
    parts = [f"{config.growths} growths"] if config.growths is not None else []
    if config.max_params is not None:
        parts.append(f"up to {config.max_params:,} parameters")
    return ", ".join(parts) or "growths until the strategy stops"


def summary_markdown(exp: Experiment, rows: list[dict[str, Any]], claims: Iterable[str] = ()) -> str:
    metric = rows[0]["metric"] if rows else (exp.metric_name or "metric")
    grouped = groups(rows)
    lines = [f"# {exp.name}", ""]
    if exp.description:
        lines += [exp.description, ""]
    lines += [
        f"{exp.task.describe()}; metric: {metric}; {exp.seeds} seed(s); "
        f"strategies {', '.join(exp.strategies)}; inits {', '.join(exp.inits)}; "
        f"every {exp.config.every} steps, {_growths(exp.config)}, optimizer {exp.config.optimizer}, "
        f"lr {exp.config.lr}.",
        "",
        "Mean ± standard deviation over seeds.",
        "",
        "## At the end",
        "",
        "`seconds`: the run's wall time; `growth s`: the part its growth decisions took (statistics,",
        "proposals, amplitude searches).",
        "",
        f"| run | runs | parameters | train loss | val {metric} | test {metric} | seconds | growth s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, runs in grouped.items():
        ends = [run[-1] for run in runs]
        decisions = [sum(float(r.get("decision_seconds") or 0) for r in run) for run in runs]
        lines.append(
            f"| {label} | {len(runs)} | "
            + " | ".join(
                plus_minus([e[c] for e in ends], 5 if c == "parameters" else 4)
                for c in ("parameters", "train_loss", "val_metric", "test_metric", "seconds")
            )
            + f" | {plus_minus(decisions, 3) if any(decisions) else '-'} |"
        )
    grown = {g: runs for g, runs in grouped.items() if not g.startswith("static")}
    span = common_range(curve(run) for runs in grown.values() for run in runs)
    if len(grown) > 1 and span is not None:
        lo, hi = span
        lines += [
            "",
            f"## Mean test {metric} over {lo:,.0f}..{hi:,.0f} parameters",
            "",
            "The area under each run's test-metric-vs-parameters curve (piecewise linear, the last",
            "evaluation at each size) over the range every growth run covers, divided by its width.",
            "",
            f"| run | runs | mean test {metric} |",
            "|---|---|---|",
        ]
        for label, runs in grown.items():
            lines.append(
                f"| {label} | {len(runs)} | {plus_minus([mean_over(curve(r), lo, hi) for r in runs])} |"
            )
    marks = budgets(rows)
    if marks:
        lines += [
            "",
            f"## Test {metric} at matched parameter budgets",
            "",
            "Each run's last evaluation with at most that many parameters.",
            "",
            "| run | " + " | ".join(f"≤ {b:,}" for b in marks) + " |",
            "|---|" + "---|" * len(marks),
        ]
        for label, runs in grouped.items():
            cells = []
            for b in marks:
                hits = [at_budget(run, b) for run in runs]
                vals = [h["test_metric"] for h in hits if h is not None]
                cells.append(
                    plus_minus(vals) + ("" if len(vals) == len(runs) else f" ({len(vals)}/{len(runs)})")
                )
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    claims = list(claims)
    if claims:
        lines += ["", "## Claims", ""] + [f"- {c}" for c in claims]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# Plots (matplotlib: the optional 'plot' extra)
# --------------------------------------------------------------------------------------------------
