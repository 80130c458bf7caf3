"""What each built-in task is, for people choosing a spec: ``dagrow tasks`` and ``--task-option``.

:func:`task_card` builds a task (with its default size and the options given) and reports its input
shape, outputs, kind, split sizes and options; :func:`fitting_specs` lists the specs of a folder that
:func:`~dagrow.tasks.core.fit_task` accepts for it. :func:`parse_task_options` reads ``KEY=VALUE``
strings (``--task-option in_dim=8``) with YAML's scalars (``8`` an int, ``0.1`` a float, ``true`` a bool).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..registry import did_you_mean
from .core import DataError, Task, fit_task, make_task, task_info


@dataclass(frozen=True)
class TaskCard:
    """A built-in task described: ``outputs`` counts classes (classification) or targets (regression)."""

    name: str
    summary: str
    kind: str
    input_shape: tuple[int, ...]
    outputs: int
    loss: str
    metric: str
    sizes: tuple[int, int, int]
    options: Mapping[str, Any]
    description: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "summary": self.summary,
            "kind": self.kind,
            "input_shape": list(self.input_shape),
            "outputs": self.outputs,
            "loss": self.loss,
            "metric": self.metric,
            "train_val_test": list(self.sizes),
            "options": dict(self.options),
            "description": self.description,
        }


def card_of(task: Task, options: Mapping[str, Any]) -> TaskCard:
    info = task_info(task.name)
    return TaskCard(
        task.name,
        info.summary,
        task.kind,
        task.input_shape,
        task.output_dim,
        task.loss,
        task.metric_name,
        (len(task.train), len(task.val), len(task.test)),
        {**info.options, **options},
        task.description,
    )


def task_card(name: str, **options: Any) -> TaskCard:
    """The card of the built-in task ``name`` built with ``options`` (seed 0, default size)."""
    return card_of(make_task(name, seed=0, **options), options)


def fitting_specs(task: Task, paths: Iterable[Path]) -> list[Path]:
    """The specs among ``paths`` that ``task`` fits (one input and one output of its shapes); specs that
    do not load are left out."""
    from ..spec import SpecError, load_spec

    fits = []
    for path in paths:
        try:
            fit_task(task, load_spec(path))
        except (SpecError, DataError, OSError):
            continue
        fits.append(path)
    return fits


def parse_task_options(items: Iterable[str] | None, task: str | None = None) -> dict[str, Any]:
    """``{"in_dim": 8}`` from ``["in_dim=8"]``; a malformed item or an option the task does not have
    is a ``ValueError`` naming it (with a "did you mean" and the task's options)."""
    options: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ValueError(f"--task-option {item!r}: write KEY=VALUE, for example in_dim=8")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text
        if not isinstance(value, (int, float, bool, str)):
            raise ValueError(f"--task-option {item!r}: the value must be a number, true/false or a word")
        options[key] = value
    if task is not None and options:
        known = list(task_info(task).options)
        for key in options:
            if key not in known:
                raise ValueError(
                    f"task {task!r} has no option {key!r}{did_you_mean(key, known)}; "
                    f"its options: {', '.join(known) or 'none'}"
                )
    return options
