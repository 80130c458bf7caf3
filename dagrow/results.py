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


def summary_markdown(exp: Experiment, rows: list[dict[str, Any]], claims: Iterable[str] = ()) -> str:
    metric = rows[0]["metric"] if rows else (exp.metric_name or "metric")
    grouped = groups(rows)
    lines = [f"# {exp.name}", ""]
    if exp.description:
        lines += [exp.description, ""]
    lines += [
        f"{exp.task.describe()}; metric: {metric}; {exp.seeds} seed(s); "
        f"strategies {', '.join(exp.strategies)}; inits {', '.join(exp.inits)}; "
        f"every {exp.config.every} steps, {exp.config.growths} growths, optimizer {exp.config.optimizer}, "
        f"lr {exp.config.lr}.",
        "",
        "Mean ± standard deviation over seeds.",
        "",
        "## At the end",
        "",
        f"| run | runs | parameters | train loss | val {metric} | test {metric} | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, runs in grouped.items():
        ends = [run[-1] for run in runs]
        lines.append(
            f"| {label} | {len(runs)} | "
            + " | ".join(
                plus_minus([e[c] for e in ends], 5 if c == "parameters" else 4)
                for c in ("parameters", "train_loss", "val_metric", "test_metric", "seconds")
            )
            + " |"
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
