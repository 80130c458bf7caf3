"""SENN's natural expansion score (Mitchell et al., arXiv 2307.04526) on the DAG, per node.

Notation of DESIGN.md. For a node v with feature blocks B_v (its linear sources, then "1"):

- input factor ``A_v = S_v = (1/n) sum B_v B_v^T`` and output factor ``G_v = (1/n) sum gh_v gh_v^T``,
  each damped by ``damping * mean diagonal`` (``lam_A``, ``lam_G``);
- the gradient of the mean loss with respect to the weights into v is ``M_v^T`` (``M_v = (1/n) sum
  B_v g_v^T``); under the Kronecker-factored Fisher ``A_v (x) G_v`` (block-diagonal over nodes) the
  natural expansion score is ``eta = g^T F^-1 g = sum_v eta_v``, ``eta_v = tr(M_v^T A_v^-1 M_v G_v^-1)``.

Which gradient builds G (``fisher``): ``"unit"`` (default, as SENN's code does) back-propagates each
sample's output gradient normalised to unit length, ``gh_v(x_i) = J_v(x_i)^T g_y(x_i) / ||g_y(x_i)||``;
then eta has the units of ``E||dL/dy||^2`` and, with the exact Fisher, ``eta <= E||dL/dy||^2`` (it is the
squared length of the output gradient's projection onto what the parameters can move), so the
absolute threshold ``Delta eta / E||dL/dy||^2 > alpha`` is a scale-free fraction. ``"empirical"`` uses
the per-sample loss gradient itself, ``gh = g`` (the literal ``(1/n) sum g g^T``); eta is then
dimensionless and the alpha test changes with the scale of the loss (a test shows both).

New neurons with features F (n x K; zero fan-out, so nothing else changes) join B_w of every target w.
By the block inverse of the grown A_w the score rises by exactly (damped, Kronecker-factored)

    Delta eta = sum_w tr(D_w^-1 C_w G_w^-1 C_w^T),
    C_w = (1/n) F^T Vperp_w,   Vperp_w = g_w - B_w A_w^-1 M_w  (the residual after w's natural step),
    D_w = (1/n) F^T F + lam_A I - (1/n) F^T B_w A_w^-1 (1/n) B_w^T F   (F projected off B_w).

This is SENN's ``Delta eta'`` with the features projected off what w already sees (the unprojected
``A_f = (1/n) F^T F`` gives its lower bound). Candidates: the closed form of the linearised problem
(F = B_U alpha^T: the top singular directions of ``S_U^-1/2 N_UW G_W^-1/2`` with ``N_UW = (1/n) B_U^T
Vperp_W``, alpha_k = S_U^-1/2 u_k, linearised score sigma_k^2), and a pool of random nonlinear
neurons; every candidate is refined by a few Adam steps on the exact score and the best one is kept.
A deepen site u->w is scored as a layer of width(u) features ``phi(B b_u + c)`` into w,
``phi(x) = x / (1 + x^2)`` (the direction in which SENN's rational activation leaves the identity),
divided by a depth cost multiplier.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..compile import spec_of
from ..graph import SpecGraph, analyze
from ..ops import op_info
from ..sites import ONE, Site, linear_sources
from ..spec import GraphSpec
from ..stats import LossFn, StatsError, loss_function
from .linalg import inv_sqrt_psd, pinv_psd
from .linalg import single_threaded as _single_threaded

Fisher = Literal["unit", "empirical"]
Construction = Literal["identity", "basis"]
Reference = Literal["initial", "current"]


@dataclass(frozen=True)
class NaturalSettings:
    """Settings of the natural expansion score and of the when-to-grow test (all reported)."""

    tau: float = 0.05  # grow when Delta eta / eta > tau ...
    alpha: float = 0.01  # ... and Delta eta / E||dL/dy||^2 > alpha
    # which E||dL/dy||^2 the alpha test divides by: the first evaluation's ("initial", a fraction of the
    # output gradient the run started with: growth stops once the residual is small) or the current one
    # ("current": a fraction of what is left, which a noiseless task never exhausts)
    alpha_reference: Reference = "initial"
    # the fraction of the growth batch that checks the candidates found on the rest: their Delta eta
    # (and eta, E||dL/dy||^2) are measured again there, where the search could not fit them (0: the
    # search's own samples, whose in-sample Delta eta of a refined neuron is biased upwards)
    holdout: float = 0.5
    damping: float = 1e-3  # Tikhonov damping of A and G, relative to their mean diagonal
    fisher: Fisher = "unit"
    candidates: int = 8  # random nonlinear candidates per site (plus the closed form's)
    refine_steps: int = 20  # Adam steps on the exact score per candidate
    refine_lr: float = 0.05
    depth_cost: float = 2.0  # a deepen site's score is divided by this
    construction: Construction = "identity"  # how a deepened edge is initialised
    numerical_threshold: float = 1e-10
    seed: int = 0

    def validate(self) -> None:
        if self.fisher not in ("unit", "empirical"):
            raise ValueError(f"unknown fisher {self.fisher!r}; expected unit or empirical")
        if self.alpha_reference not in ("initial", "current"):
            raise ValueError(f"unknown alpha_reference {self.alpha_reference!r}; expected initial or current")
        if self.construction not in ("identity", "basis"):
            raise ValueError(f"unknown construction {self.construction!r}; expected identity or basis")
        if not (isinstance(self.holdout, int | float) and 0 <= self.holdout < 1):
            raise ValueError(f"holdout must be a fraction in [0, 1), got {self.holdout!r}")
        for name in ("tau", "alpha", "damping", "refine_lr"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if not (math.isfinite(self.depth_cost) and self.depth_cost > 0):
            raise ValueError(f"depth_cost must be a positive number, got {self.depth_cost!r}")
        for name in ("candidates", "refine_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")

    def report(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class NodeFactors:
    """Kronecker factors and per-sample quantities of one node (float64, n samples)."""

    node: str
    sources: tuple[str, ...]
    B: Tensor  # [n, d] features (bias column last)
    A_inv: Tensor  # [d, d] (S + lam_A I)^-1
    G_inv: Tensor  # [k, k] (G + lam_G I)^-1
    G: Tensor  # [k, k] damped G
    lam_A: float
    lam_G: float
    eta: float  # tr(M^T A^-1 M G^-1), M = B^T g / n
    vperp: Tensor  # [n, k]


@dataclass
class NaturalState:
    """What one pass over a growth batch gives: factors per node, post-activations, eta, E||dL/dy||^2."""

    spec: GraphSpec
    n: int
    loss: float
    grad_sq: float  # E ||dL/dy||^2 over the samples (per-sample gradient, all outputs)
    post: dict[str, Tensor]  # source -> [n, width] post-activations (inputs included)
    factors: dict[str, NodeFactors]
    settings: NaturalSettings
    activations: dict[str, nn.Module] = field(default_factory=dict)  # float64 copies, frozen

    @property
    def eta(self) -> float:
        return sum(f.eta for f in self.factors.values())

    def per_node(self) -> dict[str, float]:
        return {v: f.eta for v, f in self.factors.items()}

    def features(self, sources: Sequence[str]) -> Tensor:
        """B_U: [n, dim U] (the constant "1" as a column of ones)."""
        cols = [torch.ones(self.n, 1, dtype=torch.float64) if s == ONE else self.post[s] for s in sources]
        return torch.cat(cols, 1)


def _measurable(sg: SpecGraph, v: str) -> bool:
    """Flat nodes whose parametric incoming edges are all linear and that have some parameters (a
    linear source or a bias; a node fed only through a flatten has none): the nodes the factors cover."""
    return (
        sg.is_flat(v)
        and all(e.op.type == "linear" or not op_info(e.op.type).parametric for e in sg.in_edges(v))
        and bool(linear_sources(sg, v))
    )


def damped_inverse(S: Tensor, damping: float, rel: float) -> tuple[Tensor, float]:
    """((S + lam I)^-1, lam) with lam = damping * mean diagonal; the pseudo-inverse when lam = 0."""
    d = S.shape[0]
    if not torch.isfinite(S).all():
        raise StatsError("non-finite activations or gradients: the natural score cannot be measured")
    lam = damping * float(torch.trace(S)) / max(d, 1)
    if lam <= 0:
        return pinv_psd(S, rel), 0.0
    damped = S + lam * torch.eye(d, dtype=S.dtype)
    with _single_threaded():
        L, info = torch.linalg.cholesky_ex(damped)
        if int(info) == 0:
            return torch.cholesky_inverse(L), lam
    return pinv_psd(damped, rel), lam  # lam below round-off of a huge diagonal: fall back


def observe(
    model: nn.Module, batch, loss: str | LossFn = "mse", settings: NaturalSettings | None = None
) -> NaturalState:
    """One forward and one backward pass on ``batch = (inputs, target)``: per-sample
    post-activations of every flat node and input, the loss gradient g of every measurable node and
    the Fisher's gh (see the module docstring); then A, G, M, eta and Vperp per node, in float64."""
    settings = settings or NaturalSettings()
    settings.validate()
    spec = spec_of(model)
    sg = analyze(spec)
    loss_fn = loss_function(loss)
    x, y = batch
    xs = tuple(x) if isinstance(x, tuple | list) else (x,)
    nodes = [v for v in sg.hidden_and_outputs if _measurable(sg, v)]
    flat = [v for v in spec.nodes if sg.is_flat(v)]
    post: dict[str, Tensor] = {s: t for s, t in zip(spec.inputs, xs, strict=True)}
    pre: dict[str, Tensor] = {}
    handles = [
        model.get_submodule(f"nodes.{v}.activation").register_forward_hook(
            lambda m, i, o, v=v: post.__setitem__(v, o)
        )
        for v in flat
    ] + [
        model.get_submodule(f"nodes.{v}").register_forward_hook(lambda m, i, o, v=v: pre.__setitem__(v, o))
        for v in nodes
    ]
    try:
        with torch.enable_grad():
            out = model(*xs)
            outs = out if isinstance(out, tuple) else (out,)
            L = loss_fn(out, y)
            if L.dim() != 0 or not torch.isfinite(L):
                raise StatsError(f"the loss must be a finite scalar mean, got {L.detach()}")
            wrt = list(outs) + [pre[v] for v in nodes]
            raw = torch.autograd.grad(L, wrt, allow_unused=True)
            grads = [torch.zeros_like(t) if gr is None else gr for t, gr in zip(wrt, raw, strict=True)]
            n = xs[0].shape[0]
            gy = torch.cat([gr.flatten(1) for gr in grads[: len(outs)]], 1) * n
            g = {v: gr.flatten(1).double() * n for v, gr in zip(nodes, grads[len(outs) :], strict=True)}
            if settings.fisher == "unit":
                # backpropagation is linear in each sample's cotangent and no op mixes samples, so the
                # gradient of the unit cotangent gy/|gy| is g/|gy| (0 where gy = 0): no second pass
                norm = gy.detach().double().norm(dim=1, keepdim=True)
                scale = torch.where(norm > 0, 1 / norm.clamp_min(torch.finfo(norm.dtype).tiny), 0.0)
                gh = {v: g[v] * scale for v in nodes}
            else:
                gh = g
    finally:
        for h in handles:
            h.remove()
    post = {s: t.detach().flatten(1).double() for s, t in post.items()}
    # a widened node's new neurons use its activation as trained (prelu, rational have parameters)
    activations = {v: _frozen(model.get_submodule(f"nodes.{v}.activation")) for v in flat}
    state = NaturalState(
        spec,
        n,
        float(L.detach()),
        float(gy.detach().double().pow(2).sum(1).mean()),
        post,
        {},
        settings,
        activations,
    )
    for v in nodes:
        state.factors[v] = _node_factors(state, sg, v, g[v].detach(), gh[v].detach())
    return state


