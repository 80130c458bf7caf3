"""``dagrow.Grower``: grow a model from any PyTorch training loop.

::

    grower = dagrow.Grower("specs/mlp_sin50.yaml", strategy="amplitude_factor", loss="cross_entropy")
    model = grower.model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for epoch in range(10):
        for x, y in loader:                                   # the user's own loop
            opt.zero_grad(); F.cross_entropy(model(x), y).backward(); opt.step()
        model = grower.step(model, opt, growth_batches).model  # measure, plan, apply

One :meth:`Grower.step` is one growth step of the schedule: measure the statistics on ``batches`` (or
take those a :class:`~dagrow.recorder.Recorder` gathered during training), ask the strategy for a
:class:`~dagrow.plan.Plan`, apply its rewrites to (spec, weights), recompile, keep the growth only when
the loss on the batches did not rise (else it is rolled back and reported), and update the optimizer
in place (:mod:`dagrow.optim`): old state kept exactly, zeros for new entries. A ``rounds`` schedule
(SENN) may add several times in one step.

Under DistributedDataParallel, ``Grower(..., distributed=True)`` makes every step collective
(:mod:`dagrow.distributed`): each rank passes its own share of the growth batch, the statistics are
all-reduced, the line search's losses are global means, rank 0's plan is broadcast and replayed on every
rank; wrap the returned model in a new DDP (``dagrow.distributed.wrap``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .chunks import Chunks, chunked_loss
from .compile import DagModel, compile
from .config import GrowthConfig
from .graph import num_params
from .norms import running_stats_kept
from .optim import adopt_parameters, check_optimizer
from .plan import Plan
from .rewrite import Action, replay
from .schedule import Schedule
from .sites import enumerate_sites
from .spec import GraphSpec, load_spec
from .stats import LossFn, Statistics, StatsError, loss_function, measure

if TYPE_CHECKING:
    from .distributed import Ranks

Batch = tuple[Tensor, Tensor]


@dataclass
class GrowthStep:
    """What one :meth:`Grower.step` did: the model to continue with, the actions applied (in order),
    the plans made, and one history line per plan (``events``, JSON-ready)."""

    model: DagModel
    actions: list[Action] = field(default_factory=list)
    plans: list[Plan] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def grew(self) -> bool:
        return bool(self.actions)

    @property
    def report(self) -> dict[str, Any]:
        """JSON-ready: every plan (with every site it scored) and every history line."""
        return {"plans": [p.to_dict() for p in self.plans], "events": self.events}


def _as_batches(batches: Iterable[Batch] | Batch) -> list[Batch]:
    if isinstance(batches, tuple) and len(batches) == 2 and all(isinstance(t, Tensor) for t in batches):
        return [batches]  # type: ignore[list-item]
    out = []
    for b in batches:  # type: ignore[union-attr]
        if not (isinstance(b, tuple | list) and len(b) == 2):
            raise TypeError("Grower.step: batches must be (inputs, targets) pairs, e.g. a DataLoader")
        out.append((b[0], b[1]))
    if not out:
        raise ValueError("Grower.step: no batches given (the statistics and the line search need samples)")
    return out


class Grower:
    """Grows one model; see the module docstring.

    ``spec_or_model``: a spec (GraphSpec, YAML text or a path), or a compiled :class:`DagModel`.
    ``loss``: a registered loss name (``mse``, ``cross_entropy``) or a callable ``(output, target) ->
    mean loss``. ``config`` holds every setting (:class:`~dagrow.config.GrowthConfig`); keywords override
    it (``strategy``, ``init``, ``neurons``, ``growths``, ...). ``group_of(name)`` picks the optimizer
    param group of a new parameter (default: the first group holding the model's parameters).
    ``distributed``: True (or a :class:`~dagrow.distributed.Ranks`) inside an initialised process group
    makes every :meth:`step` collective: call it on every rank with that rank's share of the batches."""

    def __init__(
        self,
        spec_or_model: GraphSpec | DagModel | str | Path,
        *,
        loss: str | LossFn = "mse",
        config: GrowthConfig | None = None,
        schedule: Schedule | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        group_of: Callable[[str], int] | None = None,
        distributed: bool | Ranks | None = False,
        **settings: Any,
    ) -> None:
        config = config or GrowthConfig()
        self.config = config.replace(**settings) if settings else config
        loss_function(loss)  # a clear error now rather than at the first growth
        self.loss = loss
        if isinstance(spec_or_model, nn.Module):
            if not isinstance(spec_or_model, DagModel):
                raise TypeError("Grower needs a model compiled by dagrow (dagrow.compile) or a spec")
            self.model = spec_or_model.to(device=device, dtype=dtype)
        else:
            spec = spec_or_model if isinstance(spec_or_model, GraphSpec) else load_spec(spec_or_model)
            self.model = compile(spec, seed=self.config.seed, dtype=dtype, device=device)
        self.schedule = schedule or self.config.make_schedule()
        self.strategy = self.config.make_strategy()
        self.group_of = group_of
        self.actions: list[Action] = []  # every action applied, in order
        self.diverged: str | None = None  # set when a statistics pass met a non-finite loss
        self.ranks: Ranks | None = None
        if distributed:
            from .distributed import Ranks

            self.ranks = distributed if isinstance(distributed, Ranks) else Ranks()

    @property
    def finished(self) -> bool:
        """The schedule has ended (its ``reason`` says why)."""
        return self.schedule.finished

    def step(
        self,
        model: nn.Module | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        batches: Iterable[Batch] | Batch | None = None,
        *,
        statistics: Statistics | None = None,
        evaluate: Callable[[DagModel], Mapping[str, Any]] | None = None,
        info: Mapping[str, Any] | None = None,
        validation: Callable[[DagModel], float] | None = None,
    ) -> GrowthStep:
        """One growth step (module docstring). ``batches``: (inputs, targets) pairs (any iterable, a
        DataLoader, or one pair), used for the statistics, the line search and the rollback check;
        ``statistics``: those recorded during training (then ``batches`` serve the rest). ``evaluate``
        adds its figures to the history line of every growth; ``info`` is copied into every line.
        ``validation(model)``: the model's loss on held-out data, read by a schedule with a validation
        rule (``rounds``: ``val_patience``) before anything is measured; without it that rule is off."""
        model = self._current(model)
        check_optimizer(optimizer, model)
        started = time.perf_counter()
        result = GrowthStep(model)
        if not self.schedule.due():
            return result
        checked: dict[str, Any] = {}
        if validation is not None and self.schedule.uses_validation:
            value = float(validation(model))
            if self.ranks is not None:  # every rank takes the same decision
                value = self.ranks.mean(value)
            checked = self.schedule.validated(value) or {}
            if self.schedule.finished:  # growth stops here: nothing is measured
                stop = {"event": self.schedule.idle_event, **(info or {}), "round": self.schedule.rounds}
                stop.update(growth=self.schedule.growth, strategy=self.config.strategy, **checked)
                result.events.append({**stop, "reason": self.schedule.reason})
                return result
        if batches is None:
            raise ValueError(
                "Grower.step needs batches: the samples to measure and to search the amplitude on"
            )
        ref = next(iter(model.parameters()))
        pairs = _as_batches(batches)
        batch: Any
        if self.config.growth_batch == "all" and self.ranks is None and self.strategy.needs_statistics:
            # the whole training set: streamed chunk by chunk, never concatenated
            batch = Chunks((x.to(ref.device), y.to(ref.device)) for x, y in pairs)
        else:
            xs, ys = zip(*pairs, strict=True)
            batch = torch.cat(xs).to(ref.device), torch.cat(ys).to(ref.device)
        loss = self.loss  # under DDP: the mean over every rank's share (a collective)
        if self.ranks is not None:
            if self.strategy.needs_statistics:
                loss = self.ranks.global_loss(self.loss)
            else:  # SENN measures its own gradients: every rank works on the whole growth batch
                batch = self.ranks.gather(batch)
        attempts = added = 0
        for attempt in range(self.schedule.additions):
            params = num_params(model.spec)
            line: dict[str, Any] = {
                "event": "growth",
                **(info or {}),
                "round": self.schedule.rounds,
                "growth": self.schedule.growth
                + (attempts if self.schedule.idle_event == "growth" else added),
                "strategy": self.config.strategy,
                "init": self.config.init,
                **checked,
            }
            if self.schedule.over_budget(params):
                result.events.append({**line, "event": "stop", "reason": self.schedule.reason})
                break
            sites = enumerate_sites(model.spec, include_unsupported=False)
            decided = time.perf_counter()
            try:
                stats = statistics if attempt == 0 else None
                if self.ranks is not None and self.strategy.needs_statistics:
                    stats = self._global_statistics(model, batch, sites, stats)
                plan = self.strategy.plan(  # a plan never moves a batch norm's statistics
                    model,
                    batch,
                    loss,
                    sites,
                    statistics=stats,
                    growth=line["growth"],
                    budget=self.schedule.budget(params),
                )
            except StatsError as exc:  # training diverged: stop growing and say why
                self.diverged = self.schedule.reason = str(exc)
                result.events.append({**line, "event": "stop", "reason": str(exc)})
                break
            if self.ranks is not None:
                plan = self.ranks.broadcast_plan(plan)
            line["decision_seconds"] = time.perf_counter() - decided  # statistics, proposals, search
            attempts += 1
            result.plans.append(plan)
            line.update(site=plan.site, kind=plan.kind, loss_before=plan.loss_before, params_before=params)
            line.update(widths_before={v: node.size for v, node in model.spec.nodes.items()}, **plan.figures)
            if not plan.grows:
                line.update(event=self.schedule.idle_event, reason=plan.reason)
                result.events.append(line)
                break
            new_model, after = self._candidate(model, plan.actions, batch, loss)
            before = plan.loss_before if plan.loss_before is not None else after
            line.update(actions=[a.describe() for a in plan.actions], loss_after=after)
            line.update(realised_decrease=before - after, note=plan.reason)
            tol = self.config.tolerance * abs(before)
            if plan.preserving and abs(after - before) > tol + 1e-12:
                line.update(event="rollback", params=params, reason=f"the loss moved to {after:.6g}")
            elif not plan.preserving and after > before + tol:
                line.update(
                    event="rollback", params=params, reason=f"loss rose from {before:.6g} to {after:.6g}"
                )
            else:
                adopt_parameters(model, new_model, optimizer, group_of=self.group_of)
                model = new_model
                added += 1
                result.actions.extend(plan.actions)
                line.update(params=num_params(model.spec))
            if evaluate is not None:
                line.update(evaluate(model))
            line.update(seconds=time.perf_counter() - started)
            result.events.append(line)
            if line["event"] == "rollback" or plan.kind == "deepen":
                break  # a new layer's score is realised only by training: one per round
        self.schedule.done(attempts, added)
        self.model = result.model = model
        self.actions.extend(result.actions)
        return result

    def _current(self, model: nn.Module | None) -> DagModel:
        if model is None:
            return self.model
        inner = getattr(model, "module", model)  # DistributedDataParallel and similar wrappers
        if not isinstance(inner, DagModel):
            raise TypeError("Grower.step: pass the model that Grower.model (or the last step) returned")
        return inner

    def _global_statistics(
        self, model: DagModel, batch: Batch, sites: list, statistics: Statistics | None
    ) -> Statistics:
        """The statistics of every rank's share, all-reduced; a rank whose share cannot be measured
        (non-finite loss) makes every rank raise StatsError instead of leaving them in the all-reduce."""
        assert self.ranks is not None
        failure: StatsError | None = None
        if statistics is None:
            try:
                statistics = measure(model, [batch], self.loss, sites=sites, output_factors=False)
            except StatsError as exc:
                failure = exc
        if self.ranks.mean(1.0 if failure else 0.0) > 0:
            raise failure or StatsError("another rank's share of the growth batch has a non-finite loss")
        assert statistics is not None
        return self.ranks.all_reduce(statistics)

    def _candidate(
        self, model: DagModel, actions: list[Action], batch: Batch | Chunks, loss: str | LossFn
    ) -> tuple[DagModel, float]:
        """The model after ``actions`` (recompiled from the new spec) and its loss on ``batch`` (the
        mean over its chunks when it is :class:`~dagrow.chunks.Chunks`)."""
        spec, weights = replay(model.spec, model.state_dict(), actions)
        ref = next(iter(model.parameters()))
        new_model = compile(spec, weights, dtype=ref.dtype, device=ref.device)
        new_model.train(model.training)  # the grown model keeps the mode (train or eval) of the model
        with torch.no_grad(), running_stats_kept(new_model):
            return new_model, chunked_loss(new_model, batch, loss_function(loss))

    def state_dict(self) -> dict[str, Any]:
        """The grower's own state (JSON): settings, schedule, the strategy's memory (natural: the
        reference E||dL/dy||^2 and the rejected deepenings), and the actions applied so far."""
        return {
            "config": self.config.to_dict(),
            "schedule": self.schedule.state_dict(),
            "strategy": self.strategy.state_dict(),
            "diverged": self.diverged,
            "actions": [a.to_dict() for a in self.actions],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        from .rewrite import action_from_dict

        self.schedule.load_state_dict(dict(state["schedule"]))
        self.strategy.load_state_dict(dict(state.get("strategy") or {}))
        self.diverged = state.get("diverged")
        self.actions = [action_from_dict(a) for a in state.get("actions", [])]
