"""The train <-> grow loop (seed 001, Algorithm 1, with the usual practice around it).

Each round trains ``every`` steps (SGD or Adam on minibatches, or the seeds' "best update": dW* per
node applied with its own amplitude), then measures the statistics on a growth batch, asks the
strategy for a site, applies the chosen proposal at its gamma* and recompiles the model from the
new spec. The optimizer is rebuilt over the new parameters and keeps its state for the old entries
(new entries start at zero). A growth whose loss on the growth batch is worse than before by more
than ``tolerance`` (relative) is rolled back and logged. Every growth appends one line to the
history.

With the ``natural`` strategy (SENN) the schedule is different: after each round of training the
natural expansion score is measured; while the best candidate passes both thresholds it is added
(new neurons with zero fan-out, or a function-preserving deepening), the score is measured again on
the grown network, and again, up to ``max_additions`` per round; a round that grew is followed by
``cooldown`` rounds of training only. No growth count is needed: the run stops growing when
``patience`` evaluations in a row add nothing (or after ``max_rounds`` rounds, or ``growths``
additions when given), then trains ``final_steps`` more steps.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

import torch
from torch import nn
from torch.func import functional_call

from .compile import DagModel, compile
from .graph import analyze
from .growth.amplitude import line_search, proposal_actions
from .growth.natural import NaturalSettings
from .growth.proposals import ProposalSettings, propose_all, target_update
from .planner import Natural, make_strategy
from .rewrite import Action, UpdateWeights, replay
from .sites import ONE, enumerate_sites
from .stats import Recorder, Statistics, StatsError, loss_function, measure
from .tasks import Task, fit_task

STATISTICS = ("pass", "training")  # GrowthConfig.statistics: a pass of their own, or recorded in training


@dataclass
class GrowthConfig:
    """Settings of a growth run (all reported in the history)."""

    strategy: str = "amplitude_factor"
    init: str = "tiny"
    growths: int | None = 10  # natural: a cap on additions (None: none)
    max_params: int | None = None
    every: int = 200
    neurons: int = 1
    optimizer: Literal["sgd", "adam", "best_update"] = "adam"
    lr: float = 1e-2
    batch_size: int = 128
    growth_batch: int = 1024
    # where the planned strategies' statistics come from: a pass of their own on a growth batch, or
    # the last ceil(growth_batch / batch_size) training steps of each round (Recorder)
    statistics: Literal["pass", "training"] = "pass"
    joint_update: bool = False
    normalize: bool = False
    max_candidates: int = 8
    tolerance: float = 1e-3
    final_steps: int | None = None  # training after the last growth (default: every)
    seed: int = 0
    device: str = "cpu"
    # natural (SENN): when-to-grow thresholds, the search, and the schedule
    tau: float = NaturalSettings.tau
    alpha: float = NaturalSettings.alpha
    damping: float = NaturalSettings.damping
    fisher: str = NaturalSettings.fisher
    candidates: int = NaturalSettings.candidates
    refine_steps: int = NaturalSettings.refine_steps
    depth_cost: float = NaturalSettings.depth_cost
    construction: str = NaturalSettings.construction
    cooldown: int = 1
    max_additions: int = 8
    patience: int = 3
    max_rounds: int = 50

    def natural_settings(self) -> NaturalSettings:
        """The SENN settings: every NaturalSettings field this config also has (the rest default)."""
        shared = {f.name for f in fields(NaturalSettings)} & {f.name for f in fields(self)}
        return NaturalSettings(**{k: getattr(self, k) for k in shared})

    def validate(self) -> None:
        from .growth.proposals import INITS
        from .planner import STRATEGIES

        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; expected one of {', '.join(STRATEGIES)}")
        if self.init not in INITS:
            raise ValueError(f"unknown init {self.init!r}; expected one of {', '.join(INITS)}")
        if self.optimizer not in ("sgd", "adam", "best_update"):
            raise ValueError(f"unknown optimizer {self.optimizer!r}; expected sgd, adam or best_update")
        for name in ("every", "neurons", "batch_size", "growth_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.statistics not in STATISTICS:
            raise ValueError(f"unknown statistics {self.statistics!r}; expected pass or training")
        if self.statistics == "training" and (self.optimizer == "best_update" or self.strategy == "natural"):
            what = "the best_update optimizer" if self.optimizer == "best_update" else "the natural strategy"
            raise ValueError(
                f"statistics=training records the statistics during sgd or adam steps: not with {what}"
            )
        if self.growths is None and self.strategy != "natural":
            raise ValueError(
                f"strategy {self.strategy} needs a number of growths (only natural stops by itself)"
            )
        if self.growths is not None and self.growths < 0:
            raise ValueError("growths must be >= 0")
        if self.strategy == "natural":
            self.natural_settings().validate()
            for name in ("max_additions", "patience", "max_rounds"):
                if getattr(self, name) < 1:
                    raise ValueError(f"{name} must be at least 1")
            if self.cooldown < 0:
                raise ValueError("cooldown must be >= 0")
        usable_device(self.device)


def usable_device(name: str | torch.device) -> torch.device:
    """``name`` as a torch.device, or a ``ValueError`` saying why it cannot be used here."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"unknown device {str(name)!r}; expected cpu, cuda, cuda:N, mps, ...") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(name)!r} is not available: this torch has no usable CUDA device")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {str(name)!r} is not available: {torch.cuda.device_count()} CUDA device(s) here"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {str(name)!r} is not available here")
    return device


