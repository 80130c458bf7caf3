"""Depth-selection strategies: each turns the statistics of a network into a :class:`~dagrow.plan.Plan`.

Every strategy has the same interface, :meth:`Strategy.plan`, and is picked by name from
:data:`STRATEGIES` (the CLI help, the config schema and the contract tests list them from there):

- ``naive``: round robin over the growable sites (seed 001, Algorithm 2), in enumeration order;
- ``max_eigenvalue``: argmax of lambda_1 (the first-order information of the best neuron);
- ``amplitude_factor``: argmax of Delta_l = L(0) - L(gamma*) after a line search per candidate. When
  there are more than ``max_candidates`` sites only the best ones by first-order improvement (the
  exact one-sided figure of :mod:`dagrow.growth.first_order` for kinked activations) are searched, and
  the plan says so;
- ``natural`` (SENN, :mod:`dagrow.growth.natural`): the site whose best candidate raises the natural
  expansion score eta the most (a deepen site's rise divided by the depth cost), and only when
  ``Delta eta / eta > tau`` and ``Delta eta / E||dL/dy||^2 > alpha``; otherwise an empty plan. Its
  actions are function-preserving (new neurons with zero fan-out, or a deepening).

The first three score the proposals of one statistics pass (:class:`ProposalStrategy`); ``normalize``
divides every score by the number of parameters the site adds. The chosen proposal always gets its own
amplitude search, so each of them reports gamma* and Delta_l. Proposals become actions in one place,
:mod:`dagrow.growth.actions`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .chunks import chunks_of
from .compile import compile
from .graph import analyze
from .growth.actions import proposal_actions
from .growth.amplitude import AmplitudeResult, GrownFamily, amplitude_factor, shared_forwards
from .growth.first_order import exact_first_order
from .growth.natural import (
    NaturalProposal,
    NaturalSettings,
    NaturalState,
    check_candidates,
    observe,
    passes,
    score_sites,
    split_batch,
)
from .growth.proposals import Proposal, ProposalSettings, propose_all
from .growth.shared_forward import SharedForward
from .norms import running_stats_kept
from .plan import Plan, SiteScore
from .registry import Registry
from .rewrite import replay
from .sites import Site
from .spec import GraphSpec
from .stats import LossFn, Statistics, measure

Batch = tuple[Any, Any]


@dataclass
class Decision:
    """The proposal a proposal strategy chose, with its amplitude and what was compared."""

    proposal: Proposal
    amplitude: AmplitudeResult
    family: GrownFamily
    scores: dict[str, float] = field(default_factory=dict)
    note: str = ""


def growable(proposals: list[Proposal]) -> list[Proposal]:
    return [p for p in proposals if p.skipped is None and (p.neurons > 0 or p.edge_weight is not None)]


def keeps_running_stats(plan: Callable[..., Plan]) -> Callable[..., Plan]:
    """Make a strategy's ``plan`` leave the running statistics of the model's norms as they were:
    its statistics pass, shared forward and line searches run the model (in training mode a batch
    norm would move its running mean and variance towards every candidate it evaluates)."""

    @functools.wraps(plan)
    def wrapped(self, model, *args, **kwargs) -> Plan:
        with running_stats_kept(model):
            return plan(self, model, *args, **kwargs)

    return wrapped


class Strategy(ABC):
    """Turns a network, a growth batch and its growable sites into a :class:`Plan` (a plan never
    changes the model: its norms' running statistics included, :func:`keeps_running_stats`)."""

    name: str = ""
    summary: str = ""
    needs_statistics: bool = True  # reads the statistics of dagrow.stats (measured or recorded)
    preserving: bool = False  # its actions leave the function unchanged

    @abstractmethod
    def plan(
        self,
        model: nn.Module,
        batch: Batch,
        loss: str | LossFn,
        sites: Sequence[Site],
        *,
        statistics: Statistics | None = None,
        growth: int = 0,
        budget: int | None = None,
    ) -> Plan:
        """The plan for growth number ``growth``: ``statistics`` are those of ``model`` on ``batch``
        (measured here when None); ``budget`` is how many parameters may still be added (None: no
        limit)."""

    def state_dict(self) -> dict[str, Any]:
        """What the strategy remembers between growth steps (JSON; saved in checkpoints): nothing by
        default."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state:
            raise ValueError(f"strategy {self.name} keeps no state, got {sorted(state)}")


class ProposalStrategy(Strategy):
    """Chooses one proposal among those of a statistics pass (TINY, GradMax, NORTH, random, mirrored)."""

    def __init__(
        self,
        *,
        init: str = "tiny",
        neurons: int = 1,
        normalize: bool = False,
        max_candidates: int = 8,
        update: bool = True,
        seed: int = 0,
        zero_gamma: str = "skip",
        round_robin: str = "growable",
    ) -> None:
        if zero_gamma not in ("skip", "add"):
            raise ValueError(f"zero_gamma is skip or add, got {zero_gamma!r}")
        if round_robin not in ("growable", "slides"):
            raise ValueError(f"round_robin is growable or slides, got {round_robin!r}")
        self.init, self.neurons, self.seed = init, neurons, seed
        self.zero_gamma, self.round_robin = zero_gamma, round_robin
        self.normalize, self.max_candidates, self.update = normalize, max_candidates, update

    def _norm(self, p: Proposal, score: float) -> float:
        return score / max(p.params_added, 1) if self.normalize else score

    def _search(
        self, model: nn.Module, p: Proposal, batch, loss, forward: list[SharedForward] | None = None
    ) -> tuple[AmplitudeResult, GrownFamily]:
        return amplitude_factor(model, p, batch, loss, update=self.update, forward=forward)

    @abstractmethod
    def choose(
        self,
        model: nn.Module,
        proposals: list[Proposal],
        batch,
        loss: str | LossFn,
        step: int,
        forward: list[SharedForward] | None = None,
    ) -> Decision | None:
        """The decision for growth number ``step`` (None when no site can grow); ``forward``: the
        model's shared forward on ``batch`` (made when needed if None)."""

    @keeps_running_stats
    def plan(self, model, batch, loss, sites, *, statistics=None, growth=0, budget=None) -> Plan:
        sites = list(sites)
        # a growth batch in chunks (growth_batch: all) is streamed through one accumulator
        stats = statistics or measure(model, chunks_of(batch), loss, sites=sites, output_factors=False)
        settings = ProposalSettings(seed=self.seed + growth)
        proposals = propose_all(
            stats, sites, self.init, self.neurons, weights=model.state_dict(), settings=settings
        )
        if budget is not None:
            over = f"adds more than the {budget} parameters left in the budget"
            proposals = [
                p if p.skipped or p.params_added <= budget else dataclasses.replace(p, skipped=over)
                for p in proposals
            ]
        # one forward of the model on the batch serves the exact first-order figures of kinked
        # activations (growth/first_order.py) and every line search of the decision
        forward = shared_forwards(model, batch)  # one per chunk of the batch (growth_batch: all)
        proposals = exact_first_order(proposals, model, batch, loss, forward=forward)
        decision = self.choose(model, proposals, batch, loss, growth, forward)
        scored = [
            SiteScore(
                p.site.id,
                p.site.kind,
                decision.scores.get(p.site.id) if decision else None,
                p.params_added,
                p.skipped,
            )
            for p in proposals
        ]
        if decision is None:
            return Plan(self.name, scores=scored, reason="no site can grow (all skipped or over budget)")
        p, amp = decision.proposal, decision.amplitude
        # a function-preserving init without the update: the loss does not depend on gamma
        gamma = amp.gamma if self.init == "tiny" or self.update else 1.0
        figures = {
            "init": self.init,
            "neurons": p.neurons,
            "lambdas": [float(v) for v in p.lambdas[:8]],
            "gamma": gamma,
            "first_order_improvement": p.first_order_improvement,
            "first_order_exact": p.first_order_exact,
            "sum_lambda_sq": p.sum_lambda_sq,
            "predicted_decrease": gamma * p.first_order_improvement,
            "delta_l": amp.delta_l,
            "params_added": p.params_added,
            "candidates": len(decision.scores) or 1,
            "note": decision.note,
        }
        common = dict(site=p.site.id, kind=p.site.kind, loss_before=amp.loss_before, scores=scored)
        if gamma == 0.0 and self.zero_gamma == "skip":
            why = "gamma* = 0: no amplitude lowers the loss on the growth batch"
            return Plan(self.name, reason=why, figures=figures, **common)  # type: ignore[arg-type]
        actions = proposal_actions(p, model.spec, gamma, update=self.update)  # type: ignore[arg-type]
        return Plan(self.name, actions, reason=decision.note, figures=figures, **common)  # type: ignore[arg-type]


STRATEGIES: Registry[type[Strategy]] = Registry("strategy")


@STRATEGIES.register("naive", "round robin over the growable sites (seed 001, Algorithm 2)")
class Naive(ProposalStrategy):
    name = "naive"

    def choose(self, model, proposals, batch, loss, step, forward=None):
        cands = growable(proposals)
        if not cands:
            return None
        if self.round_robin == "slides":  # depth = t mod deep + 1 over every site, t = step + 1 from 1
            deep = len(proposals)
            t = step + 1
            first = t % deep
            # a site that cannot grow now (max_width, budget) passes its turn to the next one that can
            can = {id(q) for q in cands}
            where = next(i % deep for i in range(first, first + deep) if id(proposals[i % deep]) in can)
            p = proposals[where]
            note = f"round robin (slides): depth = t mod deep + 1 = {first + 1} of {deep} (t = {t})"
            if where != first:
                note += f", which cannot grow: site {where + 1} instead"
            amp, fam = self._search(model, p, batch, loss)
            return Decision(p, amp, fam, {p.site.id: float(where)}, note=note)
        p = cands[step % len(cands)]
        amp, fam = self._search(model, p, batch, loss, forward)
        note = f"round robin: site {step % len(cands) + 1} of {len(cands)}"
        return Decision(p, amp, fam, {p.site.id: float(step % len(cands))}, note=note)


@STRATEGIES.register("max_eigenvalue", "argmax of the first bottleneck eigenvalue lambda_1")
class MaxEigenvalue(ProposalStrategy):
    name = "max_eigenvalue"

    def choose(self, model, proposals, batch, loss, step, forward=None):
        cands = [p for p in growable(proposals) if p.lambdas.numel()]
        if not cands:
            return None
        scores = {p.site.id: self._norm(p, float(p.lambdas[0])) for p in cands}
        p = max(cands, key=lambda q: scores[q.site.id])
        amp, fam = self._search(model, p, batch, loss, forward)
        return Decision(p, amp, fam, scores)


@STRATEGIES.register(
    "amplitude_factor", "argmax of Delta_l = L(0) - L(gamma*) after a line search per candidate site"
)
class AmplitudeFactor(ProposalStrategy):
    name = "amplitude_factor"

    def choose(self, model, proposals, batch, loss, step, forward=None):
        cands = sorted(growable(proposals), key=lambda p: -self._norm(p, p.first_order_improvement))
        if not cands:
            return None
        note = ""
        if len(cands) > self.max_candidates:
            note = f"searched the top {self.max_candidates} of {len(cands)} sites by first-order improvement"
            cands = cands[: self.max_candidates]
        best: Decision | None = None
        scores: dict[str, float] = {}
        forward = forward or shared_forwards(model, batch)  # one forward pass (per chunk) for every candidate
        for p in cands:
            amp, fam = self._search(model, p, batch, loss, forward)
            scores[p.site.id] = self._norm(p, amp.delta_l)
            if best is None or scores[p.site.id] > scores[best.proposal.site.id]:
                best = Decision(p, amp, fam, note=note)
        assert best is not None
        best.scores = scores
        return best


@dataclass
class NaturalEvaluation:
    """One evaluation of the natural strategy: eta, every site's best candidate and the verdict."""

    state: NaturalState
    proposals: list[NaturalProposal]  # best score first
    grow: bool
    relative: float  # best score / eta
    absolute: float  # best score / E||dL/dy||^2
    batch: Any = None  # the samples of ``state`` (the held-out part of the growth batch)
    loss: float | None = None  # the mean loss on the whole growth batch
    images: list[str] = field(default_factory=list)  # sites on image nodes, not scored

    @property
    def best(self) -> NaturalProposal | None:
        return self.proposals[0] if self.proposals else None

    def report(self) -> dict[str, Any]:
        """The figures of this evaluation."""
        best = self.best
        return {
            "eta": self.state.eta,
            "eta_per_node": self.state.per_node(),
            "grad_sq": self.state.grad_sq,
            "delta_eta": best.delta_eta if best else None,
            "score": best.score if best else None,
            "ratio": self.relative,
            "abs_ratio": self.absolute,
            "candidates": {p.site.id: p.score for p in self.proposals},
            "best": best.to_dict() if best else None,
        }


@STRATEGIES.register(
    "natural", "SENN: grow where the natural expansion score rises by more than tau and alpha, and only then"
)
class Natural(Strategy):
    name = "natural"
    needs_statistics = False
    preserving = True

    def __init__(self, *, settings: NaturalSettings | None = None) -> None:
        self.settings = settings or NaturalSettings()
        self.settings.validate()
        self.reference_grad_sq: float | None = None  # E||dL/dy||^2 at the first evaluation
        self.rejected: list[str] = []  # deepen sites whose insertion did not raise eta, in order

    def state_dict(self) -> dict[str, Any]:
        return {"reference_grad_sq": self.reference_grad_sq, "rejected_deepenings": list(self.rejected)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        unknown = set(state) - {"reference_grad_sq", "rejected_deepenings"}
        if unknown:
            raise ValueError(f"natural strategy state has unknown fields {sorted(unknown)}")
        self.reference_grad_sq = state.get("reference_grad_sq")
        self.rejected = list(state.get("rejected_deepenings", []))

    def reference(self, state: NaturalState) -> float:
        """The E||dL/dy||^2 the alpha test divides by (``alpha_reference``): the first evaluation's,
        remembered, or the state's own."""
        if self.settings.alpha_reference == "current":
            return state.grad_sq
        if self.reference_grad_sq is None and state.grad_sq > 0:
            self.reference_grad_sq = state.grad_sq
        return self.reference_grad_sq if self.reference_grad_sq is not None else state.grad_sq

    def evaluate(
        self, model: nn.Module, batch, loss: str | LossFn, sites: Iterable[Site]
    ) -> NaturalEvaluation:
        """Search every site (but the deepenings already rejected) on the first part of ``batch``,
        measure eta and each candidate's Delta eta again on the held-out rest (``holdout``), and apply
        the when-to-grow test to the best candidate there."""
        search_batch, check_batch = split_batch(batch, self.settings.holdout)
        search = observe(model, search_batch, loss, self.settings)
        state = search if check_batch is search_batch else observe(model, check_batch, loss, self.settings)
        reference = self.reference(state)
        sg = analyze(model.spec)  # type: ignore[arg-type]

        # SENN's factors cover flat nodes: image sites are left to the proposal strategies
        def on_images(s: Site) -> bool:
            return not all(
                sg.is_flat(v) for v in (*s.targets, *(s.pair or ()), *([s.node] if s.node else []))
            )

        flat = [s for s in sites if s.id not in self.rejected and not on_images(s)]
        images = [s.id for s in sites if on_images(s)]
        found = score_sites(search, flat)
        if state is not search:  # the search's best fits its own samples: judge it on the others
            found = check_candidates(state, found)
        loss_all = state.loss
        if state is not search:
            loss_all = (search.n * search.loss + state.n * state.loss) / (search.n + state.n)
        if not found:
            return NaturalEvaluation(state, [], False, 0.0, 0.0, check_batch, loss_all, images)
        ok, rel, absolute = passes(state, found[0], reference)
        return NaturalEvaluation(state, found, ok, rel, absolute, check_batch, loss_all, images)

    def actions(self, best: NaturalProposal, model: nn.Module):
        if self.settings.construction == "identity":
            best = dataclasses.replace(best, basis=None, shift=None)
        return proposal_actions(best, model.spec)  # type: ignore[arg-type]

    def _grown(self, p: NaturalProposal, model: nn.Module) -> tuple[GraphSpec, dict[str, Any]]:
        weights = {k: v.detach() for k, v in model.state_dict().items()}
        return replay(model.spec, weights, self.actions(p, model))  # type: ignore[arg-type]

    def _params_added(self, p: NaturalProposal, model: nn.Module) -> int:
        """Parameters the candidate's rewrite adds: fan-in (with bias) and fan-out of new neurons, or
        for a deepening (built with this strategy's construction) the grown spec's count minus the
        current one."""
        spec: GraphSpec = model.spec  # type: ignore[assignment]
        sg = analyze(spec)
        if p.site.kind in ("widen", "node") and p.fan_in is not None:
            K = p.fan_in.shape[0]
            targets = p.site.targets if p.site.kind == "widen" else (p.site.pair[1],)  # type: ignore[index]
            norm = spec.nodes[p.site.node].norm if p.site.kind == "widen" else None  # type: ignore[index]
            added = norm.num_params(K) if norm is not None else 0  # new channels of a norm's affine
            return p.fan_in.numel() + K * sum(math.prod(sg.shapes[w]) for w in targets) + added
        return analyze(self._grown(p, model)[0]).num_params() - sg.num_params()

    def realised_rise(self, p: NaturalProposal, model: nn.Module, batch, loss, state: NaturalState) -> float:
        """eta of the network grown by the (function-preserving) candidate minus eta now, on the same
        batch: what the insertion itself raised the score by."""
        spec, weights = self._grown(p, model)
        ref = next(iter(model.parameters()))
        grown = compile(spec, weights, dtype=ref.dtype, device=ref.device)
        return observe(grown, batch, loss, self.settings).eta - state.eta

    def _choose(self, ev: NaturalEvaluation, model, batch, loss) -> tuple[NaturalProposal | None, list[dict]]:
        """The best candidate that passes the when-to-grow test; a deepening must also raise eta by
        as much when inserted (its score is a promise about training), else it is rejected for good
        and the next candidate is considered."""
        reference = self.reference(ev.state)
        rejected: list[dict] = []
        for p in ev.proposals:
            if not passes(ev.state, p, reference)[0]:
                break  # sorted by score, and both tests are monotone in it
            if p.site.kind != "deepen":
                return p, rejected
            rise = self.realised_rise(p, model, ev.batch if ev.batch is not None else batch, loss, ev.state)
            ok, rel, absolute = passes(ev.state, rise, reference)
            if ok:
                return p, rejected
            self.rejected.append(p.site.id)
            rejected.append(
                {"site": p.site.id, "realised_delta_eta": rise, "ratio": rel, "abs_ratio": absolute}
            )
        return None, rejected

    @keeps_running_stats
    def plan(self, model, batch, loss, sites, *, statistics=None, growth=0, budget=None) -> Plan:
        sites = list(sites)
        if budget is not None and budget <= 0:
            sites = []
        ev = self.evaluate(model, batch, loss, sites)
        s = self.settings
        chosen, rejected = self._choose(ev, model, batch, loss) if ev.grow else (None, [])
        best = chosen or ev.best
        scored = [
            SiteScore(p.site.id, p.site.kind, p.score, self._params_added(p, model)) for p in ev.proposals
        ]
        figures = {
            **ev.report(),
            "tau": s.tau,
            "alpha": s.alpha,
            "alpha_reference": s.alpha_reference,
            "reference_grad_sq": self.reference(ev.state),
            "rejected_deepenings": rejected,
        }
        common = dict(
            site=best.site.id if best else None,
            kind=best.site.kind if best else None,
            loss_before=ev.loss if ev.loss is not None else ev.state.loss,
            preserving=True,
            scores=scored,
            figures=figures,
        )
        if chosen is None:
            ref = "the first" if s.alpha_reference == "initial" else "the current"
            nothing = "no site can grow"
            if ev.images:
                nothing += (
                    " (natural scores sites on flat nodes only; left to the other strategies: "
                    + ", ".join(ev.images)
                    + ")"
                )
            why = (
                nothing
                if ev.best is None
                else "no deepening raised eta when inserted: "
                + ", ".join(r["site"] for r in rejected)
                + " will not be proposed again"
                if rejected
                else f"below the thresholds (Delta eta / eta = {ev.relative:.3g}, tau = {s.tau}; "
                f"Delta eta / E||dL/dy||^2 ({ref} evaluation's) = {ev.absolute:.3g}, alpha = {s.alpha})"
            )
            return Plan(self.name, reason=why, **common)  # type: ignore[arg-type]
        rel, absolute = passes(ev.state, chosen, self.reference(ev.state))[1:]
        note = f"Delta eta / eta = {rel:.3g} > tau, Delta eta / E||dL/dy||^2 = {absolute:.3g} > alpha"
        if rejected:
            note += "; rejected deepenings (eta did not rise when inserted): " + ", ".join(
                r["site"] for r in rejected
            )
        return Plan(self.name, self.actions(chosen, model), reason=note, **common)  # type: ignore[arg-type]


def make_strategy(name: str, **options: Any) -> Strategy:
    """The strategy registered as ``name``, built with ``options`` (its constructor's keywords)."""
    return STRATEGIES.get(name)(**options)