def _node_factors(state: NaturalState, sg: SpecGraph, v: str, g: Tensor, gh: Tensor) -> NodeFactors:
    s = state.settings
    sources = linear_sources(sg, v)
    B = state.features(sources)
    n = state.n
    A_inv, lam_A = damped_inverse(B.T @ B / n, s.damping, s.numerical_threshold)
    G_raw = gh.T @ gh / n
    G_inv, lam_G = damped_inverse(G_raw, s.damping, s.numerical_threshold)
    M = B.T @ g / n
    AM = A_inv @ M
    eta = float((AM * (M @ G_inv)).sum())
    G = G_raw + lam_G * torch.eye(G_raw.shape[0], dtype=torch.float64)
    return NodeFactors(v, sources, B, A_inv, G_inv, G, lam_A, lam_G, eta, g - B @ AM)


def delta_eta(state: NaturalState, targets: Iterable[str], F: Tensor) -> Tensor:
    """Exact rise of the Kronecker-factored eta when features ``F`` ([n, K], or a batch [P, n, K] of
    P candidates) join the inputs of every target (zero fan-out). Differentiable in F; shape [] or [P]."""
    n = state.n
    total = torch.zeros(F.shape[:-2], dtype=F.dtype)
    eye = torch.eye(F.shape[-1], dtype=F.dtype)
    for w in targets:
        f = state.factors[w]
        C = F.transpose(-1, -2) @ f.vperp / n  # [.., K, k]
        FB = F.transpose(-1, -2) @ f.B / n  # [.., K, d]
        D = F.transpose(-1, -2) @ F / n + f.lam_A * eye - FB @ f.A_inv @ FB.transpose(-1, -2)
        D = (D + D.transpose(-1, -2)) / 2
        sol = torch.linalg.solve(D, C @ f.G_inv)
        total = total + (sol * C).sum((-1, -2))
    return total


