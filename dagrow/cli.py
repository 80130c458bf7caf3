"""The `dagrow` command (typer + rich): the app, the helpers every command shares, and the spec commands.

Every error is a message on stderr and exit status 1, never a traceback: spec problems as
``FILE:LINE:COL: message`` lines, other failures (weights that do not fit, unreadable files, a missing
optional extra, a bad option value) as one ``error: ...`` line.

Commands that live in other modules (:mod:`dagrow.cli_sites`, :mod:`dagrow.cli_growth`,
:mod:`dagrow.cli_tasks`, :mod:`dagrow.cli_compare`) register
themselves through their ``register(app)`` function; :func:`exit_on_error` then guards them like the
commands below.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from . import cli_compare, cli_growth, cli_sites, cli_tasks
from .activations import activation_info, list_activations
from .bundle import atomic_write_text, check_output_file, load_model_or_spec
from .compile import compile
from .graph import analyze
from .names import printable
from .norms import list_norms, norm_info
from .ops import list_ops, op_info
from .spec import GraphSpec, SpecError, json_schema

out = Console()
err = Console(stderr=True)


class _Group(TyperGroup):
    """A usage error (unknown option, bad value, missing argument) exits with status 1 like any error."""

    def make_context(self, *args, **kwargs):
        with _usage_errors_exit_1():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx):
        with _usage_errors_exit_1():
            return super().invoke(ctx)


# the click UsageError that typer raises (recent typer versions vendor click as typer._click)
_UsageError: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


@contextlib.contextmanager
def _usage_errors_exit_1() -> Iterator[None]:
    try:
        yield
    except _UsageError as exc:
        if type(exc).__name__ != "NoArgsIsHelpError":  # plain `dagrow` shows the help with click's status
            exc.exit_code = 1  # type: ignore[attr-defined]
        raise


app = typer.Typer(
    name="dagrow",
    cls=_Group,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        from . import __version__

        print(f"dagrow {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="print the version and exit"),
    ] = False,
) -> None:
    """Compile YAML DAG architectures to torch.fx and grow them while they train. `dagrow ops` lists the
    edge ops and node activations a spec can use; `dagrow list` every vocabulary; `dagrow tasks` the
    built-in tasks."""


def _print_error(line: str) -> None:
    """One line on stderr, control characters from files or arguments escaped (never raw ANSI)."""
    err.print(printable(line), highlight=False, markup=False, soft_wrap=True)


@contextlib.contextmanager
def exit_on_error() -> Iterator[None]:
    """Turn an expected failure into stderr lines and exit status 1 (a context manager or a decorator).

    :class:`SpecError` prints its ``FILE:LINE:COL: message`` diagnostics; any other ``ValueError``
    (``WeightsMismatch``, ``DataError``, ``RewriteError``, ...), ``OSError`` or ``ImportError`` (a
    missing optional extra) prints ``error: <message>``. Warnings print as ``warning: <message>``.
    """
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            yield
        except SpecError as exc:
            for line in exc.report():  # the first MAX_REPORTED, then "... and N more problems"
                _print_error(line)
            raise typer.Exit(1) from None
        except (ValueError, OSError, ImportError) as exc:
            _print_error(f"error: {exc}")
            raise typer.Exit(1) from None


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    _print_error(f"warning: {message}")


def _count(n: int, word: str) -> str:
    """``1 input``, ``2 inputs``, ``1,024 parameters``."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def _summary(path: Path, spec: GraphSpec) -> str:
    n_params = analyze(spec).num_params()
    return (
        f"{path}: ok: {spec.name}: {_count(len(spec.inputs), 'input')}, {_count(len(spec.nodes), 'node')}, "
        f"{_count(len(spec.edges), 'edge')}, {_count(n_params, 'parameter')}"
    )


@app.command()
def validate(
    sources: Annotated[list[Path], typer.Argument(metavar="SPEC...", help="specs (.yaml) or bundles")],
) -> None:
    """Check specs: a summary line each, or FILE:LINE:COL: message lines on stderr and exit status 1."""
    failed = False
    for path in sources:
        try:
            with exit_on_error():
                spec, _ = load_model_or_spec(path)
        except typer.Exit:
            failed = True  # reported; go on with the next file
            continue
        out.print(printable(_summary(path, spec)), highlight=False, markup=False, soft_wrap=True)
    if failed:
        raise typer.Exit(1)


@app.command("compile")
def compile_command(
    source: Annotated[Path, typer.Argument(metavar="SPEC", help="spec (.yaml) or bundle (.safetensors)")],
    code: Annotated[bool, typer.Option("--code", help="print the generated torch.fx code")] = False,
    params: Annotated[bool, typer.Option("--params", help="print the parameter names and shapes")] = False,
) -> None:
    """Compile a spec to a torch.fx GraphModule; print its code (the default) and/or its parameters."""
    spec, model = load_model_or_spec(source)
    model = model if model is not None else compile(spec, seed=0)
    if code or not params:
        out.print(model.code.strip(), highlight=False, markup=False, soft_wrap=True)
    if params:
        table = Table(title=Text(f"{spec.name}: {sum(p.numel() for p in model.parameters()):,} parameters"))
        table.add_column("name", no_wrap=True)
        table.add_column("shape", no_wrap=True)
        table.add_column("count", justify="right")
        for name, p in model.named_parameters():
            table.add_row(name, str(list(p.shape)), f"{p.numel():,}")
        out.print(table)