def make_optimizer(model: nn.Module, config: GrowthConfig) -> torch.optim.Optimizer | None:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr)
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=0.9)
    return None


def carry_optimizer_state(
    old_model: nn.Module,
    old_opt: torch.optim.Optimizer | None,
    new_model: nn.Module,
    new_opt: torch.optim.Optimizer | None,
) -> None:
    """Copy each old parameter's state into the new optimizer: the old entries keep their moments
    (they are the leading slice of a grown tensor), new entries start at zero."""
    if old_opt is None or new_opt is None:
        return
    old_params = dict(old_model.named_parameters())
    for name, p in new_model.named_parameters():
        q = old_params.get(name)
        if q is None or q not in old_opt.state or p.dim() != q.dim():
            continue
        if any(a < b for a, b in zip(p.shape, q.shape, strict=True)):
            continue
        state = {}
        for key, value in old_opt.state[q].items():
            if torch.is_tensor(value) and value.shape == q.shape:
                grown = torch.zeros_like(p)
                grown[tuple(slice(0, s) for s in q.shape)] = value
                state[key] = grown
            else:
                state[key] = value.clone() if torch.is_tensor(value) else value
        new_opt.state[p] = state


def _forever(task: Task, batch_size: int, seed: int, device) -> Iterator:
    epoch = 0
    while True:
        yield from task.batches("train", batch_size, shuffle=True, seed=seed * 100_003 + epoch, device=device)
        epoch += 1


@torch.no_grad()
@torch.no_grad()
def evaluate(model: nn.Module, task: Task, split: str, device) -> tuple[float, float]:
    """(loss, metric) of the model on a whole split."""
    loss_fn = loss_function(task.loss)
    x, y = next(task.batches(split, None, device=device))
    out = model(x)
    return float(loss_fn(out, y)), float(task.metric(out, y))


def best_update_step(model: DagModel, batch, loss) -> DagModel:
    """The seeds' training phase: for each node in order, dW* with its own amplitude factor."""
    loss_fn = loss_function(loss)
    x, y = batch
    settings = ProposalSettings()
    for v in analyze(model.spec).hidden_and_outputs:
        stats = measure(model, [batch], loss, sites=[], output_factors=False)
        if v not in stats.g_sq_sums:
            continue
        upd = target_update(stats, model.spec, v, settings)
        deltas, col = {}, 0
        for s in upd.sources:
            width = 1 if s == ONE else stats.widths[s]
            block = upd.delta[:, col : col + width]
            deltas[f"nodes.{v}.bias" if s == ONE else f"edges.{s}__{v}.weight"] = (
                block.reshape(-1) if s == ONE else block
            )
            col += width
        base = {k: t.detach() for k, t in model.state_dict().items()}
        deltas = {k: d.to(base[k]) for k, d in deltas.items()}

        def f(g: float, base=base, deltas=deltas) -> float:
            w = {k: (t - g * deltas[k]) if k in deltas else t for k, t in base.items()}
            with torch.no_grad():
                return float(loss_fn(functional_call(model, w, (x,)), y))

        gamma, _, _ = line_search(f)
        if gamma > 0:
            spec, w = UpdateWeights(deltas, gamma).apply(model.spec, base)
            model.load_state_dict(w)
    return model


