"""Depth-selection strategies: reducers over the per-site proposals of one statistics pass.

Every strategy has the same interface, :meth:`Strategy.choose`, and is picked by name from
:data:`STRATEGIES` (the CLI help lists them from there):

- ``naive``: round robin over the growable sites (seed 001, Algorithm 2), in enumeration order;
- ``max_eigenvalue``: argmax of lambda_1 (the first-order information of the best neuron);
- ``amplitude_factor``: argmax of Delta_l = L(0) - L(gamma*) after a line search per candidate. When
  there are more than ``max_candidates`` sites only the best ones by first-order improvement are
  searched, and the decision says so;
- ``natural`` (SENN, :mod:`dagrow.growth.natural`): the site whose best candidate raises the natural
  expansion score eta the most (a deepen site's rise divided by the depth cost), and only when
  ``Delta eta / eta > tau`` and ``Delta eta / E||dL/dy||^2 > alpha``; otherwise no decision. Its
  decisions carry ready actions (new neurons with zero fan-out, or a function-preserving deepening).

``normalize=True`` divides every score by the number of parameters the site adds. The chosen
proposal always gets its own amplitude search, so every strategy reports gamma* and Delta_l.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .growth.amplitude import AmplitudeResult, GrownFamily, amplitude_factor
from .growth.natural import (
    NaturalProposal,
    NaturalSettings,
    NaturalState,
    natural_actions,
    observe,
    passes,
    score_sites,
)
from .growth.proposals import Proposal
from .growth.shared_forward import SharedForward
from .rewrite import Action
from .sites import Site
from .stats import LossFn


@dataclass
class Decision:
    """The site a strategy chose, with its amplitude and what was compared."""

    proposal: Proposal | None
    amplitude: AmplitudeResult | None
    family: GrownFamily | None
    scores: dict[str, float] = field(default_factory=dict)
    note: str = ""
    actions: list[Action] | None = None  # ready rewrites (natural), instead of proposal + amplitude


def growable(proposals: list[Proposal]) -> list[Proposal]:
    return [p for p in proposals if p.skipped is None and (p.neurons > 0 or p.edge_weight is not None)]


class Strategy(ABC):
    """Chooses one proposal among those of a statistics pass."""

    name: str = ""
    summary: str = ""

    def __init__(self, *, normalize: bool = False, max_candidates: int = 8, update: bool = True) -> None:
        self.normalize, self.max_candidates, self.update = normalize, max_candidates, update

    def _norm(self, p: Proposal, score: float) -> float:
        return score / max(p.params_added, 1) if self.normalize else score

    def _search(
        self, model: nn.Module, p: Proposal, batch, loss, forward: SharedForward | None = None
    ) -> tuple[AmplitudeResult, GrownFamily]:
        return amplitude_factor(model, p, batch, loss, update=self.update, forward=forward)

    @abstractmethod
    def choose(
        self, model: nn.Module, proposals: list[Proposal], batch, loss: str | LossFn, step: int
    ) -> Decision | None:
        """The decision for growth number ``step`` (None when no site can grow)."""


class Naive(Strategy):
    name = "naive"
    summary = "round robin over the growable sites (seed 001, Algorithm 2)"

    def choose(self, model, proposals, batch, loss, step):
        cands = growable(proposals)
        if not cands:
            return None
        p = cands[step % len(cands)]
        amp, fam = self._search(model, p, batch, loss)
        return Decision(p, amp, fam, note=f"round robin: site {step % len(cands) + 1} of {len(cands)}")


class MaxEigenvalue(Strategy):
    name = "max_eigenvalue"
    summary = "argmax of the first bottleneck eigenvalue lambda_1"

    def choose(self, model, proposals, batch, loss, step):
        cands = [p for p in growable(proposals) if p.lambdas.numel()]
        if not cands:
            return None
        scores = {p.site.id: self._norm(p, float(p.lambdas[0])) for p in cands}
        p = max(cands, key=lambda q: scores[q.site.id])
        amp, fam = self._search(model, p, batch, loss)
        return Decision(p, amp, fam, scores)


class AmplitudeFactor(Strategy):
    name = "amplitude_factor"
    summary = "argmax of Delta_l = L(0) - L(gamma*) after a line search per candidate site"

    def choose(self, model, proposals, batch, loss, step):
        cands = sorted(growable(proposals), key=lambda p: -self._norm(p, p.first_order_improvement))
        if not cands:
            return None
        note = ""
        if len(cands) > self.max_candidates:
            note = f"searched the top {self.max_candidates} of {len(cands)} sites by first-order improvement"
            cands = cands[: self.max_candidates]
        best: Decision | None = None
        scores = {}
        forward = SharedForward(model, batch[0])  # one forward pass for every candidate
        for p in cands:
            amp, fam = self._search(model, p, batch, loss, forward)
            scores[p.site.id] = self._norm(p, amp.delta_l)
            if best is None or scores[p.site.id] > best.scores.get("_best", float("-inf")):
                best = Decision(p, amp, fam, note=note)
                best.scores["_best"] = scores[p.site.id]
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

    @property
    def best(self) -> NaturalProposal | None:
        return self.proposals[0] if self.proposals else None

    def report(self) -> dict[str, Any]:
        """The history fields of this evaluation."""
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


class Natural(Strategy):
    name = "natural"
    summary = "SENN: grow where the natural expansion score rises by more than tau and alpha, and only then"

    def __init__(self, *, settings: NaturalSettings | None = None, **options) -> None:
        super().__init__(**options)
        self.settings = settings or NaturalSettings()
        self.settings.validate()

    def evaluate(
        self, model: nn.Module, batch, loss: str | LossFn, sites: Iterable[Site]
    ) -> NaturalEvaluation:
        """Measure eta on ``batch``, search every site, and apply the when-to-grow test."""
        state = observe(model, batch, loss, self.settings)
        found = score_sites(state, sites)
        if not found:
            return NaturalEvaluation(state, [], False, 0.0, 0.0)
        ok, rel, absolute = passes(state, found[0])
        return NaturalEvaluation(state, found, ok, rel, absolute)

    def actions(self, evaluation: NaturalEvaluation) -> list[Action]:
        assert evaluation.best is not None
        return natural_actions(evaluation.best, evaluation.state.spec, self.settings)

    def choose(self, model, proposals, batch, loss, step):
        ev = self.evaluate(model, batch, loss, [p.site for p in proposals])
        if not ev.grow:
            return None
        scores = {p.site.id: p.score for p in ev.proposals}
        note = (
            f"Delta eta / eta = {ev.relative:.3g} > tau, Delta eta / E||dL/dy||^2 = {ev.absolute:.3g} > alpha"
        )
        return Decision(None, None, None, scores, note, actions=self.actions(ev))


STRATEGIES: dict[str, type[Strategy]] = {s.name: s for s in (Naive, MaxEigenvalue, AmplitudeFactor, Natural)}


def make_strategy(name: str, **options) -> Strategy:
    try:
        return STRATEGIES[name](**options)
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; expected one of {', '.join(STRATEGIES)}") from None
