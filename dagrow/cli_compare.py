"""`dagrow compare`: strategies x inits x seeds on a spec and a task, or one of the seeds' presets."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from .compare import Experiment, RunKey, TaskSource, run_experiment
from .config import GrowthConfig, parse_config
from .growth.proposals import INITS
from .names import printable
from .planner import STRATEGIES
from .presets import PRESETS, make_preset
from .spec import load_spec
from .tasks import list_tasks

out = Console()
err = Console(stderr=True)

PRESET_HELP = "a seed's experiment: " + ", ".join(PRESETS) + " (sources and results: docs/results.md)"


def _names(text: str | None) -> list[str] | None:
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


def static_labels(paths: list[Path], taken: set[str] = frozenset()) -> dict[str, Path]:  # type: ignore[assignment]
    """A distinct label per ``--static`` file: its stem, or, where stems collide (``a/base.yaml`` and
    ``b/base.yaml``) or a label is already taken, the stem with as many parent folders as tell them apart
    (``a-base``, ``b-base``). The same file twice is an error."""
    resolved = [p.resolve() for p in paths]
    for i, r in enumerate(resolved):
        if r in resolved[:i]:
            raise ValueError(f"--static {paths[i]} is given twice")

    def label(i: int, depth: int) -> str:
        parts = [*resolved[i].parent.parts[1:], resolved[i].stem][-depth:]
        return "-".join(parts)

    labels: dict[str, Path] = {}
    for i, path in enumerate(paths):
        for depth in range(1, len(resolved[i].parts) + 1):
            mine = label(i, depth)
            others = {label(j, depth) for j in range(len(paths)) if j != i}
            if mine not in others and mine not in taken:
                break
        labels[mine] = path
    return labels


def _spec_experiment(
    spec_path: Path,
    task: str | None,
    data: Path | None,
    strategies: list[str] | None,
    inits: list[str] | None,
    seeds: int | None,
    statics: list[Path],
    config: GrowthConfig,
    quick: bool,
) -> Experiment:
    if (task is None) == (data is None):
        raise ValueError("with a SPEC give exactly one of --task NAME or --data FILE")
    spec = load_spec(spec_path)
    source = TaskSource(name=task) if task is not None else TaskSource(data=str(data))
    return Experiment(
        spec.name,
        spec,
        source,
        config,
        strategies or list(STRATEGIES),
        inits or ["tiny"],
        seeds=seeds if seeds is not None else (1 if quick else 3),
        statics={label: load_spec(p) for label, p in static_labels(statics).items()},
    )


def compare_command(
    spec: Annotated[Path | None, typer.Argument(metavar="[SPEC]", help="spec (.yaml) to grow")] = None,
    task: Annotated[str | None, typer.Option(help="built-in task: " + ", ".join(list_tasks()))] = None,
    data: Annotated[Path | None, typer.Option(help="user data: .npz with x and y, or .csv")] = None,
    preset: Annotated[str | None, typer.Option(help=PRESET_HELP)] = None,
    strategies: Annotated[
        str | None,
        typer.Option(help="comma-separated: " + ", ".join(STRATEGIES) + " (default: all, or the preset's)"),
    ] = None,
    inits: Annotated[
        str | None,
        typer.Option(help="comma-separated: " + ", ".join(INITS) + " (default: tiny, or the preset's)"),
    ] = None,
    seeds: Annotated[int | None, typer.Option(help="seeds 0..N-1 per combination (default 3)")] = None,
    jobs: Annotated[int, typer.Option(help="runs in parallel (spawned processes)")] = 1,
    quick: Annotated[bool, typer.Option("--quick", help="the preset's small version (SPEC: 1 seed)")] = False,
    static: Annotated[list[Path] | None, typer.Option(help="static baseline spec (repeatable)")] = None,
    growths: Annotated[int, typer.Option(help="SPEC only: growth steps")] = 10,
    every: Annotated[int, typer.Option(help="SPEC only: training steps between growths")] = 200,
    neurons: Annotated[int, typer.Option(help="SPEC only: neurons per growth")] = 1,
    optimizer: Annotated[str, typer.Option(help="SPEC only: sgd, adam or best_update")] = "adam",
    lr: Annotated[float, typer.Option(help="SPEC only: learning rate")] = 1e-2,
    batch_size: Annotated[int, typer.Option(help="SPEC only: training minibatch")] = 128,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="output folder (runs/, results.csv, ...)")
    ] = None,
) -> None:
    """Run every strategy x init x seed (finished runs are kept), then write DIR/results.csv, DIR/summary.md
    and the plots DIR/metric_vs_params.png and DIR/loss_vs_steps.png."""
    if jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {jobs}")
    if out_dir is None:
        raise ValueError("give --out DIR")
    if (spec is None) == (preset is None):
        raise ValueError(
            "give either a SPEC (with --task or --data) or --preset NAME, not both"
            if spec
            else "give a SPEC (with --task or --data) or --preset NAME"
        )
    wanted_strategies, wanted_inits = _names(strategies), _names(inits)
    if preset is not None:
        if task is not None or data is not None:
            raise ValueError("--task and --data go with a SPEC, not with --preset")
        exp = make_preset(preset, quick=quick)
        exp.strategies = wanted_strategies or exp.strategies
        exp.inits = wanted_inits or exp.inits
        exp.seeds = seeds if seeds is not None else exp.seeds
        labels = static_labels(static or [], set(exp.statics))
        exp.statics.update({label: load_spec(p) for label, p in labels.items()})
    else:
        assert spec is not None
        settings = dict(growths=growths, every=every, neurons=neurons, optimizer=optimizer, lr=lr)
        config = parse_config({**settings, "batch_size": batch_size})
        exp = _spec_experiment(
            spec, task, data, wanted_strategies, wanted_inits, seeds, static or [], config, quick
        )
        exp.task.make()  # an unknown task or unreadable data fails here, once
    exp.check()
    started = time.perf_counter()
    progress = Progress(
        TextColumn("[bold]comparing"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err,
    )

    with progress:
        bar = progress.add_task("runs", total=len(exp.keys()))

        def on_done(key: RunKey, seconds: float | None) -> None:
            note = "already done" if seconds is None else f"{seconds:.1f} s"
            progress.console.print(printable(f"{key.id}: {note}"), highlight=False, markup=False)
            progress.update(bar, advance=1)

        rows = run_experiment(exp, out_dir, jobs=jobs, on_done=on_done)
    for line in exp.claims(rows) if exp.claims else []:
        out.print(printable(f"claim: {line}"), highlight=False, markup=False, soft_wrap=True)
    files = ["results.csv", "summary.md"] + [
        p for p in ("metric_vs_params.png", "loss_vs_steps.png") if (out_dir / p).is_file()
    ]
    out.print(
        printable(
            f"{len(exp.keys())} runs in {time.perf_counter() - started:.1f} s; wrote "
            + ", ".join(str(out_dir / f) for f in files)
        ),
        highlight=False,
        markup=False,
        soft_wrap=True,
    )


def register(app: typer.Typer) -> None:
    app.command("compare")(compare_command)