def linearised_candidates(state: NaturalState, sources: Sequence[str], targets: Sequence[str]):
    """Closed form of the linearised problem: fan-in rows alpha_k (alpha_k^T S_U alpha_k = 1) and
    their linearised scores sigma_k^2, the maxima of tr((a^T S_U a)^-1 a^T N G^-1 N^T a)."""
    B_U = state.features(sources)
    S_U = B_U.T @ B_U / state.n
    S_is = inv_sqrt_psd(S_U, state.settings.numerical_threshold)
    blocks = []
    for w in targets:
        f = state.factors[w]
        G_is = inv_sqrt_psd(f.G, state.settings.numerical_threshold)
        blocks.append(B_U.T @ f.vperp / state.n @ G_is)  # N_Uw G_w^-1/2
    with _single_threaded():
        U, sig, _ = torch.linalg.svd(S_is @ torch.cat(blocks, 1), full_matrices=False)
    return (S_is @ U).T.contiguous(), sig.pow(2)


def linearised_score(state: NaturalState, sources, targets, alpha: Tensor) -> float:
    """tr((a^T S_U a)^-1 a^T N_UW G_W^-1 N_UW^T a) for fan-in rows ``alpha`` [K, dim U]."""
    B_U = state.features(sources)
    P = alpha @ B_U.T  # [K, n]
    C = [P @ state.factors[w].vperp / state.n for w in targets]
    D = P @ P.T / state.n
    return float(
        sum(
            (torch.linalg.solve(D, c @ state.factors[w].G_inv) * c).sum()
            for w, c in zip(targets, C, strict=True)
        )
    )


