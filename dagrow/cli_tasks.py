"""`dagrow tasks`: the built-in tasks with their shapes, sizes and the shipped specs that fit them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from .tasks import TaskCard, card_of, fitting_specs, list_tasks, make_task, parse_task_options, task_info

out = Console()

TASK_OPTION_HELP = "a task option KEY=VALUE (repeatable; `dagrow tasks` lists each task's options)"


def default_specs_folder() -> Path:
    """``./specs`` when it exists, else the ``specs/`` folder beside the installed package's source."""
    here = Path("specs")
    return here if here.is_dir() else Path(__file__).resolve().parent.parent / "specs"


def tasks_command(
    names: Annotated[
        list[str] | None, typer.Argument(metavar="[TASK]...", help="tasks to describe (default: all)")
    ] = None,
    task_option: Annotated[list[str] | None, typer.Option("--task-option", help=TASK_OPTION_HELP)] = None,
    specs: Annotated[
        Path | None, typer.Option(help="folder of specs to check against each task (default: ./specs)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON list")] = False,
) -> None:
    """List the built-in tasks: input shape, outputs, kind, train/val/test sizes, options, description
    and the specs (of ./specs) that fit each one."""
    wanted = [task_info(n).name for n in names] if names else list_tasks()
    if task_option and len(wanted) != 1:
        raise ValueError("--task-option goes with one TASK")
    folder = specs if specs is not None else default_specs_folder()
    paths = sorted(folder.glob("*.yaml")) if folder.is_dir() else []
    cards = []
    for name in wanted:
        options = parse_task_options(task_option, name)
        task = make_task(name, seed=0, **options)
        cards.append((card_of(task, options), [p.name for p in fitting_specs(task, paths)]))
    if as_json:
        print(json.dumps([{**c.to_dict(), "specs": s} for c, s in cards], indent=2))
        return
    for card, fits in cards:
        for line in task_lines(card, fits):
            out.print(line, highlight=False, markup=False, soft_wrap=True)


def task_lines(card: TaskCard, fits: list[str]) -> list[str]:
    """The lines `dagrow tasks` prints for a task (a blank line after them)."""
    what = ("class" if card.kind == "classification" else "target") + (
        "es" if card.kind == "classification" else "s"
    )
    what = what if card.outputs != 1 else what.removesuffix("es" if card.kind == "classification" else "s")
    options = ", ".join(f"{k}={v}" for k, v in card.options.items()) or "none"
    return [
        f"{card.name}: {card.summary}",
        f"  input {list(card.input_shape)} -> {card.outputs} {what}; {card.kind} ({card.loss} loss, "
        f"{card.metric})",
        f"  train/val/test {'/'.join(str(s) for s in card.sizes)}; options: {options}",
        f"  specs that fit: {', '.join(fits) or 'none'}",
        f"  {card.description}",
        "",
    ]


def register(app: typer.Typer) -> None:
    app.command("tasks")(tasks_command)
