"""Every growth site of a network scored from one statistics pass: the data of ``dagrow sites``.

:func:`score_sites` measures the statistics on a batch and proposes new neurons (or an edge) at every
site; :class:`SiteReport` holds the result, as JSON (``to_dict``, the ``--json`` document) or as a
rich table of the sites that can grow, ranked by the strategy's score (``table``), the sites that
cannot grow listed apart with their reason (``skipped_table``) and the thresholds in words (``notes``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.table import Table
from rich.text import Text
from torch import Tensor, nn

from .compile import spec_of
from .growth.first_order import exact_first_order
from .growth.proposals import Proposal, ProposalSettings, propose_all
from .registry import unknown_name_message
from .sites import enumerate_sites
from .stats import LossFn, Statistics, measure

RANKINGS: dict[str, tuple[str, str]] = {
    "amplitude_factor": (
        "first-order",
        "first-order improvement (amplitude_factor line-searches the best of these and grows the largest "
        "Delta_l)",
    ),
    "max_eigenvalue": (
        "lambda_1",
        "lambda_1, the largest bottleneck eigenvalue (max_eigenvalue grows the first)",
    ),
    "naive": ("order", "enumeration order (naive grows them in turn)"),
}
"""What ``dagrow sites --strategy S`` ranks the growable sites by: (column, explanation)."""


def _lambda_1(p: Proposal) -> float:
    return float(p.lambdas[0]) if len(p.lambdas) else 0.0


def can_grow(p: Proposal) -> bool:
    """A site the proposal strategies can grow: supported, not skipped, and adding neurons or an edge."""
    return p.skipped is None and (p.neurons > 0 or p.edge_weight is not None)


def readable_thresholds(settings: ProposalSettings) -> str:
    """The two thresholds of the proposals in words."""
    return (
        f"thresholds: numerical {settings.numerical_threshold:.3g} (eigenvalues of S below this fraction of "
        f"the largest are dropped), statistical {settings.statistical_threshold:.3g} (a new neuron must "
        "remove at least this fraction of the bottleneck: lambda^2 >= threshold x Psi)"
    )


@dataclass
class SiteReport:
    """The proposals of every site (supported or not) with what they were measured on.

    ``strategy`` picks the ranking of the growable sites (:data:`RANKINGS`)."""

    spec_name: str
    data_name: str
    stats: Statistics
    init: str
    neurons: int
    settings: ProposalSettings
    proposals: list[Proposal]
    strategy: str = "amplitude_factor"

    def __post_init__(self) -> None:
        if self.strategy not in RANKINGS:
            raise ValueError(unknown_name_message("ranking strategy", self.strategy, RANKINGS))

    def growable(self) -> list[Proposal]:
        """The sites that can grow, best first by the strategy's score."""
        sites = [p for p in self.proposals if can_grow(p)]
        if self.strategy == "naive":
            return sites
        key = _lambda_1 if self.strategy == "max_eigenvalue" else (lambda p: p.first_order_improvement)
        return sorted(sites, key=key, reverse=True)

    def skipped(self) -> list[tuple[Proposal, str]]:
        """The sites that cannot grow, with the reason, in enumeration order."""
        rows = []
        for p in self.proposals:
            if can_grow(p):
                continue
            if not p.site.supported:
                reason = f"not supported: {p.site.reason or p.skipped}"
            else:
                reason = p.skipped or "no new neuron passes the thresholds"
            rows.append((p, reason))
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec_name,
            "task": self.data_name,
            "loss": self.stats.loss,
            "samples": self.stats.n,
            "init": self.init,
            "neurons": self.neurons,
            "ranked_by": self.strategy,
            "thresholds": self.settings.report(),
            "growable": [p.site.id for p in self.growable()],
            "sites": [p.to_dict() for p in self.proposals],
        }

    def table(self) -> Table:
        """The growable sites, ranked (rank 1 is the strategy's choice by this score)."""
        growable = self.growable()
        column, _ = RANKINGS[self.strategy]
        title = (
            f"{self.spec_name}: {len(growable)} growable site{'s' if len(growable) != 1 else ''} "
            f"(of {len(self.proposals)}), loss {self.stats.loss:.4g} on {self.stats.n} samples"
        )
        table = Table(title=Text(title), caption=Text(f"ranked by {RANKINGS[self.strategy][1]}"))
        columns = ("#", "site", "lambdas", "first-order", "sum lambda^2", "bottleneck", "|dW*|", "params")
        for col in columns:
            left = col in ("site", "lambdas")
            style = (
                "bold" if col == {"first-order": "first-order", "lambda_1": "lambdas"}.get(column) else None
            )
            table.add_column(col, justify="left" if left else "right", no_wrap=col != "lambdas", style=style)
        for rank, p in enumerate(growable, 1):
            lams = ", ".join(f"{float(v):.3g}" for v in p.lambdas[: max(self.neurons, 3)]) or "-"
            table.add_row(
                str(rank),
                p.site.id,
                lams,
                f"{p.first_order_improvement:.4g}",
                f"{p.sum_lambda_sq:.4g}",
                f"{p.bottleneck:.4g}",
                f"{p.delta_w_norm:.3g}",
                f"{p.params_added:,}",
            )
        return table

    def skipped_table(self) -> Table | None:
        """The sites that cannot grow, each with its reason (None when every site can grow)."""
        rows = self.skipped()
        if not rows:
            return None
        table = Table(title=Text(f"{len(rows)} skipped site{'s' if len(rows) != 1 else ''}"))
        table.add_column("site", no_wrap=True, style="dim")
        table.add_column("why it cannot grow", style="dim")
        for p, reason in rows:
            table.add_row(p.site.id, Text(reason))
        return table

    def notes(self) -> list[str]:
        """The thresholds in words."""
        return [readable_thresholds(self.settings)]


def score_sites(
    model: nn.Module,
    batch: tuple[Tensor, Tensor],
    loss: str | LossFn,
    *,
    init: str = "tiny",
    neurons: int = 1,
    seed: int = 0,
    data_name: str = "",
    strategy: str = "amplitude_factor",
) -> SiteReport:
    """Measure ``model`` on ``batch`` and propose ``neurons`` new neurons of ``init`` at every site (the
    first-order figures exact for every activation, :mod:`dagrow.growth.first_order`)."""
    spec = spec_of(model)
    all_sites = enumerate_sites(spec)
    stats = measure(model, [batch], loss, sites=[s for s in all_sites if s.supported])
    settings = ProposalSettings(seed=seed)
    proposals = propose_all(stats, all_sites, init, neurons, weights=model.state_dict(), settings=settings)
    proposals = exact_first_order(proposals, model, batch, loss)  # kinked activations: one more pass
    return SiteReport(spec.name, data_name, stats, init, neurons, settings, proposals, strategy)
