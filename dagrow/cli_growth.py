"""`dagrow sites` and `dagrow grow`: the growth commands (registered on the app of dagrow.cli)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .bundle import atomic_write_text, load_model_or_spec, save
from .compile import compile
from .graph import analyze
from .growth.proposals import INITS, ProposalSettings, propose_all
from .loop import STATISTICS, GrowthConfig, grow, usable_device
from .planner import STRATEGIES
from .sites import enumerate_sites
from .stats import LOSSES, measure
from .tasks import DataError, Task, fit_task, list_tasks, load_data, make_task

out = Console()
err = Console(stderr=True)


def _fail(message: str) -> None:
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def _task(task: str | None, data: Path | None, seed: int, source: Path, spec) -> Task:
    """The task or data set, checked against the spec (errors name the spec file)."""
    if (task is None) == (data is None):
        _fail("give exactly one of --task NAME or --data FILE")
    the_task = make_task(task, seed=seed) if task is not None else load_data(data, seed=seed)  # type: ignore[arg-type]
    try:
        return fit_task(the_task, spec)
    except DataError as exc:
        raise DataError(f"{source}: {exc}") from None


def _check_choice(value: str, choices, what: str) -> str:
    if value not in choices:
        _fail(f"unknown {what} {value!r}; expected one of {', '.join(choices)}")
    return value


DEFAULTS = GrowthConfig()  # one place for the defaults of the CLI and the Python API
TASK_HELP = "built-in task: " + ", ".join(list_tasks())
INIT_HELP = "; ".join(f"{k}: {v.split(':', 1)[0]}" for k, v in INITS.summaries().items())


def sites_command(
    source: Annotated[Path, typer.Argument(help="spec (.yaml) or bundle (.safetensors)")],
    task: Annotated[str | None, typer.Option(help=TASK_HELP)] = None,
    data: Annotated[Path | None, typer.Option(help="user data: .npz with x and y, or .csv")] = None,
    loss: Annotated[str | None, typer.Option(help="mse or cross_entropy (default: the task's)")] = None,
    init: Annotated[str, typer.Option(help=f"initialisation ({', '.join(INITS)})")] = "tiny",
    neurons: Annotated[int, typer.Option(min=1, help="new neurons per site")] = 1,
    batch: Annotated[int, typer.Option(min=1, help="samples in the statistics pass")] = 1024,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1, ...")] = "cpu",
    seed: Annotated[int, typer.Option(help="seed of the data and of a freshly compiled spec")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Score every growth site of a network from one statistics pass."""
    _check_choice(init, INITS, "init")
    if loss is not None:
        _check_choice(loss, LOSSES, "loss")
    spec, loaded = load_model_or_spec(source)
    the_task = _task(task, data, seed, source, spec)
    model = (loaded or compile(spec, seed=seed)).to(usable_device(device))
    x, y = next(the_task.batches("train", None, device=device))
    x, y = x[:batch], y[:batch]
    all_sites = enumerate_sites(spec)
    supported = [s for s in all_sites if s.supported]
    stats = measure(model, [(x, y)], loss or the_task.loss, sites=supported)
    settings = ProposalSettings(seed=seed)
    proposals = propose_all(stats, all_sites, init, neurons, weights=model.state_dict(), settings=settings)
    if as_json:
        doc = {
            "spec": spec.name,
            "task": the_task.name,
            "loss": stats.loss,
            "samples": stats.n,
            "init": init,
            "neurons": neurons,
            "thresholds": settings.report(),
            "sites": [p.to_dict() for p in proposals],
        }
        print(json.dumps(doc, indent=2))
        return
    title = f"{spec.name}: {len(supported)} growable sites, loss {stats.loss:.4g} on {stats.n} samples"
    table = Table(title=title)
    for col in ("site", "kind", "lambdas", "first-order", "bottleneck", "|dW*|", "params"):  # ids in full
        table.add_column(
            col,
            justify="left" if col in ("site", "kind", "lambdas") else "right",
            no_wrap=col in ("site", "kind"),
        )
    for p in proposals:
        if not p.site.supported:
            continue
        lams = ", ".join(f"{float(v):.3g}" for v in p.lambdas[: max(neurons, 3)]) or "-"
        table.add_row(
            p.site.id,
            p.site.kind,
            lams,
            f"{p.first_order_improvement:.4g}",
            f"{p.bottleneck:.4g}",
            f"{p.delta_w_norm:.3g}",
            str(p.params_added),
        )
    out.print(table)
    for p in proposals:
        if not p.site.supported:
            out.print(f"[dim]{p.site.id}: not supported: {p.skipped}[/dim]", highlight=False, soft_wrap=True)
    out.print(f"thresholds: {settings.report()}", highlight=False, soft_wrap=True)