def train_steps(
    model: DagModel,
    opt: torch.optim.Optimizer | None,
    batches: Iterator,
    loss,
    steps: int,
    *,
    recorder: Recorder | None = None,
    seen: list | None = None,
) -> tuple[DagModel, float]:
    """``steps`` optimizer steps on the next ``batches`` (the seeds' best update when ``opt`` is
    None, which replaces the model); returns the model and the mean training loss. With an entered
    ``recorder`` each step's backward also adds its batch to the statistics; ``seen`` collects the
    batches."""
    loss_fn = loss_function(loss)
    total = 0.0
    for _ in range(steps):
        x, y = next(batches)
        if seen is not None:
            seen.append((x, y))
        if opt is None:
            model = best_update_step(model, (x, y), loss)
            with torch.no_grad():
                total += float(loss_fn(model(x), y))
        else:
            opt.zero_grad(set_to_none=True)
            value = loss_fn(model(x), y)
            recorder.backward(value) if recorder is not None else value.backward()
            opt.step()
            total += float(value.detach())
    return model, total / max(steps, 1)


@dataclass
class GrowthResult:
    model: DagModel
    history: list[dict[str, Any]]
    actions: list[Action] = field(default_factory=list)


def grow(
    spec_or_model,
    task: Task,
    config: GrowthConfig | None = None,
    *,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    on_checkpoint: Callable[[DagModel], None] | None = None,
    start_growth: int = 0,
) -> GrowthResult:
    """Train and grow ``spec_or_model`` on ``task``; ``on_event`` receives every history line and
    ``on_checkpoint`` the current model after every growth or rollback line (so that an interrupted
    run can be resumed from its last growth). The task is checked against the spec first
    (:func:`~dagrow.tasks.fit_task`)."""
    config = config or GrowthConfig()
    config.validate()
    torch.manual_seed(config.seed)
    device = torch.device(config.device)
    model = (
        spec_or_model if isinstance(spec_or_model, nn.Module) else compile(spec_or_model, seed=config.seed)
    )
    task = fit_task(task, model.spec)
    model = model.to(device)
    opt = make_optimizer(model, config)
    loss_fn = loss_function(task.loss)
    batches = _forever(task, config.batch_size, config.seed, device)
    options: dict[str, Any] = {"settings": config.natural_settings()} if config.strategy == "natural" else {}
    strategy = make_strategy(
        config.strategy,
        normalize=config.normalize,
        max_candidates=config.max_candidates,
        update=config.joint_update,
        **options,
    )
    history: list[dict[str, Any]] = []
    actions: list[Action] = []
    step = 0
    gen = torch.Generator().manual_seed(config.seed + 1)

    def emit(line: dict[str, Any]) -> None:
        history.append(line)
        if on_event:
            on_event(line)
        if on_checkpoint and line.get("event") in ("growth", "rollback"):
            on_checkpoint(model)

    def train(steps: int) -> float:
        nonlocal step, model
        model, mean = train_steps(model, opt, batches, task.loss, steps)
        step += steps
        return mean

    def train_recording(steps: int, sites) -> tuple[float, Statistics, tuple]:
        """``steps`` training steps whose last ones (growth_batch samples) record the statistics;
        returns the mean loss, the statistics and those steps' samples as the growth batch."""
        nonlocal step, model
        recorded = min(steps, -(-config.growth_batch // config.batch_size))
        first = train(steps - recorded)
        seen: list = []
        with Recorder(model, sites=sites, output_factors=False) as recorder:
            model, last = train_steps(model, opt, batches, task.loss, recorded, recorder=recorder, seen=seen)
        step += recorded
        mean = (first * (steps - recorded) + last * recorded) / steps
        batch = (torch.cat([x for x, _ in seen]), torch.cat([y for _, y in seen]))
        return mean, recorder.result(), batch

    def candidate(new_actions: list[Action], batch) -> tuple[DagModel, float]:
        """The model after ``new_actions`` (recompiled from the new spec) and its loss on ``batch``."""
        spec2, w2 = replay(model.spec, model.state_dict(), new_actions)
        new_model = compile(spec2, w2, dtype=next(model.parameters()).dtype, device=device)
        with torch.no_grad():
            return new_model, float(loss_fn(new_model(batch[0]), batch[1]))

    def adopt(new_model: DagModel, new_actions: list[Action]) -> None:
        """Continue with ``new_model``: optimizer rebuilt with the old state carried over."""
        nonlocal model, opt
        new_opt = make_optimizer(new_model, config)
        carry_optimizer_state(model, opt, new_model, new_opt)
        model, opt = new_model, new_opt
        actions.extend(new_actions)

    def validation() -> dict[str, float]:
        val_loss, val_metric = evaluate(model, task, "val", device)
        return {"val_loss": val_loss, f"val_{task.metric_name}": val_metric}

    def growth_batch():
        tx, ty = task.train.x, task.train.y
        idx = torch.randperm(len(tx), generator=gen)[: config.growth_batch]
        return tx[idx].to(device), ty[idx].to(device)

    def natural_rounds(strategy: Natural) -> None:
        """SENN's schedule (module docstring): evaluate after each round, add while the test passes."""
        nonlocal model, opt
        added_total, quiet, cooldown, rnd = start_growth, 0, 0, 0
        reason = f"max_rounds {config.max_rounds} reached"
        while rnd < config.max_rounds:
            started = time.perf_counter()
            train_loss = train(config.every)
            rnd += 1
            if cooldown:
                cooldown -= 1
                continue
            batch = growth_batch()
            added = 0
            while added < config.max_additions:
                n_params = analyze(model.spec).num_params()
                if config.growths is not None and added_total >= config.growths:
                    break
                sites = enumerate_sites(model.spec, include_unsupported=False)
                if config.max_params is not None and n_params >= config.max_params:
                    sites = []
                try:
                    ev = strategy.evaluate(model, batch, task.loss, sites)
                except StatsError as exc:  # training diverged: stop growing, report it, finish
                    emit({"event": "stop", "step": step, "round": rnd, "reason": str(exc)})
                    return
                line: dict[str, Any] = {
                    "event": "growth" if ev.grow else "evaluation",
                    "step": step,
                    "round": rnd,
                    "growth": added_total,
                    "strategy": "natural",
                    "train_loss": train_loss,
                    "loss_before": ev.state.loss,
                    "params_before": n_params,
                    "widths_before": {v: node.size for v, node in model.spec.nodes.items()},
                    **ev.report(),
                    "tau": config.tau,
                    "alpha": config.alpha,
                }
                if not ev.grow:
                    best = ev.best
                    why = (
                        "no site can grow"
                        if best is None
                        else f"below the thresholds (Delta eta / eta = {ev.relative:.3g}, "
                        f"tau = {config.tau}; Delta eta / E||dL/dy||^2 = {ev.absolute:.3g}, "
                        f"alpha = {config.alpha})"
                    )
                    line.update(site=best.site.id if best else None, reason=why)
                    emit(line)
                    break
                best = ev.best
                assert best is not None
                new_actions = strategy.actions(ev)
                new_model, after = candidate(new_actions, batch)
                line.update(
                    site=best.site.id,
                    kind=best.site.kind,
                    actions=[a.describe() for a in new_actions],
                    loss_after=after,
                    params=analyze(new_model.spec).num_params(),
                )
                if abs(after - ev.state.loss) > config.tolerance * abs(ev.state.loss) + 1e-12:
                    line.update(event="rollback", params=n_params, reason=f"the loss moved to {after:.6g}")
                    emit(line)
                    break
                adopt(new_model, new_actions)
                added += 1
                added_total += 1
                line.update(**validation(), seconds=time.perf_counter() - started)
                emit(line)
                if best.site.kind == "deepen":
                    break  # a new layer's score is realised only by training: one per round
            quiet = 0 if added else quiet + 1
            cooldown = config.cooldown if added else 0
            if config.growths is not None and added_total >= config.growths:
                reason = f"growths {config.growths} reached"
                break
            if quiet >= config.patience:
                reason = f"stopped growing: {quiet} evaluations in a row added nothing"
                break
        emit({"event": "stop", "step": step, "growth": added_total, "round": rnd, "reason": reason})
        train(config.final_steps or config.every)

    if isinstance(strategy, Natural):
        natural_rounds(strategy)
    for g in range(start_growth, config.growths + 1) if not isinstance(strategy, Natural) else ():
        assert config.growths is not None
        started = time.perf_counter()
        if g == config.growths:
            train(config.final_steps or config.every)
            break
        sites = enumerate_sites(model.spec, include_unsupported=False)
        if config.statistics == "training":
            train_loss, stats, batch = train_recording(config.every, sites)
        else:
            train_loss = train(config.every)
        n_params = analyze(model.spec).num_params()
        if config.max_params is not None and n_params >= config.max_params:
            emit(
                {
                    "event": "stop",
                    "step": step,
                    "growth": g,
                    "reason": f"max_params {config.max_params} reached",
                }
            )
            break
        if config.statistics == "pass":
            batch = growth_batch()
            stats = measure(model, [batch], task.loss, sites=sites, output_factors=False)
        proposals = propose_all(
            stats,
            sites,
            config.init,
            config.neurons,
            weights=model.state_dict(),
            settings=ProposalSettings(seed=config.seed + g),
        )
        if config.max_params is not None:
            proposals = [p for p in proposals if n_params + p.params_added <= config.max_params]
        decision = strategy.choose(model, proposals, batch, task.loss, g)
        line: dict[str, Any] = {
            "event": "growth",
            "step": step,
            "growth": g,
            "strategy": config.strategy,
            "init": config.init,
            "train_loss": train_loss,
        }
        if decision is None:
            line.update(site=None, reason="no site can grow (all skipped or over budget)")
            emit(line)
            continue
        p, amp = decision.proposal, decision.amplitude
        if config.init == "tiny" or config.joint_update:
            gamma = amp.gamma
        else:  # function-preserving init without the update: the loss does not depend on gamma
            gamma = 1.0
        if gamma == 0.0:
            line.update(
                site=p.site.id,
                kind=p.site.kind,
                gamma=0.0,
                reason="gamma* = 0: no amplitude lowers the loss on the growth batch",
            )
            emit(line)
            continue
        new_actions = proposal_actions(p, model.spec, gamma, update=config.joint_update)
        new_model, after = candidate(new_actions, batch)
        line.update(
            site=p.site.id,
            kind=p.site.kind,
            neurons=p.neurons,
            lambdas=[float(v) for v in p.lambdas[:8]],
            gamma=gamma,
            first_order_improvement=p.first_order_improvement,
            predicted_decrease=gamma * p.first_order_improvement,
            loss_before=amp.loss_before,
            loss_after=after,
            realised_decrease=amp.loss_before - after,
            params_before=n_params,
            params=analyze(new_model.spec).num_params(),
            candidates=len(decision.scores) or 1,
            note=decision.note,
        )
        if after > amp.loss_before + config.tolerance * abs(amp.loss_before):
            line.update(
                event="rollback",
                params=n_params,
                reason=f"loss rose from {amp.loss_before:.6g} to {after:.6g}",
            )
        else:
            adopt(new_model, new_actions)
        line.update(**validation(), seconds=time.perf_counter() - started)
        emit(line)
    test_loss, test_metric = evaluate(model, task, "test", device)
    val_loss, val_metric = evaluate(model, task, "val", device)
    emit(
        {
            "event": "end",
            "step": step,
            "params": analyze(model.spec).num_params(),
            "val_loss": val_loss,
            f"val_{task.metric_name}": val_metric,
            "test_loss": test_loss,
            f"test_{task.metric_name}": test_metric,
            "config": asdict(config),
        }
    )
    return GrowthResult(model, history, actions)


def train_static(spec_or_model, task: Task, config: GrowthConfig) -> GrowthResult:
    """The same schedule without growth (a baseline for comparisons): as many training steps as a run
    of ``config.growths`` growths takes."""
    if config.growths is None:
        raise ValueError("a static baseline copies the schedule of a number of growths: set growths")
    static = GrowthConfig(
        **{
            **asdict(config),
            "strategy": "naive" if config.strategy == "natural" else config.strategy,  # no rounds
            "growths": 0,
            "final_steps": config.every * (config.growths + 1)
            if config.final_steps is None
            else config.every * config.growths + config.final_steps,
        }
    )
    return grow(spec_or_model, task, static)