@app.command()
def schema(
    output: Annotated[Path | None, typer.Option("-o", "--output", help="write to FILE (atomically)")] = None,
    config: Annotated[
        bool, typer.Option("--config", help="the schema of run files (dagrow grow --config) instead")
    ] = False,
) -> None:
    """Print (or write) the JSON Schema of the spec language (or of run files), generated from their
    pydantic models."""
    from .config import config_schema

    if output is not None:
        check_output_file(output)
    text = json.dumps(config_schema() if config else json_schema(), indent=2) + "\n"
    if output is None:
        print(text, end="")
    else:
        atomic_write_text(output, text)


class ExportFormat(StrEnum):
    dot = "dot"
    png = "png"
    yaml = "yaml"
    pt2 = "pt2"
    onnx = "onnx"


EXPORT_HELP = (
    "dot: Graphviz text; png: a drawing (needs matplotlib: the 'plot' extra); "
    "yaml: canonical spec; pt2: torch.export program (torch.export.load); "
    "onnx: ONNX model (needs the 'onnx' extra)"
)
FILE_FORMATS = (ExportFormat.png, ExportFormat.pt2, ExportFormat.onnx)  # binary: they need -o FILE


@app.command()
def export(
    source: Annotated[Path, typer.Argument(metavar="SPEC_OR_BUNDLE", help="spec (.yaml) or bundle")],
    to: Annotated[ExportFormat, typer.Option("--to", help=EXPORT_HELP)] = ExportFormat.dot,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="output file (png needs one)")] = None,
) -> None:
    """Export an architecture as DOT text (widths on nodes, ops on edges), a PNG drawing or canonical YAML,
    or the model (a bundle's weights; a spec's seed-0 initialisation) as a torch.export program or ONNX.
    Programs take the spec's inputs in order, with a dynamic batch dimension, in the weights' dtype."""
    from .export import to_dot, write_onnx, write_png, write_pt2

    if output is not None:
        check_output_file(output)
    spec, model = load_model_or_spec(source)
    if to in FILE_FORMATS:
        if output is None:
            raise ValueError(f"--to {to} needs -o FILE.{to}")
        if to is ExportFormat.png:
            write_png(spec, output)
        else:
            model = model if model is not None else compile(spec, seed=0)
            (write_pt2 if to is ExportFormat.pt2 else write_onnx)(model, output)
        out.print(printable(f"wrote {output}"), highlight=False, markup=False, soft_wrap=True)
        return
    text = to_dot(spec) if to is ExportFormat.dot else spec.to_yaml()
    if output is None:
        print(text, end="")
    else:
        atomic_write_text(output, text)


@app.command()
def ops() -> None:
    """List the registered edge ops, node activations and norms (the registries the spec language is built
    from)."""
    ops_rows = [
        (
            n,
            _fields(op_info(n).model, "type") + (" (learned weight)" if op_info(n).parametric else ""),
            op_info(n).summary,
        )
        for n in list_ops()
    ]
    acts = [
        (n, _fields(activation_info(n).model, "name"), activation_info(n).summary) for n in list_activations()
    ]
    norms = [(n, _fields(norm_info(n).model, "type"), norm_info(n).summary) for n in list_norms()]
    for title, column, rows in (
        ("edge ops (edges: op: NAME or {type: NAME, ...})", "op", ops_rows),
        ("activations (nodes: activation: NAME or {name: NAME, ...})", "activation", acts),
        ("norms (nodes: norm: NAME or {type: NAME, ...}; applied before the activation)", "norm", norms),
    ):
        table = Table(title=title)
        table.add_column(column, no_wrap=True)
        table.add_column("parameters", no_wrap=True)
        table.add_column("what it does")
        for name, params, summary in rows:
            table.add_row(name, params, Text(summary))
        out.print(table)


@app.command("list")
def list_command(
    names: Annotated[
        list[str] | None,
        typer.Argument(metavar="[VOCABULARY]...", help="ops, activations, strategies, inits, schedules, ..."),
    ] = None,
) -> None:
    """List the entries of dagrow's vocabularies (all of them by default) with one line on each."""
    from .vocabularies import vocabulary, vocabulary_names

    for name in names or vocabulary_names():
        entries = vocabulary(name)
        table = Table(title=f"{name} ({len(entries)})", title_justify="left")
        table.add_column("name", no_wrap=True)
        table.add_column("what it is")
        for entry, summary in entries:
            table.add_row(entry, Text(summary))
        out.print(table)


def _fields(model, tag: str) -> str:
    """``kernel=3, stride=1`` from a registry model's fields and defaults (``groups`` alone when it has
    none: required)."""
    parts = [k if f.is_required() else f"{k}={f.default}" for k, f in model.model_fields.items() if k != tag]
    return ", ".join(parts) or "-"


def _register_command_modules() -> None:
    for module in (cli_sites, cli_growth, cli_tasks, cli_compare):
        module.register(app)
    for command in app.registered_commands:
        if command.callback is not None:
            command.callback = exit_on_error()(command.callback)


_register_command_modules()


def main() -> None:
    """Console entry point (``dagrow = "dagrow.cli:main"``)."""
    app()
