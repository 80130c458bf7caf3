"""What every growth command of the CLI shares: the consoles, the one-line errors (exit status 1), the
task or data set of a command checked against its spec, and choices checked against a registry."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.text import Text

from .names import printable
from .registry import unknown_name_message
from .tasks import DataError, Task, fit_task, list_tasks, load_data, make_task

out = Console()
err = Console(stderr=True)


def error_line(message: str) -> None:
    err.print(Text.assemble(("error:", "red"), " " + printable(message)), highlight=False, soft_wrap=True)


def fail(message: str) -> NoReturn:
    error_line(message)
    raise typer.Exit(1)


def task_for(
    task: str | None, data: Path | None, seed: int, source: Path, spec, options: dict[str, Any] | None = None
) -> Task:
    """The task (with its ``options``) or data set, checked against the spec (errors name the spec file)."""
    if (task is None) == (data is None):
        fail("give exactly one of --task NAME or --data FILE")
    if data is not None and options:
        fail("--task-option goes with --task, not with --data")
    if task is not None:
        the_task = make_task(task, seed=seed, **(options or {}))
    else:
        the_task = load_data(data, seed=seed)  # type: ignore[arg-type]
    try:
        return fit_task(the_task, spec)
    except DataError as exc:
        raise DataError(f"{source}: {exc}") from None


def check_choice(value: str, choices, what: str) -> str:
    if value not in choices:
        fail(unknown_name_message(what, value, choices))
    return value


TASK_HELP = "built-in task: " + ", ".join(list_tasks())