def _rational_direction(x: Tensor) -> Tensor:
    return x / (1 + x * x)


@dataclass
class NaturalProposal:
    """The best candidate found at one site."""

    site: Site
    delta_eta: float  # exact Kronecker-factored rise of eta
    score: float  # delta_eta / cost
    cost: float
    fan_in: Tensor | None = None  # widen/node: [K, dim U]
    basis: Tensor | None = None  # deepen: [width u, width u]
    shift: Tensor | None = None  # deepen: [width u]
    activation: Any = None
    linearised: float = 0.0  # best linearised (closed-form) score at the site
    origin: str = ""  # "closed form" or "random k"
    notes: list[str] = field(default_factory=list)
    searched: float | None = None  # the score on the samples it was searched on (when held out)

    def to_dict(self) -> dict[str, Any]:
        return {
            "site": self.site.id,
            "kind": self.site.kind,
            "delta_eta": self.delta_eta,
            "score": self.score,
            "searched_score": self.searched,
            "cost": self.cost,
            "linearised": self.linearised,
            "origin": self.origin,
        }


def _frozen(module: nn.Module) -> nn.Module:
    module = copy.deepcopy(module).to(torch.float64)
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def _refine(score_fn, params: list[Tensor], steps: int, lr: float) -> Tensor:
    """Adam ascent on the summed score of a batch of candidates; returns the final scores [P]."""
    with _single_threaded():  # tiny tensors: threads only add stalls on a busy machine
        if steps:
            opt = torch.optim.Adam(params, lr=lr, foreach=False)
            for _ in range(steps):
                opt.zero_grad()
                s = score_fn()
                (-s[torch.isfinite(s)].sum()).backward()
                opt.step()
        with torch.no_grad():
            s = score_fn()
    return torch.where(torch.isfinite(s), s, torch.full_like(s, -math.inf))


