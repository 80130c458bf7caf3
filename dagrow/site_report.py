"""Every growth site of a network scored from one statistics pass: the data of ``dagrow sites``.

:func:`score_sites` measures the statistics on a batch and proposes new neurons (or an edge) at every
site; :class:`SiteReport` holds the result, as JSON (``to_dict``, the ``--json`` document) or as a
rich table with the unsupported sites listed apart (``table`` and ``notes``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.table import Table
from rich.text import Text
from torch import Tensor, nn

from .compile import spec_of
from .growth.proposals import Proposal, ProposalSettings, propose_all
from .sites import enumerate_sites
from .stats import LossFn, Statistics, measure


@dataclass
class SiteReport:
    """The proposals of every site (supported or not) with what they were measured on."""

    spec_name: str
    data_name: str
    stats: Statistics
    init: str
    neurons: int
    settings: ProposalSettings
    proposals: list[Proposal]

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec_name,
            "task": self.data_name,
            "loss": self.stats.loss,
            "samples": self.stats.n,
            "init": self.init,
            "neurons": self.neurons,
            "thresholds": self.settings.report(),
            "sites": [p.to_dict() for p in self.proposals],
        }

    def table(self) -> Table:
        supported = [p for p in self.proposals if p.site.supported]
        title = (
            f"{self.spec_name}: {len(supported)} growable sites, loss {self.stats.loss:.4g} "
            f"on {self.stats.n} samples"
        )
        table = Table(title=Text(title))
        for col in ("site", "kind", "lambdas", "first-order", "bottleneck", "|dW*|", "params"):
            left = col in ("site", "kind", "lambdas")
            table.add_column(col, justify="left" if left else "right", no_wrap=col in ("site", "kind"))
        for p in supported:
            lams = ", ".join(f"{float(v):.3g}" for v in p.lambdas[: max(self.neurons, 3)]) or "-"
            table.add_row(
                p.site.id,
                p.site.kind,
                lams,
                f"{p.first_order_improvement:.4g}",
                f"{p.bottleneck:.4g}",
                f"{p.delta_w_norm:.3g}",
                str(p.params_added),
            )
        return table

    def notes(self) -> list[str]:
        """One line per unsupported site (with the reason), then the thresholds."""
        lines = [f"{p.site.id}: not supported: {p.skipped}" for p in self.proposals if not p.site.supported]
        return [*lines, f"thresholds: {self.settings.report()}"]


def score_sites(
    model: nn.Module,
    batch: tuple[Tensor, Tensor],
    loss: str | LossFn,
    *,
    init: str = "tiny",
    neurons: int = 1,
    seed: int = 0,
    data_name: str = "",
) -> SiteReport:
    """Measure ``model`` on ``batch`` and propose ``neurons`` new neurons of ``init`` at every site."""
    spec = spec_of(model)
    all_sites = enumerate_sites(spec)
    stats = measure(model, [batch], loss, sites=[s for s in all_sites if s.supported])
    settings = ProposalSettings(seed=seed)
    proposals = propose_all(stats, all_sites, init, neurons, weights=model.state_dict(), settings=settings)
    return SiteReport(spec.name, data_name, stats, init, neurons, settings, proposals)
