"""`dagrow compare`: run every strategy x init x seed of an experiment and tabulate, summarise, plot.

An :class:`Experiment` names a spec, a task, a base :class:`GrowthConfig`, the strategies, inits and
number of seeds to cross, and optional static baselines (fixed architectures trained from scratch for
the same number of steps). :func:`run_experiment` runs what is not done yet (in spawned processes with
``jobs > 1``), each run writing its rows to ``DIR/runs/<run id>.json`` atomically, then writes
``DIR/results.csv``, ``DIR/summary.md`` and the plots (``metric_vs_params.png``, ``loss_vs_steps.png``;
matplotlib is the optional ``plot`` extra), all atomically (tables in :mod:`dagrow.results`, plots in
:mod:`dagrow.plots`). A run killed half-way leaves no file and is
redone; a finished run whose settings changed (its fingerprint differs) is redone too.

Rows (one per run and growth step, plus the initial model and the end): ``run, kind, strategy, init,
seed, growth, step, event, site, parameters, train_loss, val_loss, val_metric, test_loss,
test_metric, metric, seconds, loss_before, loss_after, decision_seconds`` (train loss over the whole
train split; ``seconds`` since the run started; ``decision_seconds`` what the growth decision took).
The data of a task do not depend on the run's seed (task seed 0) unless its :class:`TaskSource` says
``per_seed`` (then task seed = run seed: the teacher-student preset draws a new teacher per seed):
seeds vary the model's initialisation, the minibatch order and the growth batches.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

from .bundle import atomic_write_text, check_output_folder
from .compile import DagModel, compile
from .config import GrowthConfig
from .graph import num_params
from .growth.proposals import INITS
from .loop import grow
from .planner import STRATEGIES
from .plots import write_plots
from .results import COLUMNS, summary_markdown, write_results
from .spec import GraphSpec, load_spec
from .tasks import Task, fit_task, load_data, make_task
from .training import BatchStream, evaluate, make_optimizer, train_steps

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class TaskSource:
    """Where a run's task comes from: a built-in task (name, options, n) or a user data file."""

    name: str | None = None
    options: tuple[tuple[str, Any], ...] = ()
    n: int | None = None
    data: str | None = None
    per_seed: bool = False  # a new draw of the task's data for every run seed (task seed = run seed)

    def make(self, seed: int = 0) -> Task:
        """The task; with ``per_seed``, the one drawn with task seed ``seed`` (else task seed 0)."""
        return _cached_task(self, seed if self.per_seed else 0)

    def describe(self) -> str:
        if self.data is not None:
            return f"data {self.data}"
        opts = ", ".join(f"{k}={v}" for k, v in (*self.options, *((("n", self.n),) if self.n else ())))
        drawn = "; a new draw (task seed) per run seed" if self.per_seed else ""
        return f"task {self.name}" + (f" ({opts})" if opts else "") + drawn


@lru_cache(maxsize=4)
def _cached_task(source: TaskSource, seed: int = 0) -> Task:
    if source.data is not None:
        return load_data(source.data, seed=seed)
    return make_task(source.name, seed=seed, n=source.n, **dict(source.options))  # type: ignore[arg-type]


@dataclass(frozen=True)
class RunKey:
    """One run: a growth run (strategy x init x seed) or a static baseline (``init`` is its label)."""

    strategy: str
    init: str
    seed: int
    kind: str = "grow"

    @property
    def id(self) -> str:
        name = self.init if self.kind == "static" else f"{self.strategy}-{self.init}"
        return f"{self.kind}-{name}-s{self.seed}"


Runner = Callable[["Experiment", RunKey], list[dict[str, Any]]]


