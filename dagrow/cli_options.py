"""The options of `dagrow grow`, generated from :class:`~dagrow.config.GrowthConfig` and
:class:`~dagrow.config.NaturalConfig`: names, help, defaults, choices (from the registries) and help
panels. Every option defaults to None, so that a command knows which settings were given (they
override a run file, and must agree with a resumed run's)."""

from __future__ import annotations

import inspect
import typing
from typing import Annotated, Any

import typer

from .config import GrowthConfig, NaturalConfig
from .growth.proposals import INITS
from .planner import STRATEGIES
from .registry import Registry
from .schedule import SCHEDULES

SENN_PANEL = "SENN (--strategy natural)"
INPUT_PANEL = "What to grow on"
OUTPUT_PANEL = "Where it goes"
GROWTH_PANEL = "Growth"
TRAINING_PANEL = "Training"
TRAINING_FIELDS = {"optimizer", "lr", "batch_size", "final_steps", "seed", "device"}
REGISTRY_HELP: dict[str, tuple[str, Registry]] = {
    "strategy": ("where to grow", STRATEGIES),
    "init": ("initialisation of new neurons", INITS),
    "schedule": ("when to grow (default: rounds for natural, else fixed)", SCHEDULES),
}
METAVARS = {int: "N", float: "X", str: "NAME", bool: ""}
LOGS = ("tensorboard",)


def option_type(annotation: Any) -> type:
    """The CLI type of a config field: its scalar type (Literal choices and registry names are str)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Literal:
        return str
    if any(typing.get_origin(a) is typing.Literal for a in args):  # a number or a word (growth_batch)
        return str
    if args:
        return option_type(args[0])
    return annotation if annotation in (int, float, bool) else str


def config_fields() -> list[tuple[str, Any, str | None]]:
    """(name, pydantic field, help panel) of every setting, SENN's flattened."""
    rows: list[tuple[str, Any, str | None]] = [
        (n, f, TRAINING_PANEL if n in TRAINING_FIELDS else GROWTH_PANEL)
        for n, f in GrowthConfig.model_fields.items()
        if n != "natural"
    ]
    return rows + [(n, f, SENN_PANEL) for n, f in NaturalConfig.model_fields.items()]


def config_parameters() -> list[inspect.Parameter]:
    params = []
    for name, f, panel in config_fields():
        kind = option_type(f.annotation)
        choices = typing.get_args(f.annotation) if typing.get_origin(f.annotation) is typing.Literal else ()
        text = f.description or ""
        if name in REGISTRY_HELP:
            what, registry = REGISTRY_HELP[name]
            text = f"{what}: {registry.help()}"
        if choices and not text.startswith(tuple(choices)):
            text += f" ({', '.join(choices)})"
        default = f.get_default(call_default_factory=True)
        flag = "--" + name.replace("_", "-")
        decls = [f"{flag}/--no-{flag[2:]}"] if kind is bool else [flag]
        option = typer.Option(
            *decls,
            help=f"{text} (default: {default})" if "default" not in text else text,
            show_default=False,
            rich_help_panel=panel,
            metavar={"device": "DEVICE", "growth_batch": "N|all"}.get(name, METAVARS[kind]),
        )
        params.append(keyword(name, kind | None, option))
    return params


def keyword(name: str, kind: Any, option: Any, default: Any = None) -> inspect.Parameter:
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[kind, option]
    )
