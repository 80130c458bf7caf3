"""A plan: what every strategy returns.

``Plan.actions`` are the rewrites to apply in order (empty when nothing should grow, and
``Plan.reason`` then says why); ``Plan.scores`` lists every site the strategy scored with its score;
``Plan.figures`` holds the strategy's own figures of the decision (gamma*, lambdas, eta, ...).
``Plan.to_dict()`` is JSON-serialisable and is what the history and ``GrowthStep.report`` hold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .rewrite import Action


@dataclass(frozen=True)
class SiteScore:
    """One scored site: its score under the strategy (None when it was skipped, with the reason)."""

    site: str
    kind: str
    score: float | None
    params_added: int = 0
    skipped: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "site": self.site,
            "kind": self.kind,
            "score": _json_number(self.score),
            "params_added": self.params_added,
            "skipped": self.skipped,
        }


def _json_number(x: float | None) -> float | str | None:
    """JSON has no inf or NaN: they are written as strings."""
    if x is None or math.isfinite(x):
        return x
    return str(x)


@dataclass
class Plan:
    """The decision of a strategy on one network.

    - ``actions``: rewrites to apply in order (:func:`dagrow.rewrite.replay`);
    - ``site``, ``kind``: the chosen site (also filled when nothing is applied, e.g. gamma* = 0);
    - ``reason``: why this site, or why nothing grows;
    - ``loss_before``: the loss on the growth batch before the rewrite;
    - ``preserving``: the actions are meant to leave the function unchanged (the loss after them is
      checked both ways, not only for a rise);
    - ``scores``: every site scored, in the strategy's order;
    - ``figures``: the strategy's figures of the decision (JSON values).
    """

    strategy: str
    actions: list[Action] = field(default_factory=list)
    site: str | None = None
    kind: str | None = None
    reason: str = ""
    loss_before: float | None = None
    preserving: bool = False
    scores: list[SiteScore] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def grows(self) -> bool:
        return bool(self.actions)

    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "site": self.site,
            "kind": self.kind,
            "reason": self.reason,
            "loss_before": self.loss_before,
            "actions": [a.describe() for a in self.actions],
            "scores": [s.to_dict() for s in self.scores],
            "figures": dict(self.figures),
        }