@dataclass
class Experiment:
    """What to compare. ``runner`` (a module-level function, so spawned workers can unpickle it) turns
    one :class:`RunKey` into rows; the default grows ``spec`` with :func:`dagrow.loop.grow`."""

    name: str
    spec: GraphSpec | None
    task: TaskSource
    config: GrowthConfig
    strategies: list[str]
    inits: list[str]
    seeds: int = 3
    statics: dict[str, GraphSpec] = field(default_factory=dict)
    runner: Runner | None = None
    description: str = ""
    metric_name: str | None = None  # default: the task's metric
    strategy_choices: tuple[str, ...] | None = None  # default: the planner's STRATEGIES
    init_choices: tuple[str, ...] | None = None  # default: INITS
    claims: Callable[[list[dict[str, Any]]], list[str]] | None = None  # directional claims, checked
    settings: Any = None  # a custom runner's own settings (a picklable dataclass)
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # per strategy: GrowthConfig fields
    plot_split: str = "test"  # the split whose metric metric_vs_params.png shows

    def check(self) -> None:
        """ValueError for an unknown strategy or init, or no seeds."""
        for what, values, known in (
            ("strategy", self.strategies, self.strategy_choices or tuple(STRATEGIES)),
            ("init", self.inits, self.init_choices or tuple(INITS)),
        ):
            if not values:
                raise ValueError(f"no {what} to compare")
            for v in values:
                if v not in known:
                    raise ValueError(f"unknown {what} {v!r}; expected one of {', '.join(known)}")
        if self.seeds < 1:
            raise ValueError(f"--seeds must be at least 1, got {self.seeds}")

    def __getstate__(self) -> dict[str, Any]:
        # GraphSpec models hold dynamically created classes that do not pickle: send YAML to workers
        state = dict(self.__dict__)
        state["spec"] = self.spec.to_yaml() if self.spec is not None else None
        state["statics"] = {k: v.to_yaml() for k, v in self.statics.items()}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state["spec"] = load_spec(state["spec"]) if state["spec"] is not None else None
        state["statics"] = {k: load_spec(v) for k, v in state["statics"].items()}
        self.__dict__.update(state)

    def keys(self) -> list[RunKey]:
        runs = [RunKey(s, i, seed) for s in self.strategies for i in self.inits for seed in range(self.seeds)]
        runs += [
            RunKey("static", label, seed, "static") for label in self.statics for seed in range(self.seeds)
        ]
        return runs

    def fingerprint(self, key: RunKey) -> str:
        """A hash of everything that determines a run's rows (so changed settings redo the run)."""
        spec = self.statics[key.init] if key.kind == "static" else self.spec
        runner = self.runner or growth_run
        text = json.dumps(
            [
                self.config.to_dict(),
                repr(self.settings),
                repr(self.overrides.get(key.strategy)),
                spec.to_yaml() if spec is not None else None,
                repr(self.task),
                asdict(key),
                f"{runner.__module__}.{runner.__qualname__}",
            ],
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------------
# Evaluating a model on every split
# --------------------------------------------------------------------------------------------------


def evaluate_all(model: torch.nn.Module, task: Task) -> dict[str, float]:
    """Loss and the task's metric on train, val and test (``loop.evaluate`` on each split)."""
    device = next(model.parameters()).device
    row = {}
    for s in SPLITS:
        row[f"{s}_loss"], row[f"{s}_metric"] = evaluate(model, task, s, device)
    return row


# --------------------------------------------------------------------------------------------------
# Runners (module-level functions: spawned workers unpickle them by name)
# --------------------------------------------------------------------------------------------------


def make_row(key: RunKey, metric: str, started: float, **values: Any) -> dict[str, Any]:
    row: dict[str, Any] = {c: "" for c in COLUMNS}
    row.update(
        run=key.id,
        kind=key.kind,
        strategy=key.strategy,
        init=key.init,
        seed=key.seed,
        metric=metric,
        seconds=round(time.perf_counter() - started, 3),
    )
    row.update(values)
    return row


def start_row(key: RunKey, metric: str, started: float, model: DagModel, task: Task) -> dict[str, Any]:
    """The row of the untrained model (step 0)."""
    params = num_params(model.spec)
    return make_row(
        key, metric, started, growth=0, step=0, event="start", parameters=params, **evaluate_all(model, task)
    )


EVAL = "eval_"  # prefix of the figures evaluate_all adds to a history line


_WARM: set[str] = set()  # the strategies this process has run once (untimed)


def _warm_up(spec: GraphSpec, task: Task, config: GrowthConfig) -> None:
    """One tiny untimed growth (a growth, a step or two of training) per strategy and process, so that
    the first timed run is not charged for lazy imports and first-call set-ups."""
    if config.strategy in _WARM:
        return
    _WARM.add(config.strategy)
    state = torch.get_rng_state()
    small = 64 if config.growth_batch == "all" else min(config.growth_batch, 64)
    tiny = config.replace(growths=1, every=1, final_steps=1, growth_batch=small)
    grow(compile(spec, seed=0), task, tiny)
    torch.set_rng_state(state)


def growth_run(exp: Experiment, key: RunKey) -> list[dict[str, Any]]:
    """Rows of one run: ``static_run`` for a baseline, else :func:`dagrow.loop.grow` on the spec."""
    if key.kind == "static":
        return static_run(exp, key)
    assert exp.spec is not None
    task = exp.task.make(key.seed)  # made once per process: its making is not charged to the run
    metric = exp.metric_name or task.metric_name
    # one validated replace: an override may only make sense with the run's strategy (natural: no growth cap)
    run = {"strategy": key.strategy, "init": key.init, "seed": key.seed}
    config = exp.config.replace(**{**exp.overrides.get(key.strategy, {}), **run})
    model = compile(exp.spec, seed=key.seed)
    task = fit_task(task, model.spec)
    _warm_up(exp.spec, task, config)
    started = time.perf_counter()
    rows = [start_row(key, metric, started, model, task)]

    def on_event(line: dict[str, Any]) -> None:
        event = line["event"]
        if event not in ("growth", "rollback", "stop"):
            return
        if event == "growth" and line.get("reason"):  # no site can grow, or gamma* = 0
            event = "skipped"
        values = {
            "growth": line.get("growth", rows[-1]["growth"]),
            "step": line["step"],
            "event": event,
            "site": (line.get("site") if event == "growth" else line.get("reason")) or "",  # or why not
            "parameters": line.get("params", rows[-1]["parameters"]),
            "loss_before": "" if line.get("loss_before") is None else line["loss_before"],
            "loss_after": "" if line.get("loss_after") is None else line["loss_after"],
            "decision_seconds": round(line["decision_seconds"], 4) if "decision_seconds" in line else "",
        }
        rows.append(make_row(key, metric, started, **values))
        # the figures of the model right after the growth (or rollback)
        rows[-1].update({k[len(EVAL) :]: v for k, v in line.items() if k.startswith(EVAL)})

    def evaluate(grown: DagModel) -> dict[str, float]:
        return {EVAL + k: v for k, v in evaluate_all(grown, task).items()}

    result = grow(model, task, config, on_event=on_event, evaluate=evaluate)
    end = result.history[-1]
    rows.append(
        make_row(
            key,
            metric,
            started,
            growth=rows[-1]["growth"],
            step=end["step"],
            event="end",
            parameters=end["params"],
            **evaluate_all(result.model, task),
        )
    )
    return rows


def static_run(exp: Experiment, key: RunKey) -> list[dict[str, Any]]:
    """A fixed architecture trained from scratch with the growth runs' optimizer and batches for as many
    steps as a growth run takes, evaluated every ``config.every`` steps."""
    task = exp.task.make(key.seed)  # made once per process: its making is not charged to the run
    started = time.perf_counter()
    metric = exp.metric_name or task.metric_name
    config = exp.config.replace(seed=key.seed)
    spec = exp.statics[key.init]
    task = fit_task(task, spec)
    torch.manual_seed(config.seed)
    device = torch.device(config.device)
    model = compile(spec, seed=config.seed, device=device)
    params = num_params(spec)
    opt = make_optimizer(model.parameters(), config.optimizer, config.lr, config.momentum)
    batches = BatchStream(task, config.batch_size, config.seed, device)
    assert config.growths is not None, "a static baseline copies the schedule of a number of growths"
    total = config.every * config.growths + (config.final_steps or config.every)
    rows = [start_row(key, metric, started, model, task)]
    step = 0
    while step < total:  # evaluated every config.every steps and at the end
        chunk = min(config.every, total - step)
        train_steps(model, opt, batches, task.loss, chunk)
        step += chunk
        rows.append(
            make_row(
                key,
                metric,
                started,
                growth=step // config.every,
                step=step,
                event="end" if step == total else "train",
                parameters=params,
                **evaluate_all(model, task),
            )
        )
    return rows


# --------------------------------------------------------------------------------------------------
# Running an experiment
# --------------------------------------------------------------------------------------------------


OUTPUT_FILES = ["results.csv", "summary.md", "metric_vs_params.png", "loss_vs_steps.png"]


def run_path(out: Path, key: RunKey) -> Path:
    return out / "runs" / f"{key.id}.json"


def _run_and_save(exp: Experiment, key: RunKey, path: Path) -> tuple[RunKey, float]:
    started = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small models: one thread each is faster, and jobs do not oversubscribe
    try:
        rows = (exp.runner or growth_run)(exp, key)
    finally:
        torch.set_num_threads(threads)
    doc = {"fingerprint": exp.fingerprint(key), "rows": rows}
    atomic_write_text(path, json.dumps(doc) + "\n")
    return key, time.perf_counter() - started


def load_run(exp: Experiment, out: Path, key: RunKey) -> list[dict[str, Any]] | None:
    """The stored rows of a finished run, or None if it is missing or its settings changed. A file that
    is not what dagrow writes (not JSON, not an object with a fingerprint and a list of rows with every
    column of this run) is None too, with a warning naming it: the run is done again and replaces it."""
    path = run_path(out, key)
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        _unusable(path, f"unreadable ({exc})")
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("rows"), list):
        _unusable(path, "not a run file (a JSON object with 'fingerprint' and 'rows')")
        return None
    if doc.get("fingerprint") != exp.fingerprint(key):
        return None
    for i, row in enumerate(doc["rows"]):
        if not (isinstance(row, dict) and set(COLUMNS) <= row.keys() and row["run"] == key.id):
            _unusable(path, f"row {i} is not a row of run {key.id!r} with every column")
            return None
    return doc["rows"]