def propose_natural(state: NaturalState, site: Site) -> NaturalProposal | None:
    """Search one site (widen, node or deepen) for the candidate of largest exact Delta eta."""
    s = state.settings
    spec = state.spec
    if site.kind == "edge" or not site.supported or any(w not in state.factors for w in site.targets):
        return None
    gen = torch.Generator().manual_seed(s.seed * 1_000_003 + zlib.crc32(site.id.encode()))
    if site.kind == "deepen":
        return _propose_layer(state, site, gen)
    if site.kind == "widen":
        act, sigma = spec.nodes[site.node].activation, state.activations[site.node]  # type: ignore[index]
    else:
        act = spec.growth.new_node_activation
        sigma = _frozen(act.build())  # type: ignore[attr-defined]
    B_U = state.features(site.sources)
    alpha_cf, lin = linearised_candidates(state, site.sources, site.targets)
    pool = [alpha_cf[:1]] if alpha_cf.shape[0] else []
    if s.candidates:
        r = torch.randn(s.candidates, B_U.shape[1], generator=gen, dtype=torch.float64)
        scale = ((r @ B_U.T).pow(2).mean(1, keepdim=True)).clamp_min(1e-300).sqrt()
        pool.append(r / scale)  # unit second moment of the pre-activation
    if not pool:
        return None
    theta = torch.cat(pool).clone().requires_grad_(True)
    origins = ["closed form"] * (1 if alpha_cf.shape[0] else 0) + [f"random {i}" for i in range(s.candidates)]

    def score() -> Tensor:
        F = sigma(theta @ B_U.T).unsqueeze(-1)  # [P, n, 1]
        return delta_eta(state, site.targets, F)

    scores = _refine(score, [theta], s.refine_steps, s.refine_lr)
    best = int(scores.argmax())
    value = float(scores[best])
    if not math.isfinite(value):
        return None
    return NaturalProposal(
        site,
        value,
        value,
        1.0,
        fan_in=theta[best : best + 1].detach().clone(),
        activation=act,
        linearised=float(lin[0]) if lin.numel() else 0.0,
        origin=origins[best],
    )


def _propose_layer(state: NaturalState, site: Site, gen: torch.Generator) -> NaturalProposal | None:
    s = state.settings
    u, w = site.pair  # type: ignore[misc]
    b = state.post[u]
    d = b.shape[1]
    P = max(s.candidates, 1)
    Bm = torch.randn(P, d, d, generator=gen, dtype=torch.float64)
    pre = torch.einsum("pij,nj->pni", Bm, b)
    scale = pre.pow(2).mean(1, keepdim=True).clamp_min(1e-300).sqrt()  # [P, 1, d]
    Bm = Bm / scale.transpose(1, 2)  # each new unit's pre-activation has unit second moment
    c = torch.randn(P, 1, d, generator=gen, dtype=torch.float64) * 0.5
    params = [Bm.requires_grad_(True)]
    if state.spec.nodes[w].bias:  # the shift is folded into w's bias; without one it stays 0
        params.append(c.requires_grad_(True))
    else:
        c.zero_()

    def score() -> Tensor:
        F = _rational_direction(torch.einsum("pij,nj->pni", Bm, b) + c)
        return delta_eta(state, (w,), F)

    scores = _refine(score, params, s.refine_steps, s.refine_lr)
    best = int(scores.argmax())
    value = float(scores[best])
    if not math.isfinite(value):
        return None
    basis = _invertible(Bm[best].detach())
    return NaturalProposal(
        site,
        value,
        value / s.depth_cost,
        s.depth_cost,
        basis=basis,
        shift=c[best, 0].detach().clone(),
        activation={"name": "rational"},
        origin=f"random {best}",
    )


