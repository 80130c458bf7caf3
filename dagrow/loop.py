"""The train <-> grow loop (seed 001, Algorithm 1, with the usual practice around it).

Each round trains ``every`` steps (SGD or Adam on minibatches, or the seeds' "best update": dW* per
node applied with its own amplitude), then measures the statistics on a growth batch, asks the
strategy for a site, applies the chosen proposal at its gamma* and recompiles the model from the
new spec. The optimizer is rebuilt over the new parameters and keeps its state for the old entries
(new entries start at zero). A growth whose loss on the growth batch is worse than before by more
than ``tolerance`` (relative) is rolled back and logged. Every growth appends one line to the
history.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from torch.func import functional_call

from .compile import DagModel, compile
from .graph import analyze
from .growth.amplitude import line_search, proposal_actions
from .growth.proposals import ProposalSettings, propose_all, target_update
from .planner import make_strategy
from .rewrite import Action, UpdateWeights, replay
from .sites import ONE, enumerate_sites
from .stats import loss_function, measure
from .tasks import Task


@dataclass
class GrowthConfig:
    """Settings of a growth run (all reported in the history)."""

    strategy: str = "amplitude_factor"
    init: str = "tiny"
    growths: int = 10
    max_params: int | None = None
    every: int = 200
    neurons: int = 1
    optimizer: Literal["sgd", "adam", "best_update"] = "adam"
    lr: float = 1e-2
    batch_size: int = 128
    growth_batch: int = 1024
    joint_update: bool = False
    normalize: bool = False
    max_candidates: int = 8
    tolerance: float = 1e-3
    final_steps: int | None = None  # training after the last growth (default: every)
    seed: int = 0
    device: str = "cpu"

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
        if self.growths < 0:
            raise ValueError("growths must be >= 0")


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
        stats = measure(model, [batch], loss, sites=[])
        if v not in stats.g_sums:
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
    start_growth: int = 0,
) -> GrowthResult:
    """Train and grow ``spec_or_model`` on ``task``; ``on_event`` receives every history line."""
    config = config or GrowthConfig()
    config.validate()
    torch.manual_seed(config.seed)
    device = torch.device(config.device)
    model = (
        spec_or_model if isinstance(spec_or_model, nn.Module) else compile(spec_or_model, seed=config.seed)
    )
    model = model.to(device)
    opt = make_optimizer(model, config)
    loss_fn = loss_function(task.loss)
    batches = _forever(task, config.batch_size, config.seed, device)
    strategy = make_strategy(
        config.strategy,
        normalize=config.normalize,
        max_candidates=config.max_candidates,
        update=config.joint_update,
    )
    history: list[dict[str, Any]] = []
    actions: list[Action] = []
    step = 0
    gen = torch.Generator().manual_seed(config.seed + 1)

    def emit(line: dict[str, Any]) -> None:
        history.append(line)
        if on_event:
            on_event(line)

    def train(steps: int) -> float:
        nonlocal step, model
        total = 0.0
        for _ in range(steps):
            x, y = next(batches)
            if opt is None:
                model = best_update_step(model, (x, y), task.loss)
                with torch.no_grad():
                    total += float(loss_fn(model(x), y))
            else:
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model(x), y)
                loss.backward()
                opt.step()
                total += float(loss.detach())
            step += 1
        return total / max(steps, 1)

    for g in range(start_growth, config.growths + 1):
        started = time.perf_counter()
        train_loss = train(config.every if g < config.growths else (config.final_steps or config.every))
        if g == config.growths:
            break
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
        tx, ty = task.train.x, task.train.y
        idx = torch.randperm(len(tx), generator=gen)[: config.growth_batch]
        batch = (tx[idx].to(device), ty[idx].to(device))
        sites = enumerate_sites(model.spec, include_unsupported=False)
        stats = measure(model, [batch], task.loss, sites=sites)
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
        spec2, w2 = replay(model.spec, model.state_dict(), new_actions)
        new_model = compile(spec2, w2).to(device=device, dtype=next(model.parameters()).dtype)
        with torch.no_grad():
            after = float(loss_fn(new_model(batch[0]), batch[1]))
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
            params=analyze(spec2).num_params(),
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
            new_opt = make_optimizer(new_model, config)
            carry_optimizer_state(model, opt, new_model, new_opt)
            model, opt = new_model, new_opt
            actions += new_actions
        val_loss, val_metric = evaluate(model, task, "val", device)
        line.update(
            val_loss=val_loss,
            **{f"val_{task.metric_name}": val_metric},
            seconds=time.perf_counter() - started,
        )
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
    """The same schedule without growth (a baseline for comparisons)."""
    static = GrowthConfig(
        **{
            **asdict(config),
            "growths": 0,
            "final_steps": config.every * (config.growths + 1)
            if config.final_steps is None
            else config.every * config.growths + config.final_steps,
        }
    )
    return grow(spec_or_model, task, static)
