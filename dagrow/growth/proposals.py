"""Growth proposals in closed form from one :class:`~dagrow.stats.Statistics` (DESIGN.md notation).

For a site with sources U and targets W, per target w (B_w its feature blocks):

- ``dW*_w = (S_w^+ M_w)^T`` (the best joint change of the weights into w, applied as
  ``W <- W - gamma dW*``), ``d_w = tr(M_w^T S_w^+ M_w)``, ``Psi_w = (1/n) sum ||g_w||^2 - d_w``;
- ``N_Uw = -M_Uw + P_Uw dW*_w^T`` and ``N_UW = [N_Uw ...]`` (columns over the targets);
- ``S_U^{-1/2} N_UW = sum_k lambda_k u_k v_k^T`` (SVD), fan-in ``alpha_k = sqrt(lambda_k) S_U^{-1/2} u_k``
  and fan-out ``omega_k = sqrt(lambda_k) v_k`` (TINY).

New neurons added as ``sqrt(gamma) alpha`` (fan-in) and ``sqrt(gamma) omega`` (fan-out) change the
targets' pre-activations by ``sqrt(gamma) Omega sigma(sqrt(gamma) A^T B_U) = gamma Omega D(A^T B_U) +
o(gamma)``, with ``D(z) = d/dt sigma(t z)|_{t=0+}`` the one-sided directional derivative at 0
(:func:`~dagrow.activations.directional_derivative`; sigma(0) = 0 assumed, else a ``sqrt(gamma) Omega
sigma(0)`` term comes first and the proposal notes it). The reported ``first_order_improvement`` is
the exact first-order loss decrease of the joint change, ``-dL/dgamma`` at ``0+``:

    d - (1/n) sum_i sum_w g_w(x_i)^T Omega_w D(A^T B_U(x_i))      (an edge: d - tr(E M_uw))

checked against finite differences of the rewritten model in the tests. For a smooth activation
``D(z) = sigma'(0) z`` and the sum is the moment ``-sigma'(0) <A M_UW, Omega^T>`` of the statistics.
For an activation with a kink at 0 (relu, relu_grad1, leaky_relu, prelu, selu: the registry's one-sided
slopes ``sigma'(0-) != sigma'(0+)``) it needs the samples themselves: ``propose`` gives the moment with
the mean slope and ``first_order_exact = False``, and
:func:`~dagrow.growth.first_order.exact_first_order` replaces it with the exact figure from one pass
over the growth batch (the strategies and ``dagrow sites`` do). Function-preserving inits (zero fan-in
or zero fan-out) gain 0 from their neurons either way. When the new features are orthogonal to the
targets' existing features and sigma is smooth, the figure equals ``d + sigma'(0) sum_k lambda_k^2``
(DESIGN.md's, reported beside it as ``sum_lambda_sq``); in general they differ by the overlap
``-sigma'(0) <dW* B_W, Omega A^T B_U>``.

S^{-1/2} and S^+ come from an eigendecomposition that drops eigenvalues below
``numerical_threshold * max eigenvalue``; lambdas with ``lambda^2 < statistical_threshold * Psi_W`` are not
proposed (a neuron must remove at least that fraction of the bottleneck). Both are settings and are
reported with every proposal.
The weights of the new neurons come from one function per initialisation, registered in
:data:`~dagrow.growth.inits.INITS` (dagrow/growth/inits.py); the shared linear algebra (dW*, the
eigendecompositions of S_U, the SVDs of S_U^{-1/2} N_UW) from :class:`~dagrow.growth.decompositions.Shared`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..activations import one_sided_slopes
from ..features import Geometry, parse_geometry
from ..graph import SpecGraph, analyze
from ..sites import Site
from ..spec import GraphSpec
from ..stats import Statistics
from .decompositions import Shared, TargetUpdate
from .inits import FUNCTION_PRESERVING, INITS, Init, InitContext, no_direction
from .linalg import inv_sqrt_psd, pinv_psd, single_threaded, sum_of_squares

__all__ = [
    "FUNCTION_PRESERVING",
    "INITS",
    "Init",
    "Proposal",
    "ProposalSettings",
    "TargetUpdate",
    "inv_sqrt_psd",
    "pinv_psd",
    "propose",
    "propose_all",
    "target_update",
]


@dataclass(frozen=True)
class ProposalSettings:
    """Thresholds and scales shared by every initialisation."""

    numerical_threshold: float = 1e-10
    statistical_threshold: float = 1e-6
    gradmax_scale: float = 1.0
    seed: int = 0

    def report(self) -> dict[str, float]:
        return {
            "numerical_threshold": self.numerical_threshold,
            "statistical_threshold": self.statistical_threshold,
        }


@dataclass
class Proposal:
    """What a site could gain and the new weights that would gain it (float64 tensors on the CPU)."""

    site: Site
    init: str
    neurons: int
    updates: dict[str, TargetUpdate]
    d: float
    bottleneck: float
    lambdas: Tensor
    fan_in: Tensor  # [K, dim U], columns in the order of site.sources (bias last)
    fan_out: dict[str, Tensor]  # w -> [width_w, K]
    first_order_improvement: float
    sum_lambda_sq: float
    params_added: int
    activation: Any = None
    slopes: tuple[float, float] = (1.0, 1.0)  # (sigma'(0-), sigma'(0+)) of the new neurons
    first_order_exact: bool = True  # False: a kink's moment estimate, see exact_first_order
    edge_weight: Tensor | None = None  # edge sites: [width_w, width_u]
    init_score: float | None = None
    skipped: str | None = None
    notes: list[str] = field(default_factory=list)
    thresholds: dict[str, float] = field(default_factory=dict)

    @property
    def delta_w_norm(self) -> float:
        return math.sqrt(sum(float(u.delta.pow(2).sum()) for u in self.updates.values()))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (the fields of ``dagrow sites --json``)."""
        return {
            "site": self.site.id,
            "kind": self.site.kind,
            "init": self.init,
            "neurons": self.neurons,
            "lambdas": [float(v) for v in self.lambdas],
            "first_order_improvement": self.first_order_improvement,
            "sum_lambda_sq": self.sum_lambda_sq,
            "first_order_exact": self.first_order_exact,
            "slopes": list(self.slopes),
            "d": self.d,
            "bottleneck": self.bottleneck,
            "delta_w_norm": self.delta_w_norm,
            "params_added": self.params_added,
            "init_score": self.init_score,
            "skipped": self.skipped,
            "notes": list(self.notes),
            "thresholds": dict(self.thresholds),
        }


