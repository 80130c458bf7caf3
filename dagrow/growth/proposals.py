"""Growth proposals in closed form from one :class:`~dagrow.stats.Statistics` (DESIGN.md notation).

For a site with sources U and targets W, per target w (B_w its feature blocks):

- ``dW*_w = (S_w^+ M_w)^T`` (the best joint change of the weights into w, applied as
  ``W <- W - gamma dW*``), ``d_w = tr(M_w^T S_w^+ M_w)``, ``Psi_w = (1/n) sum ||g_w||^2 - d_w``;
- ``N_Uw = -M_Uw + P_Uw dW*_w^T`` and ``N_UW = [N_Uw ...]`` (columns over the targets);
- ``S_U^{-1/2} N_UW = sum_k lambda_k u_k v_k^T`` (SVD), fan-in ``alpha_k = sqrt(lambda_k) S_U^{-1/2} u_k``
  and fan-out ``omega_k = sqrt(lambda_k) v_k`` (TINY).

New neurons change the targets' pre-activations by ``C_w B_U`` per unit gamma (linearised at 0:
``C_w = sigma'(0) Omega_w A^T``; an edge: ``C_w = E``). The reported ``first_order_improvement`` is the
exact first-order loss decrease of the joint change, ``d + sum_w -tr(C_w M_Uw)``, checked against
finite differences in the tests. When the new features are orthogonal to the targets' existing
features it equals ``d + sigma'(0) sum_k lambda_k^2`` (DESIGN.md's figure, reported as
``sum_lambda_sq``); in general the two differ by the overlap ``-sigma'(0) <dW* B_W, Omega A^T B_U>``.

S^{-1/2} and S^+ come from an eigendecomposition that drops eigenvalues below
``numerical_threshold * max eigenvalue``; lambdas with ``lambda^2 < statistical_threshold * Psi_W`` are not
proposed (a neuron must remove at least that fraction of the bottleneck). Both are settings and are
reported with every proposal.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from ..graph import SpecGraph, analyze
from ..ops import slope_at_zero, value_at_zero
from ..sites import ONE, Site, linear_sources
from ..spec import GraphSpec
from ..stats import Statistics

Init = Literal["tiny", "gradmax", "north", "random", "mirrored"]
INITS: dict[str, str] = {
    "tiny": "TINY: fan-in and fan-out from the SVD of S_U^-1/2 N_UW (fits the projected bottleneck)",
    "gradmax": "GradMax: fan-in 0, fan-out = top right singular vectors of M_UW, scaled to a norm",
    "north": "NORTH: fan-out 0, fan-in whose pre-activations are S-orthogonal to the node's existing ones",
    "random": "random: fan-out 0, fan-in drawn like the default initialisation",
    "mirrored": "mirrored: pairs with equal fan-in and opposite fan-out (output unchanged)",
}
FUNCTION_PRESERVING = {"gradmax", "north", "random", "mirrored"}


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
class TargetUpdate:
    """Best update of the weights into one target node (rows: neurons of w, columns: its sources)."""

    node: str
    sources: tuple[str, ...]
    delta: Tensor  # dW*_w, [width_w, dim B_w]
    d: float
    bottleneck: float


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
            "d": self.d,
            "bottleneck": self.bottleneck,
            "delta_w_norm": self.delta_w_norm,
            "params_added": self.params_added,
            "init_score": self.init_score,
            "skipped": self.skipped,
            "notes": list(self.notes),
            "thresholds": dict(self.thresholds),
        }


@contextmanager
def _single_threaded() -> Iterator[None]:
    """Run LAPACK on one thread: the matrices here are small (the width of a site's features), where
    threads gain nothing, and MKL's threaded eigh/svd can stall for milliseconds per call when the
    cores are busy (seen: 10 ms instead of 0.1 ms for a 48 x 48 eigh with 2 threads under load)."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


_AT_ZERO: dict[str, tuple[float, float]] = {}


def _at_zero(activation) -> tuple[float, float]:
    """(sigma'(0), sigma(0)), memoised per activation spec (each evaluation builds a module and runs
    autograd, which cost more than the rest of a small site's proposal)."""
    key = activation.model_dump_json()
    if key not in _AT_ZERO:
        _AT_ZERO[key] = (slope_at_zero(activation), value_at_zero(activation))
    return _AT_ZERO[key]


def _svd(A: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    with _single_threaded():
        return torch.linalg.svd(A, full_matrices=False)


def _eig_parts(S: Tensor, rel: float) -> tuple[Tensor, Tensor]:
    """Eigenvalues and eigenvectors of a symmetric PSD matrix above ``rel * max eigenvalue``."""
    with _single_threaded():
        e, Q = torch.linalg.eigh((S + S.T) / 2)
    top = float(e.max()) if e.numel() else 0.0
    keep = e > max(rel * top, 0.0) if top > 0 else torch.zeros_like(e, dtype=torch.bool)
    return e[keep], Q[:, keep]


def pinv_psd(S: Tensor, rel: float) -> Tensor:
    e, Q = _eig_parts(S, rel)
    return (Q / e) @ Q.T


def inv_sqrt_psd(S: Tensor, rel: float) -> Tensor:
    e, Q = _eig_parts(S, rel)
    return (Q * e.rsqrt()) @ Q.T


def target_update(
    stats: Statistics, spec: GraphSpec | SpecGraph, w: str, settings: ProposalSettings
) -> TargetUpdate:
    """dW*, d and the bottleneck Psi of one node."""
    sg = spec if isinstance(spec, SpecGraph) else analyze(spec)
    bw = linear_sources(sg, w)
    S = stats.moment(bw, bw).double()
    M = stats.grad_moment(bw, w).double()
    SpM = pinv_psd(S, settings.numerical_threshold) @ M
    d = float((M * SpM).sum())
    return TargetUpdate(w, bw, SpM.T.contiguous(), d, max(stats.grad_sq(w) - d, 0.0))


def _weights(weights: Mapping[str, Tensor] | None, name: str) -> Tensor | None:
    return None if weights is None or name not in weights else weights[name].detach().double().cpu()


def _existing_fan_in(spec: GraphSpec, h: str, sources: tuple[str, ...], weights) -> Tensor | None:
    """Rows of the weights into h over ``sources`` (bias column for "1"), [width_h, dim U]."""
    cols = []
    for s in sources:
        name = f"nodes.{h}.bias" if s == ONE else f"edges.{s}__{h}.weight"
        t = _weights(weights, name)
        if t is None:
            return None
        cols.append(t.reshape(-1, 1) if s == ONE else t)
    return torch.cat(cols, 1)


def _reference_fan_out_norm(spec: GraphSpec, targets: tuple[str, ...], weights) -> float:
    """Mean norm of the existing neurons' fan-out columns into the targets (GradMax's scale)."""
    norms = []
    for w in targets:
        for e in spec.edges:
            t = _weights(weights, f"edges.{e.key}.weight") if e.target == w else None
            if t is not None and t.dim() == 2:
                norms.append(t.norm(dim=0))
    return float(torch.cat(norms).mean()) if norms else 1.0


def _default_fan_in(K: int, sources: tuple[str, ...], stats: Statistics, gen: torch.Generator) -> Tensor:
    fan_in = max(stats.dim([s for s in sources if s != ONE]), 1)
    bound = 1.0 / math.sqrt(fan_in)
    return (torch.rand(K, stats.dim(sources), generator=gen, dtype=torch.float64) * 2 - 1) * bound


def _activation_of(spec: GraphSpec, site: Site):
    return spec.nodes[site.node].activation if site.kind == "widen" else spec.growth.new_node_activation


def _params_added(site: Site, K: int, stats: Statistics) -> int:
    if site.kind == "edge":
        return stats.dim(site.sources) * stats.widths[site.targets[0]]
    return K * stats.dim(site.sources) + K * sum(stats.widths[w] for w in site.targets)


def _split_rows(t: Tensor, targets: tuple[str, ...], stats: Statistics) -> dict[str, Tensor]:
    out, row = {}, 0
    for w in targets:
        out[w] = t[row : row + stats.widths[w]]
        row += stats.widths[w]
    return out


def _no_direction(U, updates: dict[str, TargetUpdate]) -> str:
    """Why a site has no bottleneck direction: below the thresholds, or zero by construction when the
    new neurons would only see what already feeds every target (then Vperp is orthogonal to them)."""
    if all(set(U) <= set(u.sources) for u in updates.values()):
        feeds = ", ".join(sorted(set(U) - {ONE}))
        return (f"no bottleneck direction: {feeds} already feed{'s' if len(set(U) - {ONE}) == 1 else ''} "
                f"{', '.join(updates)} directly, so to first order new neurons fed by {feeds} only repeat "
                "what dW* does (grow a pair that skips a node, or deepen the edge)")
    return "no bottleneck direction above the thresholds"


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
    statistics and settings keeps each target's dW* and each source set's S_U^{-1/2} (several sites
    write into the same node or read the same sources).
    """
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; expected one of {', '.join(INITS)}")
    if neurons < 1:
        raise ValueError("neurons must be at least 1")
    settings = settings or ProposalSettings()
    spec: GraphSpec = stats.spec  # type: ignore[assignment]
    act = _activation_of(spec, site)
    empty = torch.zeros(0, stats.dim(site.sources), dtype=torch.float64)
    base = dict(site=site, init=init, activation=act, thresholds=settings.report())
    if not site.supported:
        return Proposal(
            **base,
            neurons=0,
            updates={},
            d=0.0,
            bottleneck=0.0,
            lambdas=torch.zeros(0),
            fan_in=empty,
            fan_out={},
            first_order_improvement=0.0,
            sum_lambda_sq=0.0,
            params_added=0,
            skipped=site.reason,
        )
    if site.kind == "widen":
        neurons = min(neurons, spec.growth.max_width - spec.nodes[site.node].size)
    if cache is None:
        cache = {}
    for w in site.targets:
        if w not in cache:
            cache[w] = target_update(stats, spec, w, settings)
    updates = {w: cache[w] for w in site.targets}
    d = sum(u.d for u in updates.values())
    bottleneck = sum(u.bottleneck for u in updates.values())
    U = site.sources
    if ("S_U", U) not in cache:
        S = stats.moment(U, U).double()
        e, Q = _eig_parts(S, settings.numerical_threshold)
        cache[("S_U", U)] = (S, e, Q, (Q * e.rsqrt()) @ Q.T)
    S_U, e_U, Q_U, S_is = cache[("S_U", U)]
    M_UW = torch.cat([stats.grad_moment(U, w).double() for w in site.targets], 1)
    N = torch.cat(
        [
            -stats.grad_moment(U, w).double()
            + stats.moment(U, updates[w].sources).double() @ updates[w].delta.T
            for w in site.targets
        ],
        1,
    )
    Uv, lam, Vh = _svd(S_is @ N)
    kept = lam[lam.pow(2) > max(settings.statistical_threshold * bottleneck, 1e-300)]
    notes: list[str] = []

    if site.kind == "edge":
        E = (((Q_U / e_U) @ Q_U.T) @ N).T  # S_U^+ N: least squares of -Vperp_w on b_u
        gain = -float((E * M_UW.T).sum())
        return Proposal(
            **base,
            neurons=0,
            updates=updates,
            d=d,
            bottleneck=bottleneck,
            lambdas=kept,
            fan_in=empty,
            fan_out={},
            edge_weight=E.contiguous(),
            first_order_improvement=d + gain,
            sum_lambda_sq=float(kept.pow(2).sum()),
            params_added=_params_added(site, 0, stats),
            skipped=None if kept.numel() else _no_direction(U, updates),
        )

    slope, sigma0 = _at_zero(act)
    gen = torch.Generator().manual_seed(settings.seed)
    fan_out_zero = {w: torch.zeros(stats.widths[w], neurons, dtype=torch.float64) for w in site.targets}
    init_score = None
    skipped = None
    if init == "tiny":
        K = min(neurons, kept.numel())
        if K < neurons:
            notes.append(f"only {K} of {neurons} eigenvalues pass the thresholds")
        root = lam[:K].sqrt()
        fan_in = (S_is @ Uv[:, :K] * root).T.contiguous()
        fan_out = _split_rows(Vh[:K].T * root, site.targets, stats)
        if K == 0:
            skipped = _no_direction(U, updates)
        if sigma0 != 0.0:
            notes.append(
                f"{act.name}(0) != 0: the new neurons shift the output by sqrt(gamma) omega sigma(0)"
            )
        neurons = K
    elif init == "gradmax":
        _, _, Vh = _svd(M_UW)
        K = min(neurons, Vh.shape[0])
        scale = settings.gradmax_scale * _reference_fan_out_norm(spec, site.targets, weights)
        omega = Vh[:K].T * scale
        fan_in = torch.zeros(K, stats.dim(U), dtype=torch.float64)
        fan_out = _split_rows(omega, site.targets, stats)
        init_score = slope**2 * float((M_UW @ omega).pow(2).sum())
        if slope == 0.0 or sigma0 != 0.0:
            msg = (
                f"gradmax needs sigma(0) = 0 and sigma'(0) != 0 but {act.name} has sigma'(0) = {slope:g}, "
                f"sigma(0) = {sigma0:g}: zero fan-in neurons will not learn (use relu_grad1)"
            )
            warnings.warn(msg, stacklevel=2)
            notes.append(msg)
        neurons = K
    elif init == "north":
        existing = _existing_fan_in(spec, site.node, U, weights) if site.kind == "widen" else None
        if site.kind == "widen" and existing is None:
            raise ValueError("north needs the model's weights (pass weights=model.state_dict())")
        fan_in = _north_fan_in(S_U, existing, neurons, gen, stats, U, settings)
        if fan_in.shape[0] < neurons:
            notes.append(f"only {fan_in.shape[0]} directions are orthogonal to the existing pre-activations")
            skipped = None if fan_in.shape[0] else "no direction orthogonal to the existing pre-activations"
        neurons = fan_in.shape[0]
        fan_out = {w: t[:, :neurons] for w, t in fan_out_zero.items()}
    elif init == "random":
        fan_in = _default_fan_in(neurons, U, stats, gen)
        fan_out = fan_out_zero
    else:  # mirrored
        if neurons % 2:
            notes.append(f"mirrored neurons come in pairs: {neurons} rounded up to {neurons + 1}")
            neurons += 1
        half = _default_fan_in(neurons // 2, U, stats, gen)
        fan_in = torch.cat([half, half])
        fan_out = {}
        for w in site.targets:
            fan_w = max(stats.dim([s for s in linear_sources(analyze(spec), w) if s != ONE]), 1)
            om = torch.rand(stats.widths[w], neurons // 2, generator=gen, dtype=torch.float64) * 2 - 1
            om = om / math.sqrt(fan_w)
            fan_out[w] = torch.cat([om, -om], 1)

    C = {w: slope * fan_out[w] @ fan_in for w in site.targets}  # linearised effect per unit gamma
    gain = -sum(float((C[w] * stats.grad_moment(U, w).double().T).sum()) for w in site.targets)
    return Proposal(
        **base,
        neurons=neurons,
        updates=updates,
        d=d,
        bottleneck=bottleneck,
        lambdas=kept,
        fan_in=fan_in,
        fan_out=fan_out,
        first_order_improvement=d + gain,
        sum_lambda_sq=float(kept[:neurons].pow(2).sum()) if init == "tiny" else 0.0,
        params_added=_params_added(site, neurons, stats),
        init_score=init_score,
        skipped=skipped,
        notes=notes,
    )


def _north_fan_in(
    S: Tensor,
    existing: Tensor | None,
    K: int,
    gen: torch.Generator,
    stats: Statistics,
    sources: tuple[str, ...],
    settings: ProposalSettings,
) -> Tensor:
    """Random fan-in S-orthogonalised against the existing rows and each other (batch estimate of
    NORTH: the new pre-activations are orthogonal, over the measured samples, to the existing ones)."""
    basis: list[Tensor] = []  # S-orthonormal rows
    tol = settings.numerical_threshold * float(torch.trace(S)) + 1e-300

    def add(v: Tensor) -> Tensor | None:
        size = float(v @ v)  # before projection: the residual of a spanned vector is round-off
        for b in basis:
            v = v - (v @ S @ b) * b
        norm2 = float(v @ S @ v)
        if norm2 <= tol * size:
            return None
        v = v / math.sqrt(norm2)
        basis.append(v)
        return v

    if existing is not None:
        for row in existing:
            add(row.clone())
    target_norm = float(_default_fan_in(1, sources, stats, gen).norm())
    out = []
    for _ in range(4 * K):
        if len(out) == K:
            break
        v = add(torch.randn(S.shape[0], generator=gen, dtype=torch.float64))
        if v is not None:
            out.append(v / v.norm() * target_norm)
    return torch.stack(out) if out else torch.zeros(0, S.shape[0], dtype=torch.float64)


def propose_all(
    stats: Statistics,
    sites: Iterable[Site],
    init: str = "tiny",
    neurons: int = 1,
    *,
    weights: Mapping[str, Tensor] | None = None,
    settings: ProposalSettings | None = None,
) -> list[Proposal]:
    """One proposal per site, from the same statistics (each target's dW* computed once)."""
    sites = list(sites)
    settings = settings or ProposalSettings()
    sg = analyze(stats.spec)  # type: ignore[arg-type]
    targets = dict.fromkeys(w for s in sites if s.supported for w in s.targets)
    cache = {w: target_update(stats, sg, w, settings) for w in targets}
    return [propose(stats, s, init, neurons, weights=weights, settings=settings, cache=cache) for s in sites]
