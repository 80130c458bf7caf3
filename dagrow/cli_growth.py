"""`dagrow grow`: train and grow a network (registered on the app of dagrow.cli).

The options of `dagrow grow` are generated from :class:`~dagrow.config.GrowthConfig` (names, help,
defaults and choices): a flag overrides the run file given with ``--config``, which overrides the
defaults. Resuming, checkpoints and the history live in :mod:`dagrow.loop` and :mod:`dagrow.checkpoint`.
"""

from __future__ import annotations

import inspect
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .bundle import load_model_or_spec
from .checkpoint import RunDirectory
from .cli_common import TASK_HELP, check_choice, err, error_line, fail, out, task_for
from .cli_options import INPUT_PANEL, LOGS, OUTPUT_PANEL, config_parameters, keyword
from .cli_tasks import TASK_OPTION_HELP
from .compile import compile
from .config import GrowthConfig, load_config, parse_config
from .distributed import close, env_world_size, launch, rank_error
from .graph import analyze
from .loop import Run, dist_rank
from .names import printable
from .run_plots import TensorBoardLogger, require_tensorboard
from .spec import parse_spec
from .tasks import parse_task_options
from .training import usable_device


def _given(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in settings.items() if v is not None}


def _refuse_conflicts(saved: dict[str, Any], given: dict[str, Any], where: Path) -> None:
    """Flags given with --resume must agree with the run's saved settings."""
    flat = {**{k: v for k, v in saved.items() if k != "natural"}, **saved.get("natural", {})}
    wrong = [k for k, v in given.items() if flat.get(k, v) != v]
    if wrong:
        listed = ", ".join(f"--{k.replace('_', '-')} {given[k]} (the run has {flat[k]})" for k in wrong)
        fail(f"{where} was started with other settings: {listed}; resume with --resume {where} alone")


def grow_command(
    source: Path | None,
    task: str | None,
    task_option: list[str] | None,
    data: Path | None,
    config: Path | None,
    out_dir: Path | None,
    resume: Path | None,
    overwrite: bool,
    quiet: bool,
    log: str | None,
    nproc: int = 1,
    **settings: Any,
) -> None:
    """Train and grow a network; write the grown spec, bundle, history and architecture drawing.

    The run checkpoints in --out DIR after every round: a run stopped at any moment continues with
    `dagrow grow --resume DIR`, exactly as it would have gone on. With --strategy natural (SENN) no
    growth count is needed: the network grows while the natural expansion score says so and stops on
    its own. With --nproc N (or under torchrun) the run is data parallel: see docs/distributed.md."""
    given = _given(settings)
    if log is not None:
        check_choice(log, LOGS, "log")
        require_tensorboard()
    args = GrowArgs(source, task, task_option or [], data, config, out_dir, resume, overwrite, quiet, log)
    if nproc > 1:
        if env_world_size() > 1:
            fail("--nproc starts the processes itself: do not give it under torchrun")
        _launch(args, nproc, given)
        return
    if env_world_size() > 1:
        _grow_rank(args, given)
        return
    _grow(args, given)


@dataclass(frozen=True)
class GrowArgs:
    """The options of `dagrow grow` that are not settings of the run (those are ``given``)."""

    source: Path | None
    task: str | None
    task_option: list[str]
    data: Path | None
    config: Path | None
    out_dir: Path | None
    resume: Path | None
    overwrite: bool
    quiet: bool
    log: str | None


def _launch(args: GrowArgs, nproc: int, given: dict[str, Any]) -> None:
    """Check what can be checked here, then run the same command in ``nproc`` processes."""
    argv = ["grow"] + ([str(args.source)] if args.source is not None else [])
    for flag, value in (("--task", args.task), ("--data", args.data), ("--config", args.config)):
        if value is not None:
            argv += [flag, str(value)]
    for option in args.task_option:
        argv += ["--task-option", option]
    if args.log is not None:
        argv += ["--log", args.log]
    if args.resume is not None:
        argv += ["--resume", str(args.resume)]
    else:
        if args.source is None or args.out_dir is None:
            fail("give a SPEC_OR_BUNDLE and --out DIR (or --resume DIR)")
        base = load_config(args.config) if args.config is not None else {}
        parse_config({**base, **given}, str(args.config) if args.config else "")
        RunDirectory(args.out_dir).prepare(
            overwrite=args.overwrite
        )  # refused here, before any process starts
        argv += ["--out", str(args.out_dir)]
    if args.quiet:
        argv.append("--quiet")
    for name, value in given.items():
        flag = "--" + name.replace("_", "-")
        argv += [flag if value else "--no-" + flag[2:]] if isinstance(value, bool) else [flag, str(value)]
    code = launch(argv, nproc, log=error_line)
    if code:
        raise typer.Exit(code)