def _unusable(path: Path, reason: str) -> None:
    warnings.warn(f"{path}: {reason}; the run is done again and the file replaced", stacklevel=3)


def run_experiment(
    exp: Experiment,
    out: str | Path,
    *,
    jobs: int = 1,
    on_done: Callable[[RunKey, float | None], None] | None = None,
) -> list[dict[str, Any]]:
    """Run what is not done yet, then write results.csv, summary.md and the plots; return all rows.

    ``on_done(key, seconds)`` is called for each run (``seconds`` None for one found done).
    """
    if jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {jobs}")
    exp.check()
    keys = exp.keys()
    out = check_output_folder(out, [*OUTPUT_FILES, *(str(run_path(Path(), k)) for k in keys)])
    (out / "runs").mkdir(parents=True, exist_ok=True)
    todo = [k for k in keys if load_run(exp, out, k) is None]
    for k in keys:
        if k not in todo and on_done:
            on_done(k, None)
    if jobs == 1 or len(todo) <= 1:
        for k in todo:
            _, seconds = _run_and_save(exp, k, run_path(out, k))
            if on_done:
                on_done(k, seconds)
    else:
        with ProcessPoolExecutor(
            min(jobs, len(todo)),
            mp_context=get_context("spawn"),  # _run_and_save sets one thread
        ) as pool:
            futures = [pool.submit(_run_and_save, exp, k, run_path(out, k)) for k in todo]
            for fut in as_completed(futures):
                k, seconds = fut.result()
                if on_done:
                    on_done(k, seconds)
    rows = [row for k in keys for row in (load_run(exp, out, k) or [])]
    write_results(out, rows)
    claims = exp.claims(rows) if exp.claims is not None and rows else []
    atomic_write_text(out / "summary.md", summary_markdown(exp, rows, claims))
    try:
        write_plots(out, rows, title=exp.name, split=exp.plot_split)
    except ImportError:  # matplotlib (the 'plot' extra) missing: the tables are still written
        pass
    return rows
