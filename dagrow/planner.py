"""Depth-selection strategies: reducers over the per-site proposals of one statistics pass.

Every strategy has the same interface, :meth:`Strategy.choose`, and is picked by name from
:data:`STRATEGIES` (the CLI help lists them from there):

- ``naive``: round robin over the growable sites (seed 001, Algorithm 2), in enumeration order;
- ``max_eigenvalue``: argmax of lambda_1 (the first-order information of the best neuron);
- ``amplitude_factor``: argmax of Delta_l = L(0) - L(gamma*) after a line search per candidate. When
  there are more than ``max_candidates`` sites only the best ones by first-order improvement are
  searched, and the decision says so.

``normalize=True`` divides every score by the number of parameters the site adds. The chosen
proposal always gets its own amplitude search, so every strategy reports gamma* and Delta_l.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from torch import nn

from .growth.amplitude import AmplitudeResult, GrownFamily, amplitude_factor
from .growth.proposals import Proposal
from .stats import LossFn


@dataclass
class Decision:
    """The site a strategy chose, with its amplitude and what was compared."""

    proposal: Proposal
    amplitude: AmplitudeResult
    family: GrownFamily
    scores: dict[str, float] = field(default_factory=dict)
    note: str = ""


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

    def _search(self, model: nn.Module, p: Proposal, batch, loss) -> tuple[AmplitudeResult, GrownFamily]:
        return amplitude_factor(model, p, batch, loss, update=self.update)

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
        for p in cands:
            amp, fam = self._search(model, p, batch, loss)
            scores[p.site.id] = self._norm(p, amp.delta_l)
            if best is None or scores[p.site.id] > best.scores.get("_best", float("-inf")):
                best = Decision(p, amp, fam, note=note)
                best.scores["_best"] = scores[p.site.id]
        assert best is not None
        best.scores = scores
        return best


STRATEGIES: dict[str, type[Strategy]] = {s.name: s for s in (Naive, MaxEigenvalue, AmplitudeFactor)}


def make_strategy(name: str, **options) -> Strategy:
    try:
        return STRATEGIES[name](**options)
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; expected one of {', '.join(STRATEGIES)}") from None