def _grow_rank(args: GrowArgs, given: dict[str, Any]) -> None:
    """One rank of a distributed run: rank 0 writes and prints; any failure names the rank."""
    rank = dist_rank()
    timeout = float(given.get("collective_timeout", GrowthConfig.model_fields["collective_timeout"].default))
    try:
        _grow(replace(args, overwrite=args.overwrite and rank == 0, quiet=args.quiet or rank > 0), given)
    except (typer.Exit, KeyboardInterrupt):
        close()
        raise
    except Exception as exc:
        error_line(str(rank_error(exc, timeout)))
        # the process group may be broken (a rank died): tearing it down, or leaving it to the
        # interpreter's exit, can abort the process in gloo's threads ("terminate called without an
        # active exception", status -6 instead of 1); the checkpoints are already committed
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
    close()


def _grow(args: GrowArgs, given: dict[str, Any]) -> None:
    source, task, task_option, data, config = args.source, args.task, args.task_option, args.data, args.config
    out_dir, resume, overwrite, quiet, log = args.out_dir, args.resume, args.overwrite, args.quiet, args.log
    run_dir: Path | None = None
    try:
        if resume is not None:
            if (
                source is not None
                or task is not None
                or data is not None
                or config is not None
                or task_option
            ):
                fail(
                    "--resume DIR continues the run saved there: give no SPEC, --task, --task-option, --data "
                    "or --config"
                )
            if out_dir is not None and out_dir != resume:
                fail("--resume DIR writes into DIR: give no other --out")
            run_dir = resume
            directory = RunDirectory(run_dir)
            meta = directory.load().meta
            _refuse_conflicts(meta["config"], given, run_dir)
            src = meta.get("source", {})
            the_task = task_for(
                src.get("task"),
                Path(src["data"]) if src.get("data") else None,
                int(src.get("seed", 0)),
                run_dir,
                parse_spec(meta["spec"]),
                src.get("task_options") or {},
            )
            run = Run.resume(directory, the_task)
            if run.finished:
                message = printable(f"{run_dir}: the run is finished; nothing to resume")
                out.print(message, highlight=False, markup=False, soft_wrap=True)
                return
        else:
            if source is None or out_dir is None:
                fail("give a SPEC_OR_BUNDLE and --out DIR (or --resume DIR)")
            base = load_config(config) if config is not None else {}
            growth_config = parse_config({**base, **given}, str(config) if config else "")
            usable_device(growth_config.device)
            directory = RunDirectory(out_dir)
            if not dist_rank():  # the other ranks of a distributed run only read the folder
                directory.prepare(overwrite=overwrite)
            run_dir = out_dir
            spec, loaded = load_model_or_spec(source)  # type: ignore[arg-type]
            options = parse_task_options(task_option, task)
            the_task = task_for(task, data, growth_config.seed, source, spec, options)  # type: ignore[arg-type]
            origin = {
                "spec": str(source),
                "task": task,
                "task_options": options,
                "data": str(data.resolve()) if data else None,
                "seed": growth_config.seed,
                "params": analyze(spec).num_params(),
            }
            model = loaded or compile(spec, seed=growth_config.seed)
            run = Run.start(model, the_task, growth_config, source=origin, directory=directory)
        logger = None if log is None else TensorBoardLogger(run_dir / "tensorboard")
        try:
            _run_with_progress(run, quiet, logger)
        finally:
            if logger is not None:
                logger.close()
    except KeyboardInterrupt:
        err.print("interrupted", highlight=False)
        where = run_dir
        if where is not None and RunDirectory(where).checkpoint_path.is_file():
            step = RunDirectory(where).load().meta["step"]
            err.print(
                printable(f"the run continues from step {step} with: dagrow grow --resume {where}"),
                highlight=False,
                markup=False,
                soft_wrap=True,
            )
        raise typer.Exit(130) from None
    assert run_dir is not None
    if dist_rank():
        return
    for note in run.notes:
        err.print(f"note: {note}", highlight=False, markup=False, soft_wrap=True)
    _print_summary(run, run_dir)


