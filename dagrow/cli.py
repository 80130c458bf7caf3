"""The `dagrow` command (typer + rich). Every error is a message on stderr and exit status 1."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from .bundle import atomic_write_text, read_bundle
from .compile import WeightsMismatch, compile
from .graph import analyze
from .ops import activation_info, list_activations, list_ops, op_info
from .rewrite import RewriteError
from .spec import GraphSpec, SpecError, json_schema, load_spec
from .stats import StatsError
from .tasks import DataError

app = typer.Typer(
    name="dagrow",
    help="Grow neural networks defined as YAML DAGs while they train.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)


def load_spec_or_bundle(path: Path) -> tuple[GraphSpec, dict | None]:
    """A spec (.yaml/.yml/.json) or a bundle (.safetensors) with its weights."""
    if path.suffix == ".safetensors":
        return read_bundle(path)
    return load_spec(path), None


def _spec_problems(path: Path) -> tuple[GraphSpec | None, list[str]]:
    try:
        return load_spec_or_bundle(path)[0], []
    except SpecError as exc:
        return None, [str(d) for d in exc.diagnostics]


@app.command()
def validate(specs: Annotated[list[Path], typer.Argument(help="spec files (.yaml) or bundles")]) -> None:
    """Check specs: one summary line each, or FILE:LINE:COL: message lines on stderr (exit 1)."""
    failed = False
    for path in specs:
        spec, problems = _spec_problems(path)
        if problems:
            failed = True
            for line in problems:
                err.print(line, highlight=False, markup=False, soft_wrap=True)
            continue
        sg = analyze(spec)  # type: ignore[arg-type]
        out.print(f"{path}: ok: {spec.name}: {len(spec.inputs)} inputs, {len(spec.nodes)} nodes, "  # type: ignore[union-attr]
                  f"{len(spec.edges)} edges, {sg.num_params():,} parameters", highlight=False, markup=False,
                  soft_wrap=True)
    if failed:
        raise typer.Exit(1)


@app.command("compile")
def compile_command(
    source: Annotated[Path, typer.Argument(help="spec (.yaml) or bundle (.safetensors)")],
    code: Annotated[bool, typer.Option("--code", help="print the generated torch.fx code")] = False,
    params: Annotated[bool, typer.Option("--params", help="table of parameter names and shapes")] = False,
) -> None:
    """Compile a spec to a torch.fx GraphModule and show its code and/or parameters."""
    spec, weights = load_spec_or_bundle(source)
    model = compile(spec, weights)
    if code or not params:
        out.print(model.code.strip(), highlight=False, markup=False)
    if params:
        table = Table(title=f"{spec.name}: parameters")
        table.add_column("name")
        table.add_column("shape")
        table.add_column("count", justify="right")
        for name, p in model.named_parameters():
            table.add_row(name, str(list(p.shape)), f"{p.numel():,}")
        out.print(table)


@app.command()
def schema(
    output: Annotated[Path | None, typer.Option("-o", "--output", help="write to FILE")] = None,
) -> None:
    """Print (or write) the JSON Schema of the spec language."""
    text = json.dumps(json_schema(), indent=2) + "\n"
    if output is None:
        print(text, end="")
    else:
        atomic_write_text(output, text)


EXPORT_FORMATS = ("dot", "png", "yaml")


@app.command()
def export(
    source: Annotated[Path, typer.Argument(help="spec (.yaml) or bundle (.safetensors)")],
    to: Annotated[str, typer.Option("--to", help="dot, png or yaml")] = "dot",
    output: Annotated[Path | None, typer.Option("-o", "--output", help="output file (png needs one)")] = None,
) -> None:
    """Export an architecture as DOT text, a PNG drawing or canonical YAML."""
    from .export import to_dot, write_png

    if to not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {to!r}; expected one of {', '.join(EXPORT_FORMATS)}")
    spec, _ = load_spec_or_bundle(source)
    if to == "png":
        if output is None:
            raise ValueError("--to png needs -o FILE.png")
        write_png(spec, output)
        out.print(f"wrote {output}", highlight=False)
        return
    text = to_dot(spec) if to == "dot" else spec.to_yaml()
    if output is None:
        print(text, end="")
    else:
        atomic_write_text(output, text)


@app.command()
def ops() -> None:
    """List the registered edge ops and node activations."""
    table = Table(title="edge ops")
    table.add_column("op")
    table.add_column("parametric")
    table.add_column("what it does")
    for name in list_ops():
        info = op_info(name)
        table.add_row(name, "yes" if info.parametric else "no", info.summary)
    out.print(table)
    table = Table(title="activations")
    table.add_column("activation")
    table.add_column("what it does")
    for name in list_activations():
        table.add_row(name, activation_info(name).summary)
    out.print(table)


def _register_growth_commands() -> None:
    from .cli_growth import register

    register(app)


_register_growth_commands()

ERRORS = (SpecError, WeightsMismatch, RewriteError, StatsError, DataError, ValueError, OSError, ImportError)


def _guard(func):
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except SpecError as exc:
            for d in exc.diagnostics:
                err.print(str(d), highlight=False, markup=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except ERRORS as exc:
            err.print(f"error: {exc}", highlight=False, markup=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


for _command in app.registered_commands:
    _command.callback = _guard(_command.callback)


def main() -> None:
    app()
