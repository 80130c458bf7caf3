"""`dagrow sites`: every growth site of a network scored from one statistics pass
(:mod:`dagrow.site_report`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from .bundle import load_model_or_spec
from .cli_common import TASK_HELP, check_choice, out, task_for
from .cli_tasks import TASK_OPTION_HELP
from .compile import compile
from .growth.proposals import INITS
from .site_report import RANKINGS, score_sites
from .stats import LOSSES
from .tasks import parse_task_options
from .training import usable_device


def sites_command(
    source: Annotated[Path, typer.Argument(help="spec (.yaml) or bundle (.safetensors)")],
    task: Annotated[str | None, typer.Option(help=TASK_HELP)] = None,
    task_option: Annotated[list[str] | None, typer.Option("--task-option", help=TASK_OPTION_HELP)] = None,
    data: Annotated[Path | None, typer.Option(help="user data: .npz with x and y, or .csv")] = None,
    loss: Annotated[str | None, typer.Option(help="mse or cross_entropy (default: the task's)")] = None,
    init: Annotated[str, typer.Option(help=f"initialisation of new neurons: {INITS.help()}")] = "tiny",
    neurons: Annotated[int, typer.Option(min=1, help="new neurons per site")] = 1,
    batch: Annotated[int, typer.Option(min=1, help="samples in the statistics pass")] = 1024,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1, ...")] = "cpu",
    seed: Annotated[int, typer.Option(help="seed of the data and of a freshly compiled spec")] = 0,
    strategy: Annotated[
        str,
        typer.Option(
            help="rank the growable sites by this strategy's score: "
            + "; ".join(f"{k}: {v[1]}" for k, v in RANKINGS.items())
        ),
    ] = "amplitude_factor",
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Score every growth site of a network from one statistics pass: the sites that can grow, ranked by
    the strategy's score, then the skipped ones with the reason."""
    strategy = check_choice(strategy, RANKINGS, "strategy")
    check_choice(init, INITS, "init")
    if loss is not None:
        check_choice(loss, LOSSES, "loss")
    spec, loaded = load_model_or_spec(source)
    the_task = task_for(task, data, seed, source, spec, parse_task_options(task_option, task))
    model = (loaded or compile(spec, seed=seed)).to(usable_device(device))
    x, y = next(the_task.batches("train", None, device=device))
    report = score_sites(
        model,
        (x[:batch], y[:batch]),
        loss or the_task.loss,
        init=init,
        neurons=neurons,
        seed=seed,
        data_name=the_task.name,
        strategy=strategy,
    )
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
        return
    out.print(report.table())
    skipped = report.skipped_table()
    if skipped is not None:
        out.print(skipped)
    for line in report.notes():
        out.print(line, highlight=False, markup=False)


def register(app: typer.Typer) -> None:
    app.command("sites")(sites_command)