_SHARED = ("shared",)  # the cache key of the (settings, Shared) pair (node names are strings)


def _shared(cache: dict[Any, Any], stats: Statistics, settings: ProposalSettings) -> Shared:
    hit = cache.get(_SHARED)
    if not (isinstance(hit, tuple) and hit[1].stats is stats and hit[0] == settings):
        hit = cache[_SHARED] = (settings, Shared(stats, settings.numerical_threshold))
    return hit[1]


def target_update(
    stats: Statistics, spec: GraphSpec | SpecGraph, w: str, settings: ProposalSettings
) -> TargetUpdate:
    """dW*, d and the bottleneck Psi of one node."""
    sg = spec if isinstance(spec, SpecGraph) else analyze(spec)
    with single_threaded():
        return Shared(stats, settings.numerical_threshold).target_update(sg, w)


def _activation_of(spec: GraphSpec, site: Site) -> Any:
    if site.kind == "widen":
        assert site.node is not None
        return spec.nodes[site.node].activation
    return spec.growth.new_node_activation


def _slopes(act: Any, site: Site, weights: Mapping[str, Tensor] | None, sh: Shared) -> tuple[float, float]:
    """``(sigma'(0-), sigma'(0+))`` of the new neurons' activation: a widened node's with its learnable
    parameters as trained (from ``weights``), a new node's as the spec builds it."""
    prefix = f"nodes.{site.node}.activation."
    params = {k[len(prefix) :]: v for k, v in (weights or {}).items() if k.startswith(prefix)}
    if site.kind != "widen" or not params:
        return sh.one_sided(act)
    module = act.build()
    module.load_state_dict({k: v.detach().cpu() for k, v in params.items()})
    return one_sided_slopes(act, module)


