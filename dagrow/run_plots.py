"""What a growth run leaves for people to read beside ``history.jsonl``: ``metrics.csv`` and ``growth.png``.

Both are rewritten from the history at every checkpoint
(:meth:`dagrow.checkpoint.RunDirectory.write_outputs`), so a run stopped at any moment has them up to its
last checkpoint.

- ``metrics.csv``: one row per history line with its scalar figures (:data:`FIRST_COLUMNS` first, then
  any other scalar key in the order it first appears; lists and mappings such as ``lambdas`` and
  ``config`` stay in the history only).
- ``growth.png`` (the ``plot`` extra): three panels against training steps: the training and validation
  loss, the validation metric, and the number of parameters (a step line from the starting size); every
  growth is a dashed orange line, every rollback a dotted grey one.

TensorBoard (:class:`TensorBoardLogger`, the ``tensorboard`` extra) gets the same figures as scalars.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .bundle import atomic_write, atomic_write_text

FIRST_COLUMNS = ("event", "step", "round", "growth", "site", "params", "train_loss", "val_loss")
GROWN = "#e4670c"


def grew(line: dict[str, Any]) -> bool:
    """A history line of a growth that changed the network (not a stop, a rollback or a skipped round)."""
    return line.get("event") == "growth" and bool(line.get("actions"))


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def metric_columns(history: Sequence[dict[str, Any]]) -> list[str]:
    """The columns of ``metrics.csv``: :data:`FIRST_COLUMNS` present in the history, then the others."""
    seen: dict[str, None] = {}
    for line in history:
        for key, value in line.items():
            if _scalar(value):
                seen.setdefault(key)
    return [c for c in FIRST_COLUMNS if c in seen] + [c for c in seen if c not in FIRST_COLUMNS]


def metrics_csv(history: Sequence[dict[str, Any]]) -> str:
    """The text of ``metrics.csv`` (one row per history line; empty cells where a line has no figure)."""
    columns = metric_columns(history)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for line in history:
        writer.writerow({k: v for k, v in line.items() if k in columns and _scalar(v)})
    return buffer.getvalue()


def write_metrics_csv(history: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Write :func:`metrics_csv` to ``path`` (atomically)."""
    return atomic_write_text(path, metrics_csv(history))


def _series(history: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    steps, values = [], []
    for line in history:
        value = line.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            steps.append(int(line["step"]))
            values.append(float(value))
    return steps, values


def metric_name(history: Sequence[dict[str, Any]]) -> str | None:
    """``accuracy`` or ``mse``: the validation metric the history reports (None before any)."""
    for line in history:
        for key in line:
            if key.startswith("val_") and key != "val_loss":
                return key.removeprefix("val_")
    return None


def write_growth_png(
    history: Sequence[dict[str, Any]], path: str | Path, *, start_params: int | None = None, title: str = ""
) -> Path:
    """Draw the run's loss, validation metric and parameters against steps, growths marked (atomically).

    ``start_params``: the size before the first growth (the parameter line starts there at step 0)."""
    from .drawing import _pyplot

    plt = _pyplot()
    fig, axes = plt.subplots(3, 1, figsize=(8, 7.5), sharex=True)
    loss_ax, metric_ax, params_ax = axes
    for key, label, style in (("train_loss", "train loss", "-"), ("val_loss", "validation loss", "--")):
        steps, values = _series(history, key)
        if steps:
            loss_ax.plot(steps, values, style, marker="o", ms=3, label=label)
    loss_ax.set_ylabel("loss")
    if any(_series(history, "train_loss")[1] + _series(history, "val_loss")[1]):
        loss_ax.legend(fontsize=8)
    name = metric_name(history)
    if name is not None:
        steps, values = _series(history, f"val_{name}")
        metric_ax.plot(steps, values, marker="o", ms=3, color="#2a7d4f", label=f"validation {name}")
        test_steps, test_values = _series(history, f"test_{name}")
        if test_steps:
            metric_ax.plot(test_steps, test_values, "s", color="#1f3d7a", label=f"test {name} (end)")
        metric_ax.legend(fontsize=8)
    metric_ax.set_ylabel(f"validation {name}" if name else "metric")
    steps, values = _series(history, "params")
    if start_params is not None:
        steps, values = [0, *steps], [float(start_params), *values]
    if steps:
        params_ax.step(steps, values, where="post", color="#333333")
        params_ax.plot(steps, values, "o", ms=3, color="#333333")
    params_ax.set_ylabel("parameters")
    params_ax.set_xlabel("training step")
    marked = False
    for line in history:
        if grew(line) or line.get("event") == "rollback":
            growth = grew(line)
            for ax in axes:
                ax.axvline(
                    line["step"],
                    color=GROWN if growth else "#999999",
                    ls="--" if growth else ":",
                    lw=0.9,
                    alpha=0.8,
                    label=None if marked else ("growth" if growth else "rollback"),
                )
            marked = marked or growth
    growths = sum(grew(line) for line in history)
    rollbacks = sum(line.get("event") == "rollback" for line in history)
    heading = title or "growth run"
    fig.suptitle(f"{heading}: {growths} growths, {rollbacks} rollbacks (dashed: growth)", fontsize=11)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out = atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return out


TENSORBOARD_EXTRA = "--log tensorboard needs tensorboard: pip install 'dagrow[tensorboard]'"


def require_tensorboard() -> None:
    """``ImportError`` with the install line unless tensorboard is installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as exc:
        raise ImportError(TENSORBOARD_EXTRA) from exc


class TensorBoardLogger:
    """History lines as TensorBoard scalars (``loss/train``, ``loss/val``, ``metric/val``, ``params``,
    ``growth/delta_l``, ...) under ``DIR/tensorboard``; growths and rollbacks as text."""

    SCALARS = {
        "train_loss": "loss/train",
        "val_loss": "loss/val",
        "test_loss": "loss/test",
        "params": "params",
        "gamma": "growth/gamma",
        "delta_l": "growth/delta_l",
        "first_order_improvement": "growth/first_order_improvement",
    }

    def __init__(self, log_dir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise ImportError(TENSORBOARD_EXTRA) from exc
        self.writer = SummaryWriter(str(log_dir))

    def __call__(self, line: dict[str, Any]) -> None:
        step = int(line.get("step", 0))
        for key, value in line.items():
            tag = self.SCALARS.get(key)
            if tag is None and (key.startswith("val_") or key.startswith("test_")):
                tag = f"metric/{key.split('_', 1)[0]}"
            if tag is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(tag, value, step)
        if line.get("event") in ("growth", "rollback", "stop") and line.get("site"):
            self.writer.add_text("events", f"{line['event']}: {line['site']}", step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
