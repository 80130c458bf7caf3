"""Built-in data sets and user data, as seeded train/validation/test splits.

- :mod:`dagrow.tasks.core`: :class:`Task`, :class:`Split`, :class:`TaskData`, the task registry
  (:data:`TASKS`, :func:`register_task`, :func:`list_tasks`, :func:`task_info`), :func:`make_task`
  and :func:`fit_task`;
- :mod:`dagrow.tasks.builtin`: the built-in generators (sin50, teacher_student, regression1d, moons,
  digits, multisin, bars), registered on import;
- :mod:`dagrow.tasks.readers`: :func:`load_data` for ``.npz`` and ``.csv`` files;
- :mod:`dagrow.tasks.catalog`: :func:`task_card` (what a task is), :func:`fitting_specs` and
  :func:`parse_task_options` (``--task-option KEY=VALUE``).

Every random draw comes from ``np.random.default_rng`` seeded by the task's ``seed``: the same seed
gives bit-identical tensors. Shapes: ``x`` float32 ``[n, *input_shape]``; ``y`` int64 ``[n]`` (class
indices) for classification, float32 ``[n, output_dim]`` for regression.
"""

from __future__ import annotations

from .builtin import bars, digits, moons, multisin, regression1d, sin50, teacher_student
from .catalog import TaskCard, card_of, fitting_specs, parse_task_options, task_card
from .core import (
    DEFAULT_FRACTIONS,
    TASKS,
    Builder,
    DataError,
    Kind,
    Split,
    SplitName,
    Task,
    TaskData,
    TaskInfo,
    build_task,
    check_seed,
    fit_task,
    list_tasks,
    make_task,
    register_task,
    task_info,
)
from .readers import MAX_INFERRED_CLASSES, load_data

__all__ = [
    "DEFAULT_FRACTIONS",
    "MAX_INFERRED_CLASSES",
    "TASKS",
    "Builder",
    "DataError",
    "Kind",
    "Split",
    "SplitName",
    "Task",
    "TaskData",
    "TaskCard",
    "TaskInfo",
    "bars",
    "build_task",
    "card_of",
    "check_seed",
    "digits",
    "fit_task",
    "fitting_specs",
    "list_tasks",
    "load_data",
    "make_task",
    "moons",
    "multisin",
    "parse_task_options",
    "regression1d",
    "register_task",
    "sin50",
    "task_card",
    "task_info",
    "teacher_student",
]