def _params_added(site: Site, K: int, stats: Statistics) -> int:
    """Parameters the site's growth adds: the edge's weight, or the new neurons' fan-in (with bias)
    and fan-out (on an image node, a whole kernel slice per channel of each target)."""
    if site.kind == "edge":
        return stats.dim(site.sources) * stats.widths[site.targets[0]]
    spec: GraphSpec = stats.spec  # type: ignore[assignment]

    def area(w: str) -> int:
        if site.kind == "widen":
            if not any(e.source == site.node and e.target == w for e in spec.edges):
                shape = analyze(spec).shapes[site.node]  # type: ignore[index]
                return shape[1] * shape[2]  # through a flatten: one column per position
            op = spec.edge(site.node, w).op  # type: ignore[arg-type]
            return Geometry.of(op).area if op.type == "conv2d" else 1
        return spec.growth.conv_kernel**2 if parse_geometry(site.sources[0]) is not None else 1

    added = K * stats.dim(site.sources) + K * sum(stats.widths[w] * area(w) for w in site.targets)
    if site.kind == "widen":  # new channels of a norm's affine
        norm = spec.nodes[site.node].norm  # type: ignore[index]
        added += norm.num_params(K) if norm is not None else 0
    return added


def _above(values: list[float], threshold: float) -> int:
    """How many of the singular values (sorted in descending order) have ``lambda^2 > threshold``."""
    count = 0
    for value in values:
        if not value * value > threshold:
            break
        count += 1
    return count


DEEPEN_BY_NATURAL = (
    "deepen sites are grown by the natural strategy, which scores the identity block by its natural "
    "gain (the figures here are those of a new node on the same pair)"
)


def propose(
    stats: Statistics,
    site: Site,
    init: str = "tiny",
    neurons: int = 1,
    *,
    weights: Mapping[str, Tensor] | None = None,
    settings: ProposalSettings | None = None,
    cache: dict[Any, Any] | None = None,
) -> Proposal:
    """The proposal of ``init`` for ``neurons`` new neurons at ``site`` (see the module docstring).

    ``weights`` (the model's state dict) is needed by ``north`` (existing fan-in) and ``gradmax``
    (the fan-out scale). Unsupported sites and sites with nothing to propose come back with
    ``skipped`` set to the reason, never with NaNs. ``cache``: a dict shared by calls with the same
    statistics and settings keeps each target's dW*, each source set's eigendecomposition of S_U and
    the rows of M and N per target (several sites write into the same node or read the same sources).
    """
    INITS.check(init)  # UnknownName (a ValueError) with a "did you mean" hint
    if neurons < 1:
        raise ValueError("neurons must be at least 1")
    settings = settings or ProposalSettings()
    if cache is None:
        cache = {}
    with single_threaded():  # small matrices: threads only add synchronisation (see single_threaded)
        p = _propose(stats, site, init, neurons, weights, settings, _shared(cache, stats, settings), cache)
    if site.kind == "deepen" and p.skipped is None:  # scored for information, grown by natural only
        p = dataclasses.replace(p, skipped=DEEPEN_BY_NATURAL)
    return p