def _run_with_progress(run: Run, quiet: bool, logger: Any = None) -> None:
    schedule = run.grower.schedule
    total = schedule.growths
    progress = Progress(
        TextColumn("[bold]growing"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=err,
        disable=quiet,
    )
    with progress:
        bar = progress.add_task(
            "grow", total=total, completed=min(schedule.growth, total or schedule.growth), status=""
        )

        def on_event(line: dict[str, Any]) -> None:
            if logger is not None:
                logger(line)
            if line.get("event") in ("growth", "rollback"):
                progress.update(bar, advance=1, status=f"{line.get('site')} params={line.get('params', '')}")

        run.on_event = on_event
        run.run()


WRITTEN = (
    "spec.yaml",
    "model.safetensors",
    "history.jsonl",
    "metrics.csv",
    "growth.png",
    "architecture.dot",
    "architecture.png",
)


def _print_summary(run: Run, out_dir: Path) -> None:
    history = run.history
    end = history[-1]
    grown = [h["site"] for h in history if h.get("event") == "growth" and h.get("site") and "reason" not in h]
    metric = run.task.metric_name
    start = run.source.get("params", end["params"])
    out.print(f"parameters: {start} -> {end['params']}", highlight=False, soft_wrap=True)
    out.print(f"sites grown: {', '.join(grown) or 'none'}", highlight=False, soft_wrap=True)
    stops = [h["reason"] for h in history if h.get("event") == "stop" and h.get("reason")]
    if stops:
        reason = stops[-1].removeprefix("stopped growing: ")
        out.print(printable(f"growth stopped: {reason}"), highlight=False, markup=False, soft_wrap=True)
    out.print(
        f"validation {metric}: {end[f'val_{metric}']:.4f}   test {metric}: {end[f'test_{metric}']:.4f}",
        highlight=False,
        soft_wrap=True,
    )
    out.print(
        printable(f"wrote {out_dir}/" + ", ".join(n for n in WRITTEN if (out_dir / n).is_file())),
        highlight=False,
        markup=False,
        soft_wrap=True,
    )


_FIXED = [
    inspect.Parameter(
        "source",
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        default=None,
        annotation=Annotated[
            Path | None,
            typer.Argument(metavar="SPEC_OR_BUNDLE", help="spec (.yaml) or bundle (.safetensors)"),
        ],
    ),
    keyword("task", str | None, typer.Option(help=TASK_HELP, metavar="NAME", rich_help_panel=INPUT_PANEL)),
    keyword(
        "task_option",
        list[str] | None,
        typer.Option(
            "--task-option", help=TASK_OPTION_HELP, metavar="KEY=VALUE", rich_help_panel=INPUT_PANEL
        ),
    ),
    keyword(
        "data",
        Path | None,
        typer.Option(
            help="user data: .npz with x and y, or .csv", metavar="FILE", rich_help_panel=INPUT_PANEL
        ),
    ),
    keyword(
        "config",
        Path | None,
        typer.Option(
            help="run file (YAML) of settings; flags override it", metavar="FILE", rich_help_panel=INPUT_PANEL
        ),
    ),
    keyword(
        "out_dir",
        Path | None,
        typer.Option(
            "--out",
            help="output folder (refused when it holds a run)",
            metavar="DIR",
            rich_help_panel=OUTPUT_PANEL,
        ),
    ),
    keyword(
        "resume",
        Path | None,
        typer.Option(
            help="continue the run saved in this folder (no other flag)",
            metavar="DIR",
            rich_help_panel=OUTPUT_PANEL,
        ),
    ),
    keyword(
        "overwrite",
        bool,
        typer.Option("--overwrite", help="replace the run in --out", rich_help_panel=OUTPUT_PANEL),
        False,
    ),
    keyword(
        "quiet",
        bool,
        typer.Option("--quiet", "-q", help="no progress bar", rich_help_panel=OUTPUT_PANEL),
        False,
    ),
    keyword(
        "log",
        str | None,
        typer.Option(
            help="also log the history to: tensorboard (DIR/tensorboard; needs tensorboard installed)",
            metavar="NAME",
            rich_help_panel=OUTPUT_PANEL,
        ),
    ),
    keyword(
        "nproc",
        int,
        typer.Option(
            min=1,
            help="local processes of a data-parallel run (DDP over torch.distributed: gloo on CPU, "
            "NCCL on CUDA); under torchrun leave it at 1",
        ),
        1,
    ),
]
grow_command.__signature__ = inspect.Signature(_FIXED + config_parameters())  # type: ignore[attr-defined]


def register(app: typer.Typer) -> None:
    app.command("grow", help=GROW_HELP)(grow_command)


GROW_HELP = (
    "Train and grow a network; write the grown spec, bundle, history, metrics.csv, growth.png and the "
    "architecture drawing.\n\n"
    "The run checkpoints in --out DIR after every round: a run stopped at any moment continues with "
    "`dagrow grow --resume DIR`, exactly as it would have gone on. With --strategy natural (SENN) no growth "
    "count is needed: the network grows while the natural expansion score says so and stops on its own."
)