def _invertible(B: Tensor) -> Tensor:
    """Clip small singular values (as SENN's code does, there at 1e-3 of the mean) so that the basis
    is well conditioned: the successor edge gets W B^+, whose round-off in float32 grows with it."""
    U, sv, Vh = torch.linalg.svd(B)
    return (U * sv.clamp_min(0.1 * float(sv.mean()))) @ Vh


def score_sites(state: NaturalState, sites: Iterable[Site]) -> list[NaturalProposal]:
    """The best candidate of every widen, node and deepen site, best score first."""
    found = [p for p in (propose_natural(state, site) for site in sites) if p is not None]
    return sorted(found, key=lambda p: -p.score)


def split_batch(batch, holdout: float):
    """(search, check): the first and the last ``holdout`` fraction of ``batch = (inputs, target)``
    (the growth batch is a random draw); the batch twice when either part would hold fewer than 2
    samples or ``holdout`` is 0."""
    x, y = batch
    n = int(y.shape[0])
    k = int(round(n * holdout))
    if k < 2 or n - k < 2:
        return batch, batch

    def part(sl: slice):
        xs = tuple(t[sl] for t in x) if isinstance(x, tuple | list) else x[sl]
        return xs, y[sl]

    return part(slice(0, n - k)), part(slice(n - k, n))


def checked_delta_eta(state: NaturalState, p: NaturalProposal) -> float:
    """Delta eta of a candidate's features (the fan-in or the layer it would insert) on ``state``'s
    samples: the held-out check of a candidate searched on other samples."""
    site = p.site
    with torch.no_grad():
        if site.kind == "deepen":
            assert p.basis is not None
            u, w = site.pair  # type: ignore[misc]
            shift = p.shift if p.shift is not None else torch.zeros(p.basis.shape[0], dtype=torch.float64)
            F = _rational_direction(state.post[u] @ p.basis.T + shift)
            targets: Sequence[str] = (w,)
        else:
            assert p.fan_in is not None
            if site.kind == "widen":
                sigma = state.activations[site.node]  # type: ignore[index]
            else:
                sigma = _frozen(p.activation.build())
            F = sigma(state.features(site.sources) @ p.fan_in.T)
            targets = site.targets
        return float(delta_eta(state, targets, F))


def check_candidates(state: NaturalState, found: list[NaturalProposal]) -> list[NaturalProposal]:
    """The candidates with their Delta eta and score measured again on ``state`` (held-out samples),
    best first; the search's own score is kept as ``searched``."""
    checked = []
    for p in found:
        d = checked_delta_eta(state, p)
        if math.isfinite(d):
            checked.append(dataclasses.replace(p, delta_eta=d, score=d / p.cost, searched=p.score))
    return sorted(checked, key=lambda p: -p.score)


def passes(
    state: NaturalState, p: NaturalProposal | float, reference: float | None = None
) -> tuple[bool, float, float]:
    """(grow?, score / eta, score / reference) for the when-to-grow test, for a candidate or a score;
    ``reference``: the E||dL/dy||^2 the alpha test divides by (default: the state's own)."""
    s = state.settings
    score = p if isinstance(p, int | float) else p.score
    ref = state.grad_sq if reference is None else reference
    rel = score / state.eta if state.eta > 0 else math.inf
    absolute = score / ref if ref > 0 else 0.0
    return (rel > s.tau and absolute > s.alpha and score > 0), rel, absolute