def _propose(
    stats: Statistics,
    site: Site,
    init: str,
    neurons: int,
    weights: Mapping[str, Tensor] | None,
    settings: ProposalSettings,
    sh: Shared,
    cache: dict[Any, Any],
) -> Proposal:
    spec: GraphSpec = stats.spec  # type: ignore[assignment]
    act = _activation_of(spec, site)
    base = dict(site=site, init=init, activation=act, thresholds=settings.report())
    if not site.supported:
        return Proposal(
            **base,
            neurons=0,
            updates={},
            d=0.0,
            bottleneck=0.0,
            lambdas=torch.zeros(0),
            fan_in=torch.zeros(0, stats.dim(site.sources), dtype=torch.float64),
            fan_out={},
            first_order_improvement=0.0,
            sum_lambda_sq=0.0,
            params_added=0,
            skipped=site.reason,
        )
    if site.kind == "widen":
        assert site.node is not None
        neurons = min(neurons, spec.growth.max_width - spec.nodes[site.node].size)
    sg = None
    for w in site.targets:
        if w not in cache:
            sg = sg or analyze(spec)
            cache[w] = sh.target_update(sg, w)
    updates = {w: cache[w] for w in site.targets}
    d = sum(u.d for u in updates.values())
    bottleneck = sum(u.bottleneck for u in updates.values())
    U = site.sources
    M_UW = sh.site(U, updates)[0]
    threshold = max(settings.statistical_threshold * bottleneck, 1e-300)

    dec = sh.decomposition(U, updates, edge=site.kind == "edge")
    count = _above(dec.values, threshold)
    kept = dec.lam[:count].clone()  # its own storage, not a view of the batch

    if site.kind == "edge":
        assert dec.edge_weight is not None
        return Proposal(
            **base,
            neurons=0,
            updates=updates,
            d=d,
            bottleneck=bottleneck,
            lambdas=kept,
            fan_in=torch.zeros(0, stats.dim(U), dtype=torch.float64),
            fan_out={},
            edge_weight=dec.edge_weight.clone(memory_format=torch.contiguous_format),
            first_order_improvement=d + dec.gain,
            sum_lambda_sq=sum_of_squares(dec.values[:count]),
            params_added=_params_added(site, 0, stats),
            skipped=None if count else no_direction(U, updates, site.kind),
        )

    slope, sigma0 = sh.slope_and_value_at_zero(act)
    context = InitContext(
        stats=stats,
        spec=spec,
        site=site,
        neurons=neurons,
        weights=weights,
        shared=sh,
        updates=updates,
        M_UW=M_UW,
        decomposition=dec,
        count=count,
        activation=act,
        slope=slope,
        sigma0=sigma0,
        seed=settings.seed,
        gradmax_scale=settings.gradmax_scale,
        numerical_threshold=settings.numerical_threshold,
    )
    new = INITS.get(init)(context)

    # smooth: the effect per unit gamma is sigma'(0) Omega_w A^T B_U, and the gain
    # -sigma'(0) sum_w tr(Omega_w A^T M_Uw) = -sigma'(0) <A M_UW, Omega^T> (one product for all targets);
    # a kink: the same moment with the mean slope, exact only after exact_first_order (unless the
    # neurons' fan-in or fan-out is zero, when both are 0)
    slopes = _slopes(act, site, weights, sh)
    omega = new.omega if new.omega is not None else torch.cat([new.fan_out[w] for w in site.targets], 0)
    moment = float(((new.fan_in @ M_UW) * omega.T).sum()) if omega.shape[1] else 0.0
    gain = -0.5 * (slopes[0] + slopes[1]) * moment
    exact = slopes[0] == slopes[1] or not (bool(new.fan_in.any()) and bool(omega.any()))
    notes = list(new.notes)
    if not exact:
        notes.append(
            f"{act.name} has a kink at 0: the first-order figure is the moment with the mean slope until "
            "exact_first_order evaluates it sample by sample"
        )
    return Proposal(
        **base,
        neurons=new.neurons,
        updates=updates,
        d=d,
        bottleneck=bottleneck,
        lambdas=kept,
        fan_in=new.fan_in,
        fan_out=new.fan_out,
        first_order_improvement=d + gain,
        sum_lambda_sq=new.sum_lambda_sq,
        params_added=_params_added(site, new.neurons, stats),
        slopes=slopes,
        first_order_exact=exact,
        init_score=new.init_score,
        skipped=new.skipped,
        notes=notes,
    )


def propose_all(
    stats: Statistics,
    sites: Iterable[Site],
    init: str = "tiny",
    neurons: int = 1,
    *,
    weights: Mapping[str, Tensor] | None = None,
    settings: ProposalSettings | None = None,
) -> list[Proposal]:
    """One proposal per site, from the same statistics: each target's dW*, each source set's
    eigendecomposition and each target's rows of M and N are computed once, and the eighs and SVDs of
    equal shapes in one batched call (see :class:`~dagrow.growth.decompositions.Shared`)."""
    sites = list(sites)
    settings = settings or ProposalSettings()
    sg = analyze(stats.spec)  # type: ignore[arg-type]
    sh = Shared(stats, settings.numerical_threshold)
    with single_threaded():  # once for all the sites (see single_threaded)
        sh.prepare(sg, sites)
        cache: dict[Any, Any] = {_SHARED: (settings, sh), **sh.updates}
        return [
            propose(stats, s, init, neurons, weights=weights, settings=settings, cache=cache) for s in sites
        ]
