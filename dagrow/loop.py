"""The built-in train <-> grow loop (seed 001, Algorithm 1, with the usual practice around it): a thin
driver over :class:`~dagrow.grower.Grower` and :mod:`dagrow.training`.

Each round trains ``every`` steps on a task's minibatches, then makes one growth step of the grower on
a growth batch (or on the statistics recorded during the round's last steps); after the schedule ends
the model trains ``final_steps`` more. With a run directory, every round ends with an atomic checkpoint
(:mod:`dagrow.checkpoint`), from which :func:`resume` continues exactly as the uninterrupted run would
have: same data order, random streams, optimizer state and schedule.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import Checkpoint, RunDirectory, optimizer_names
from .chunks import CHUNK
from .compile import DagModel, compile
from .config import GrowthConfig, parse_config
from .distributed import DataParallel, Ranks
from .graph import num_params
from .grower import Grower
from .recorder import Recorder
from .rewrite import Action
from .sites import enumerate_sites
from .spec import GraphSpec, parse_spec
from .stats import Statistics
from .tasks import Task, fit_task
from .training import (
    BatchStream,
    DivergenceGuard,
    TrainingDiverged,
    concat,
    evaluate,
    floating_dtype,
    make_optimizer,
    rng_state,
    set_rng_state,
    train_steps,
)
from .training import usable_device as usable_device

__all__ = ["GrowthConfig", "GrowthResult", "Run", "grow", "resume", "train_static", "usable_device"]


@dataclass
class GrowthResult:
    model: DagModel
    history: list[dict[str, Any]]
    actions: list[Action]


class Run:
    """A growth run of the built-in loop; its attributes are exactly what a checkpoint saves."""

    def __init__(self, grower: Grower, task: Task, *, source: dict[str, Any], directory: RunDirectory | None):
        self.grower, self.task, self.config = grower, task, grower.config
        self.ranks = grower.ranks  # distributed data parallel (dagrow.distributed); rank 0 writes the run
        self.source, self.directory = (
            source,
            directory if self.ranks is None or self.ranks.rank == 0 else None,
        )
        self.device = usable_device(self.config.device)
        grower.model.to(self.device)
        self.opt = make_optimizer(
            grower.model.parameters(), self.config.optimizer, self.config.lr, self.config.momentum
        )
        self.dtype = floating_dtype(grower.model)
        self.stream = BatchStream(task, self.config.batch_size, self.config.seed, self.device, self.dtype)
        self.parallel: DataParallel | None = (
            None if self.ranks is None else DataParallel(self.ranks, self.stream)
        )
        self.gen = torch.Generator().manual_seed(self.config.seed + 1)  # growth batches
        self.step = 0
        self.committed_step: int | None = None
        self.guard = DivergenceGuard()  # its reference (the first step's loss) is saved with the run
        self.history: list[dict[str, Any]] = []
        self.finished = False
        self.notes: list[str] = []  # outputs that could not be written (a missing optional extra)
        self.on_event: Callable[[dict[str, Any]], None] | None = None
        self.evaluate: Callable[[DagModel], dict[str, Any]] = self.validation

    @property
    def model(self) -> DagModel:
        return self.grower.model

    def validation(self, model: DagModel) -> dict[str, Any]:
        loss, metric = evaluate(model, self.task, "val", self.device)
        return {"val_loss": loss, f"val_{self.task.metric_name}": metric}

    def emit(self, lines: list[dict[str, Any]]) -> None:
        self.history.extend(lines)
        if self.directory is not None:
            self.directory.append_history(lines)
        for line in lines:
            if self.on_event is not None:
                self.on_event(line)

    def train(self, steps: int, **record: Any) -> float:
        """``steps`` training steps; a diverged loss stops the run (:class:`TrainingDiverged`) and the
        last checkpoint stays as it was."""
        try:
            if self.parallel is not None:  # DDP on this rank's share of each global minibatch
                mean = self.parallel.train(self.model, self.opt, self.task.loss, steps)
            else:
                mean = train_steps(
                    self.model, self.opt, self.stream, self.task.loss, steps, guard=self.guard,
                    first_step=self.step + 1, **record,
                )  # fmt: skip
        except TrainingDiverged as exc:
            if self.directory is None or self.committed_step is None:
                raise
            where = f"{self.directory.path} (step {self.committed_step})"
            raise TrainingDiverged(f"{exc}; the last checkpoint stays in {where}") from None
        self.step += steps
        return mean

    def growth_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The growth batch, drawn when the grower asks for it (not during a cooldown); with
        ``growth_batch: all``, the whole training set in order, in chunks of :data:`~dagrow.chunks.CHUNK`
        samples (moved to the device one chunk at a time)."""
        tx, ty = self.task.train.x, self.task.train.y
        if self.config.growth_batch == "all":
            for start in range(0, len(tx), CHUNK):
                yield self._on_device(tx[start : start + CHUNK], ty[start : start + CHUNK])
            return
        idx = torch.randperm(len(tx), generator=self.gen)[: self.config.growth_batch]
        yield self._on_device(tx[idx], ty[idx])

    def _on_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = x.to(self.device, self.dtype), y.to(self.device)
        if self.task.kind == "regression":
            y = y.to(self.dtype)
        return (x, y) if self.ranks is None else self.ranks.shard((x, y))

    def round(self) -> None:
        """Train ``every`` steps, then one growth step of the grower; then a checkpoint."""
        c = self.config
        stats: Statistics | None = None
        batches: Any = self.growth_batches()
        if c.statistics == "training":  # the last steps record the statistics and are the growth batch
            assert isinstance(c.growth_batch, int)  # the config refuses statistics=training with all
            recorded = min(c.every, -(-c.growth_batch // c.batch_size))
            first = self.train(c.every - recorded)
            seen: list = []
            sites = enumerate_sites(self.model.spec, include_unsupported=False)
            with Recorder(self.model, sites=sites, output_factors=False) as recorder:
                last = self.train(recorded, recorder=recorder, seen=seen)
            train_loss = (first * (c.every - recorded) + last * recorded) / c.every
            stats, batches = recorder.result(), [concat(seen)]
        else:
            train_loss = self.train(c.every)
        info = {"step": self.step, "train_loss": train_loss}
        result = self.grower.step(
            self.model,
            self.opt,
            batches,
            statistics=stats,
            evaluate=self.evaluate,
            info=info,
            validation=lambda m: evaluate(m, self.task, "val", self.device)[0],
        )
        self.emit(result.events)
        if (
            self.grower.finished
            and self.grower.schedule.idle_event == "evaluation"
            and not self.grower.diverged
        ):
            s = self.grower.schedule
            self.emit(
                [
                    {
                        "event": "stop",
                        "step": self.step,
                        "growth": s.growth,
                        "round": s.rounds,
                        "reason": s.reason,
                    }
                ]
            )
        self.commit()

    def end(self) -> None:
        """Train the final steps (unless training diverged), evaluate, and say so in the history."""
        trained = {}
        if not self.grower.diverged:  # the final steps' mean training loss, as every round's line
            trained["train_loss"] = self.train(self.config.final_steps or self.config.every)
        test_loss, test_metric = evaluate(self.model, self.task, "test", self.device)
        val = self.validation(self.model)
        name = self.task.metric_name
        line = {"event": "end", "step": self.step, "params": num_params(self.model.spec), **trained, **val}
        self.emit(
            [{**line, "test_loss": test_loss, f"test_{name}": test_metric, "config": self.config.to_dict()}]
        )
        self.finished = True
        self.commit()

    def commit(self) -> None:
        if self.directory is None:
            return
        opt = self.opt
        meta = {
            "spec": json.loads(self.model.spec.to_json()),
            "config": self.config.to_dict(),
            "source": self.source,
            "step": self.step,
            "finished": self.finished,
            "grower": self.grower.state_dict(),
            "stream": self.stream.state_dict(),
            "history_lines": len(self.history),
            "divergence_reference": self.guard.reference,
            "optimizer_names": optimizer_names(opt, self.model) if opt is not None else None,
            "rng": {k: v for k, v in rng_state().items() if k != "torch"},
            "world_size": 1 if self.ranks is None else self.ranks.world_size,
        }
        rng = {"torch": torch.get_rng_state(), "growth": self.gen.get_state()}
        weights = self.model.state_dict()
        self.directory.commit(Checkpoint(meta, weights, opt.state_dict() if opt else None, rng))
        start = self.source.get("start_spec")
        self.notes = self.directory.write_outputs(
            self.model,
            drawing=self.finished,
            history=self.history,
            base=parse_spec(start) if start else None,
            start_params=self.source.get("params"),
        )
        self.committed_step = self.step

    @classmethod
    def start(cls, spec_or_model, task: Task, config: GrowthConfig, *, source=None, directory=None) -> Run:
        usable_device(config.device)
        torch.manual_seed(config.seed)
        dtype = {"float32": torch.float32, "float64": torch.float64}.get(config.dtype or "")
        grower = Grower(
            spec_or_model, loss=task.loss, config=config, dtype=dtype, distributed=parallel(config)
        )
        spec = grower.model.spec
        source = {"params": num_params(spec), **(source or {}), "start_spec": json.loads(spec.to_json())}
        run = cls(grower, fit_task(task, spec), source=source, directory=directory)
        run.commit()
        return run

    @classmethod
    def resume(cls, directory: RunDirectory, task: Task) -> Run:
        """The run saved in ``directory``, continued on ``task`` (the same data as before)."""
        if not dist_rank():  # the other ranks only read the run
            directory.clean()
        ckpt = directory.load()
        m = ckpt.meta
        config = parse_config(m["config"], str(directory.checkpoint_path))
        spec: GraphSpec = parse_spec(m["spec"])
        model = compile(spec, ckpt.weights)  # the weights' floating dtype (not a batch norm's int count)
        grower = Grower(model, loss=task.loss, config=config, distributed=parallel(config))
        grower.load_state_dict(m["grower"])
        run = cls(grower, fit_task(task, spec), source=m.get("source", {}), directory=directory)
        if run.opt is not None and ckpt.optimizer is not None:
            named = dict(model.named_parameters())
            groups = [{"params": [named[n] for n in names]} for names in m["optimizer_names"]]
            run.opt = make_optimizer(groups, config.optimizer, config.lr, config.momentum)
            run.opt.load_state_dict(ckpt.optimizer)  # type: ignore[union-attr]
        run.step, run.finished = int(m["step"]), bool(m["finished"])
        run.committed_step, run.guard.reference = run.step, m.get("divergence_reference")
        run.stream.load_state_dict(m["stream"])
        run.gen.set_state(ckpt.tensors["growth"])
        set_rng_state({**m["rng"], "torch": ckpt.tensors["torch"]})
        run.history = directory.read_history(int(m["history_lines"]))
        return run

    def result(self) -> GrowthResult:
        return GrowthResult(self.model, self.history, list(self.grower.actions))

    def run(self) -> GrowthResult:
        while not self.finished and not self.grower.finished:
            self.round()
        if not self.finished:
            self.end()
        return self.result()


def parallel(config: GrowthConfig) -> Ranks | None:
    """This process's :class:`~dagrow.distributed.Ranks` when it is one of several (torchrun,
    ``dagrow grow --nproc``), after checking that the run's settings can be data parallel; else None."""
    from .distributed import env_world_size, init

    if env_world_size() <= 1 and not (
        torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1
    ):
        return None
    if config.statistics == "training" or config.optimizer == "best_update":
        what = "--statistics training" if config.statistics == "training" else "the best_update optimizer"
        raise ValueError(f"distributed runs train with DDP and measure a growth batch: not with {what}")
    return init(config.collective_timeout, usable_device(config.device))


def dist_rank() -> int:
    """This process's rank (0 when not distributed)."""
    if torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    import os

    return int(os.environ.get("RANK", "0"))


def grow(
    spec_or_model: GraphSpec | nn.Module | str,
    task: Task,
    config: GrowthConfig | None = None,
    *,
    out: str | Path | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    evaluate: Callable[[DagModel], dict[str, Any]] | None = None,
    source: dict[str, Any] | None = None,
) -> GrowthResult:
    """Train and grow ``spec_or_model`` on ``task`` (the task is checked against the spec first).

    ``on_event`` receives every history line; ``evaluate(model)`` gives the figures added to each growth
    line (default: the validation loss and metric). With ``out`` (a folder) the run checkpoints there
    after every round and can be continued by :func:`resume`."""
    directory = RunDirectory(out) if out is not None else None
    run = Run.start(spec_or_model, task, config or GrowthConfig(), source=source, directory=directory)
    run.on_event = on_event
    run.evaluate = evaluate or run.validation
    return run.run()


def resume(
    out: str | Path, task: Task, *, on_event: Callable[[dict[str, Any]], None] | None = None
) -> GrowthResult:
    """Continue the run saved in ``out`` on ``task`` exactly where its last checkpoint left it."""
    run = Run.resume(RunDirectory(out), task)
    run.on_event = on_event
    return run.run()


def train_static(spec_or_model, task: Task, config: GrowthConfig) -> GrowthResult:
    """The same schedule without growth (a baseline for comparisons): as many training steps as a run
    of ``config.growths`` growths takes."""
    if config.growths is None:
        raise ValueError("a static baseline copies the schedule of a number of growths: set growths")
    final = config.final_steps if config.final_steps is not None else config.every
    static = config.replace(
        strategy="naive" if config.strategy == "natural" else config.strategy,
        schedule="fixed",
        growths=0,
        final_steps=config.every * config.growths + final,
    )
    return grow(spec_or_model, task, static)
