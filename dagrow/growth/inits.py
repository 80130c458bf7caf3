"""Initialisations of new neurons: one function per init, registered in :data:`INITS`.

Every init reads the same statistics of a site with sources U and targets W (an :class:`InitContext`)
and returns the new neurons' weights (:class:`NewNeurons`): fan-in ``A`` ``[K, dim U]`` (columns in the
order of ``site.sources``, bias last) and fan-out ``Omega_w`` ``[width_w, K]`` per target.

- ``tiny``: ``S_U^{-1/2} N_UW = sum_k lambda_k u_k v_k^T`` (SVD), ``alpha_k = sqrt(lambda_k) S_U^{-1/2} u_k``,
  ``omega_k = sqrt(lambda_k) v_k`` for the top K lambdas above the statistical threshold;
- ``gradmax``: fan-in 0, fan-out the top right singular vectors of ``M_UW`` times the mean norm of the
  existing fan-out columns into W (times ``gradmax_scale``);
- ``north``: fan-out 0, random fan-in S_U-orthogonalised against the existing rows of the widened node
  and against each other (the new pre-activations are orthogonal, over the measured samples, to the
  existing ones);
- ``random``: fan-out 0, fan-in ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` like the default initialisation;
- ``random_fan_out``: GradMax's random baseline: fan-in 0, fan-out random columns with gradmax's norm (the
  mean norm of the existing fan-out columns into W, times ``gradmax_scale``);
- ``mirrored``: pairs with equal fan-in and opposite fan-out (the output is unchanged).

All but ``tiny`` are function preserving (:data:`FUNCTION_PRESERVING`): at any gamma the grown model
computes the same function.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from ..features import as_columns, describe, is_one, parameter
from ..graph import analyze
from ..registry import Registry
from ..sites import Site, linear_sources
from ..spec import GraphSpec
from ..stats import Statistics
from .decompositions import Decomposition, Shared, TargetUpdate
from .linalg import sum_of_squares, svd

__all__ = [
    "FUNCTION_PRESERVING",
    "INITS",
    "Init",
    "InitContext",
    "InitFn",
    "NewNeurons",
    "gradmax",
    "mirrored",
    "no_direction",
    "north",
    "random",
    "random_fan_out",
    "tiny",
]

Init = Literal["tiny", "gradmax", "north", "random", "random_fan_out", "mirrored"]


@dataclass(frozen=True)
class InitContext:
    """What an init reads at one supported (non-edge) site; every tensor is float64 on the CPU.

    ``neurons`` is the number asked for (already capped by the node's ``max_width``); ``M_UW``
    ``[dim U, sum widths]`` the input-gradient correlation of the site; ``decomposition`` the SVD of
    ``S_U^{-1/2} N_UW`` and ``count`` how many of its values pass the statistical threshold; ``slope``
    and ``sigma0`` are sigma'(0) and sigma(0) of the new neurons' activation.
    """

    stats: Statistics
    spec: GraphSpec
    site: Site
    neurons: int
    weights: Mapping[str, Tensor] | None
    shared: Shared
    updates: dict[str, TargetUpdate]
    M_UW: Tensor
    decomposition: Decomposition
    count: int
    activation: Any
    slope: float
    sigma0: float
    seed: int = 0
    gradmax_scale: float = 1.0
    numerical_threshold: float = 1e-10


@dataclass
class NewNeurons:
    """The weights of K new neurons: ``fan_in`` ``[K, dim U]`` and ``fan_out`` ``{w: [width_w, K]}``.

    ``omega`` is the fan-out of every target stacked ``[sum widths, K]`` when the init has it at hand;
    ``sum_lambda_sq`` is ``sum_k lambda_k^2`` of the neurons (TINY only, 0 otherwise); ``skipped`` says
    why there are no neurons.
    """

    fan_in: Tensor
    fan_out: dict[str, Tensor]
    omega: Tensor | None = None
    init_score: float | None = None
    skipped: str | None = None
    notes: list[str] = field(default_factory=list)
    sum_lambda_sq: float = 0.0

    @property
    def neurons(self) -> int:
        return int(self.fan_in.shape[0])


InitFn = Callable[[InitContext], NewNeurons]
INITS: Registry[InitFn] = Registry("init")
"""The initialisations of new neurons, name -> function of an :class:`InitContext`."""

FUNCTION_PRESERVING = {"gradmax", "north", "random", "random_fan_out", "mirrored"}
"""The inits whose new neurons leave the model's function unchanged at any gamma."""


def no_direction(U: tuple[str, ...], updates: dict[str, TargetUpdate], kind: str = "node") -> str:
    """Why a site has no bottleneck direction: below the thresholds, or zero by construction when the
    new neurons would only see what already feeds every target (then Vperp is orthogonal to them).
    ``kind`` (the site's kind) picks the advice: a deepen site is never advised to deepen."""
    if all(set(U) <= set(u.sources) for u in updates.values()):
        fed = {s for s in U if not is_one(s)}
        feeds = ", ".join(sorted(describe(s) for s in fed))
        advice = {
            "deepen": "deepening grows with the natural strategy, which scores it by its natural gain",
            "widen": "grow a new node on a pair that skips a node",
        }.get(kind, "grow a pair that skips a node, or deepen the edge")
        return (
            f"no bottleneck direction: {feeds} already feed{'s' if len(fed) == 1 else ''} "
            f"{', '.join(updates)} directly, so to first order new neurons fed by {feeds} only repeat "
            f"what dW* does ({advice})"
        )
    return "no bottleneck direction above the thresholds"


def _split_rows(t: Tensor, targets: tuple[str, ...], stats: Statistics) -> dict[str, Tensor]:
    """The rows ``[sum widths, K]`` of a stacked fan-out as ``{w: [width_w, K]}``."""
    out, row = {}, 0
    for w in targets:
        out[w] = t[row : row + stats.widths[w]]
        row += stats.widths[w]
    return out


def _zero_fan_out(ctx: InitContext, K: int) -> dict[str, Tensor]:
    return {w: torch.zeros(ctx.stats.widths[w], K, dtype=torch.float64) for w in ctx.site.targets}


def _weights(weights: Mapping[str, Tensor] | None, name: str) -> Tensor | None:
    return None if weights is None or name not in weights else weights[name].detach().double().cpu()


def _existing_fan_in(h: str, sources: tuple[str, ...], weights: Mapping[str, Tensor] | None) -> Tensor | None:
    """Rows of the weights into h over ``sources`` (bias column for "1"), [width_h, dim U]."""
    cols = []
    for s in sources:
        t = _weights(weights, parameter(s, h))
        if t is None:
            return None
        cols.append(as_columns(t))
    return torch.cat(cols, 1)


def _reference_fan_out_norm(
    spec: GraphSpec, targets: tuple[str, ...], weights: Mapping[str, Tensor] | None
) -> float:
    """Mean norm of the existing neurons' fan-out columns into the targets (GradMax's scale)."""
    norms = []
    for w in targets:
        for e in spec.edges:
            t = _weights(weights, f"edges.{e.key}.weight") if e.target == w else None
            if t is not None and t.dim() in (2, 4):  # a conv's fan-out column: its kernel slice
                norms.append(t.transpose(0, 1).reshape(t.shape[1], -1).norm(dim=1))
    return float(torch.cat(norms).mean()) if norms else 1.0


def _default_fan_in(K: int, sources: tuple[str, ...], stats: Statistics, gen: torch.Generator) -> Tensor:
    """``[K, dim U]`` drawn from U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in the sources' width without
    the bias (as ``nn.Linear`` initialises)."""
    fan_in = max(stats.dim([s for s in sources if not is_one(s)]), 1)
    bound = 1.0 / math.sqrt(fan_in)
    return (torch.rand(K, stats.dim(sources), generator=gen, dtype=torch.float64) * 2 - 1) * bound


@INITS.register(
    "tiny", "TINY: fan-in and fan-out from the SVD of S_U^-1/2 N_UW (fits the projected bottleneck)"
)
def tiny(ctx: InitContext) -> NewNeurons:
    """``alpha_k = sqrt(lambda_k) S_U^{-1/2} u_k`` and ``omega_k = sqrt(lambda_k) v_k`` for the top
    ``K = min(neurons, count)`` singular triplets of ``S_U^{-1/2} N_UW``."""
    dec, site, stats = ctx.decomposition, ctx.site, ctx.stats
    Uv, lam, Vh = dec.Uv, dec.lam, dec.Vh
    assert Uv is not None and Vh is not None
    notes: list[str] = []
    K = min(ctx.neurons, ctx.count)
    if K < ctx.neurons:
        notes.append(f"only {K} of {ctx.neurons} eigenvalues pass the thresholds")
    if K:
        root = lam[:K].sqrt()
        fan_in = (ctx.shared.inv_sqrt(site.sources) @ Uv[:, :K] * root).T.contiguous()
        omega = Vh[:K].T * root
    else:  # the same empty tensors without the products
        fan_in = torch.zeros(0, Uv.shape[0], dtype=torch.float64, device=Uv.device)
        omega = torch.zeros(Vh.shape[1], 0, dtype=torch.float64, device=Vh.device)
    skipped = no_direction(site.sources, ctx.updates, site.kind) if K == 0 else None
    if ctx.sigma0 != 0.0:
        notes.append(
            f"{ctx.activation.name}(0) != 0: the new neurons shift the output by sqrt(gamma) omega sigma(0)"
        )
    return NewNeurons(
        fan_in,
        _split_rows(omega, site.targets, stats),
        omega=omega,
        skipped=skipped,
        notes=notes,
        sum_lambda_sq=sum_of_squares(dec.values[:K]),
    )


@INITS.register(
    "gradmax", "GradMax: fan-in 0, fan-out = top right singular vectors of M_UW, scaled to a norm"
)
def gradmax(ctx: InitContext) -> NewNeurons:
    """Fan-in 0 and fan-out ``Omega = scale V_K`` (V_K the top K right singular vectors of ``M_UW``), so
    that the gradient of the new fan-in, ``sigma'(0)^2 ||M_UW Omega||^2`` (the ``init_score``), is
    largest. Warns when sigma(0) != 0 or sigma'(0) = 0 (zero fan-in neurons would not learn)."""
    site, stats = ctx.site, ctx.stats
    _, _, Vh = svd(ctx.M_UW)
    K = min(ctx.neurons, Vh.shape[0])
    scale = ctx.gradmax_scale * _reference_fan_out_norm(ctx.spec, site.targets, ctx.weights)
    omega = Vh[:K].T * scale
    fan_in = torch.zeros(K, stats.dim(site.sources), dtype=torch.float64)
    init_score = ctx.slope**2 * float((ctx.M_UW @ omega).pow(2).sum())
    notes = _zero_fan_in_notes(ctx, "gradmax")
    return NewNeurons(
        fan_in, _split_rows(omega, site.targets, stats), omega=omega, init_score=init_score, notes=notes
    )


def _zero_fan_in_notes(ctx: InitContext, name: str) -> list[str]:
    """Warn (and note) when zero fan-in neurons cannot learn or shift the output: sigma(0) != 0 or
    sigma'(0) = 0."""
    if ctx.slope != 0.0 and ctx.sigma0 == 0.0:
        return []
    msg = (
        f"{name} needs sigma(0) = 0 and sigma'(0) != 0 but {ctx.activation.name} has "
        f"sigma'(0) = {ctx.slope:g}, sigma(0) = {ctx.sigma0:g}: zero fan-in neurons will not learn "
        "(use relu_grad1)"
    )
    warnings.warn(msg, stacklevel=5)  # the caller of propose (here <- init <- _propose <- propose <- caller)
    return [msg]


@INITS.register(
    "north", "NORTH: fan-out 0, fan-in whose pre-activations are S-orthogonal to the node's existing ones"
)
def north(ctx: InitContext) -> NewNeurons:
    """Fan-out 0 and random fan-in S_U-orthogonalised against the widened node's existing rows
    (``weights`` needed) and each other; fewer neurons when fewer directions remain."""
    site, U = ctx.site, ctx.site.sources
    existing = None
    if site.kind == "widen":
        assert site.node is not None
        existing = _existing_fan_in(site.node, U, ctx.weights)
        if existing is None:
            raise ValueError("north needs the model's weights (pass weights=model.state_dict())")
    gen = torch.Generator().manual_seed(ctx.seed)
    S_U = ctx.shared.eig(U)[0]
    fan_in = _north_fan_in(S_U, existing, ctx.neurons, gen, ctx.stats, U, ctx.numerical_threshold)
    notes, skipped = [], None
    if fan_in.shape[0] < ctx.neurons:
        notes.append(f"only {fan_in.shape[0]} directions are orthogonal to the existing pre-activations")
        skipped = None if fan_in.shape[0] else "no direction orthogonal to the existing pre-activations"
    return NewNeurons(fan_in, _zero_fan_out(ctx, fan_in.shape[0]), skipped=skipped, notes=notes)


def _north_fan_in(
    S: Tensor,
    existing: Tensor | None,
    K: int,
    gen: torch.Generator,
    stats: Statistics,
    sources: tuple[str, ...],
    numerical_threshold: float,
) -> Tensor:
    """Random fan-in S-orthogonalised against the existing rows and each other (batch estimate of
    NORTH: the new pre-activations are orthogonal, over the measured samples, to the existing ones)."""
    basis: list[Tensor] = []  # S-orthonormal rows
    tol = numerical_threshold * float(torch.trace(S)) + 1e-300

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
    out: list[Tensor] = []
    for _ in range(4 * K):
        if len(out) == K:
            break
        v = add(torch.randn(S.shape[0], generator=gen, dtype=torch.float64))
        if v is not None:
            out.append(v / v.norm() * target_norm)
    return torch.stack(out) if out else torch.zeros(0, S.shape[0], dtype=torch.float64)


@INITS.register("random", "random: fan-out 0, fan-in drawn like the default initialisation")
def random(ctx: InitContext) -> NewNeurons:
    """Fan-out 0 and fan-in ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` (seeded by ``seed``)."""
    gen = torch.Generator().manual_seed(ctx.seed)
    fan_in = _default_fan_in(ctx.neurons, ctx.site.sources, ctx.stats, gen)
    return NewNeurons(fan_in, _zero_fan_out(ctx, ctx.neurons))


@INITS.register(
    "random_fan_out", "random fan-out: fan-in 0, random fan-out columns with gradmax's norm (its baseline)"
)
def random_fan_out(ctx: InitContext) -> NewNeurons:
    """GradMax's random baseline: fan-in 0 and fan-out ``Omega = scale R``, ``R`` ``[sum widths, K]``
    with standard normal entries (seeded by ``seed``) and every column normalised to 1, ``scale`` the
    same as gradmax's (``gradmax_scale`` times the mean norm of the existing fan-out columns into W).
    Warns like gradmax when sigma(0) != 0 or sigma'(0) = 0."""
    site, stats = ctx.site, ctx.stats
    gen = torch.Generator().manual_seed(ctx.seed)
    scale = ctx.gradmax_scale * _reference_fan_out_norm(ctx.spec, site.targets, ctx.weights)
    R = torch.randn(stats.dim(site.targets), ctx.neurons, generator=gen, dtype=torch.float64)
    omega = R / R.norm(dim=0).clamp_min(1e-300) * scale
    fan_in = torch.zeros(ctx.neurons, stats.dim(site.sources), dtype=torch.float64)
    init_score = ctx.slope**2 * float((ctx.M_UW @ omega).pow(2).sum())
    notes = _zero_fan_in_notes(ctx, "random_fan_out")
    return NewNeurons(
        fan_in, _split_rows(omega, site.targets, stats), omega=omega, init_score=init_score, notes=notes
    )


@INITS.register("mirrored", "mirrored: pairs with equal fan-in and opposite fan-out (output unchanged)")
def mirrored(ctx: InitContext) -> NewNeurons:
    """Pairs ``(a, a)`` of default fan-in with fan-out ``(o, -o)``, ``o ~ U(-1/sqrt(fan_in_w),
    1/sqrt(fan_in_w))`` per target w: the two halves cancel. An odd count is rounded up."""
    site, stats, neurons = ctx.site, ctx.stats, ctx.neurons
    gen = torch.Generator().manual_seed(ctx.seed)
    notes = []
    if neurons % 2:
        notes.append(f"mirrored neurons come in pairs: {neurons} rounded up to {neurons + 1}")
        neurons += 1
    half = _default_fan_in(neurons // 2, site.sources, stats, gen)
    fan_out = {}
    sg = analyze(ctx.spec)
    for w in site.targets:
        fan_w = max(stats.dim([s for s in linear_sources(sg, w) if not is_one(s)]), 1)
        om = torch.rand(stats.widths[w], neurons // 2, generator=gen, dtype=torch.float64) * 2 - 1
        om = om / math.sqrt(fan_w)
        fan_out[w] = torch.cat([om, -om], 1)
    return NewNeurons(torch.cat([half, half]), fan_out, notes=notes)