def _write_outputs(out_dir: Path, model, history: list[dict[str, Any]], *, drawing: bool = True) -> None:
    """The bundle, the spec and the history (each file atomic; the history last, so that a run killed
    in between resumes from a bundle at least as new as its history), then the drawings."""
    out_dir.mkdir(parents=True, exist_ok=True)
    save(model, out_dir / "model.safetensors")
    atomic_write_text(out_dir / "spec.yaml", model.spec.to_yaml())
    atomic_write_text(out_dir / "history.jsonl", "".join(json.dumps(line) + "\n" for line in history))
    if not drawing:
        return
    try:
        from .export import to_dot, write_png

        atomic_write_text(out_dir / "architecture.dot", to_dot(model.spec))
        write_png(model.spec, out_dir / "architecture.png")
    except ImportError as exc:  # matplotlib is an optional extra
        err.print(f"[yellow]note:[/yellow] architecture.png not written ({exc})")


def grow_command(
    source: Annotated[Path | None, typer.Argument(help="spec (.yaml) or bundle (.safetensors)")] = None,
    task: Annotated[str | None, typer.Option(help=TASK_HELP)] = None,
    data: Annotated[Path | None, typer.Option(help="user data: .npz with x and y, or .csv")] = None,
    strategy: Annotated[str, typer.Option(help=", ".join(STRATEGIES))] = DEFAULTS.strategy,
    init: Annotated[str, typer.Option(help=INIT_HELP)] = DEFAULTS.init,
    growths: Annotated[
        int | None,
        typer.Option(min=0, help="number of growth steps (default 10; natural: a cap, default none)"),
    ] = None,
    max_params: Annotated[int | None, typer.Option(min=1, help="stop growing at this size")] = None,
    every: Annotated[int, typer.Option(min=1, help="training steps between growths")] = DEFAULTS.every,
    neurons: Annotated[int, typer.Option(min=1, help="neurons per growth")] = DEFAULTS.neurons,
    optimizer: Annotated[str, typer.Option(help="sgd, adam or best_update")] = DEFAULTS.optimizer,
    lr: Annotated[float, typer.Option(min=0.0, help="learning rate")] = DEFAULTS.lr,
    batch_size: Annotated[int, typer.Option(min=1, help="training minibatch")] = DEFAULTS.batch_size,
    growth_batch: Annotated[
        int, typer.Option(min=1, help="samples for statistics and amplitude")
    ] = DEFAULTS.growth_batch,
    statistics: Annotated[
        str,
        typer.Option(
            help="pass (a statistics pass on the growth batch) or training (recorded "
            "during each round's last steps, cheaper)"
        ),
    ] = DEFAULTS.statistics,
    joint_update: Annotated[
        bool, typer.Option(help="apply gamma dW* together with the neurons")
    ] = DEFAULTS.joint_update,
    normalize: Annotated[
        bool, typer.Option(help="divide site scores by the parameters they add")
    ] = DEFAULTS.normalize,
    device: Annotated[str, typer.Option(help="cpu, cuda, ...")] = DEFAULTS.device,
    seed: Annotated[int, typer.Option(help="seed of data, initialisation and training")] = DEFAULTS.seed,
    out_dir: Annotated[Path | None, typer.Option("--out", help="output folder")] = None,
    resume: Annotated[Path | None, typer.Option(help="continue the run saved in this folder")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
    tau: Annotated[
        float, typer.Option(min=0.0, help="natural: grow when Delta eta / eta > tau")
    ] = DEFAULTS.tau,
    alpha: Annotated[
        float, typer.Option(min=0.0, help="natural: ... and Delta eta / E||dL/dy||^2 > alpha")
    ] = DEFAULTS.alpha,
    damping: Annotated[
        float, typer.Option(min=0.0, help="natural: damping of A and G (relative)")
    ] = DEFAULTS.damping,
    fisher: Annotated[
        str, typer.Option(help="natural: G from unit or empirical gradients")
    ] = DEFAULTS.fisher,
    candidates: Annotated[
        int, typer.Option(min=0, help="natural: random candidates per site")
    ] = DEFAULTS.candidates,
    refine_steps: Annotated[
        int, typer.Option(min=0, help="natural: Adam steps per candidate")
    ] = DEFAULTS.refine_steps,
    cooldown: Annotated[
        int, typer.Option(min=0, help="natural: rounds without growth after one")
    ] = DEFAULTS.cooldown,
    depth_cost: Annotated[
        float, typer.Option(min=0.0, help="natural: a deepen site's score is divided by this")
    ] = DEFAULTS.depth_cost,
    construction: Annotated[
        str, typer.Option(help="natural: deepened edges as identity or SENN's basis")
    ] = DEFAULTS.construction,
    patience: Annotated[
        int, typer.Option(min=1, help="natural: stop after this many evaluations without growth")
    ] = DEFAULTS.patience,
    max_additions: Annotated[
        int, typer.Option(min=1, help="natural: additions per round at most")
    ] = DEFAULTS.max_additions,
    max_rounds: Annotated[
        int, typer.Option(min=1, help="natural: training rounds at most")
    ] = DEFAULTS.max_rounds,
) -> None:
    """Train and grow a network; write the grown spec, bundle, history and architecture drawing.

    With --strategy natural (SENN) no growth count is needed: the network grows while the natural
    expansion score says so (--tau, --alpha) and stops on its own."""
    _check_choice(strategy, STRATEGIES, "strategy")
    _check_choice(fisher, ("unit", "empirical"), "fisher")
    _check_choice(construction, ("identity", "basis"), "construction")
    if growths is None and strategy != "natural":
        growths = 10
    _check_choice(init, INITS, "init")
    _check_choice(optimizer, ("sgd", "adam", "best_update"), "optimizer")
    _check_choice(statistics, STATISTICS, "statistics")
    previous: list[dict[str, Any]] = []
    if resume is not None:
        out_dir = out_dir or resume
        hist_path = resume / "history.jsonl"
        if not (resume / "model.safetensors").is_file() or not hist_path.is_file():
            _fail(f"{resume}: nothing to resume (needs model.safetensors and history.jsonl)")
        previous = [json.loads(line) for line in hist_path.read_text().splitlines() if line.strip()]
        source = resume / "model.safetensors"
    if source is None or out_dir is None:
        _fail("give a SPEC_OR_BUNDLE and --out DIR (or --resume DIR)")
    spec, loaded = load_model_or_spec(source)  # type: ignore[arg-type]
    the_task = _task(task, data, seed, source, spec)  # type: ignore[arg-type]
    config = GrowthConfig(
        strategy=strategy,
        init=init,
        growths=growths,
        max_params=max_params,
        every=every,
        neurons=neurons,
        optimizer=optimizer,
        lr=lr,
        batch_size=batch_size,  # type: ignore[arg-type]
        growth_batch=growth_batch,
        statistics=statistics,  # type: ignore[arg-type]
        joint_update=joint_update,
        normalize=normalize,
        seed=seed,
        device=device,
        tau=tau,
        alpha=alpha,
        damping=damping,
        fisher=fisher,
        candidates=candidates,
        refine_steps=refine_steps,
        cooldown=cooldown,
        depth_cost=depth_cost,
        construction=construction,
        patience=patience,
        max_additions=max_additions,
        max_rounds=max_rounds,
    )
    config.validate()
    done = sum(1 for h in previous if h.get("event") in ("growth", "rollback"))
    model = loaded or compile(spec, seed=seed)
    params_before = analyze(spec).num_params()
    history = [h for h in previous if h.get("event") != "end"]
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
        bar = progress.add_task("grow", total=growths, completed=min(done, growths or done), status="")

        def on_event(line: dict[str, Any]) -> None:
            history.append(line)
            if line.get("event") in ("growth", "rollback"):
                progress.update(bar, advance=1, status=f"{line.get('site')} params={line.get('params', '')}")

        def on_checkpoint(grown) -> None:  # after every growth: a killed run resumes from here
            _write_outputs(out_dir, grown, history, drawing=False)  # type: ignore[arg-type]

        result = grow(
            model, the_task, config, on_event=on_event, on_checkpoint=on_checkpoint, start_growth=done
        )
    _write_outputs(out_dir, result.model, history)
    end = history[-1]
    grown = [h["site"] for h in history if h.get("event") == "growth" and h.get("site") and "reason" not in h]
    metric = the_task.metric_name
    out.print(f"parameters: {params_before} -> {end['params']}", highlight=False, soft_wrap=True)
    out.print(f"sites grown: {', '.join(grown) or 'none'}", highlight=False, soft_wrap=True)
    out.print(
        f"validation {metric}: {end[f'val_{metric}']:.4f}   test {metric}: {end[f'test_{metric}']:.4f}",
        highlight=False,
        soft_wrap=True,
    )
    out.print(
        f"wrote {out_dir}/spec.yaml, model.safetensors, history.jsonl, architecture.dot/.png",
        highlight=False,
        soft_wrap=True,
    )


def register(app: typer.Typer) -> None:
    app.command("sites")(sites_command)
    app.command("grow")(grow_command)
