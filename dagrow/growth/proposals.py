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

import bisect
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
    """Run LAPACK (and, in :func:`propose` and :func:`propose_all`, every product) on one thread: the
    matrices here are small (the width of a site's features), where threads gain nothing, and MKL's
    threaded eigh/svd can stall for milliseconds per call when the cores are busy (seen: 10 ms instead
    of 0.1 ms for a 48 x 48 eigh with 2 threads under load; likewise 4 ms instead of 15 us for a
    49 x 49 product). With wide sites the single-threaded eighs and SVDs cost the most anyway."""
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


def _eigh_sym(S: Tensor) -> tuple[Tensor, Tensor]:
    """eigh of the symmetric part of S (or of each matrix of a stack)."""
    with _single_threaded():
        return torch.linalg.eigh((S + S.mT) / 2)


def _keep(e: Tensor, Q: Tensor, rel: float, values: list[float] | None = None) -> tuple[Tensor, Tensor]:
    """The eigenpairs above ``rel * max eigenvalue``. eigh sorts the eigenvalues in ascending order, so
    the kept ones are a suffix (found on a list, which costs less than a mask and a boolean index).
    The eigenvectors come back in row-major order, as a boolean index returns them, so that the
    products with them round alike."""
    values = e.tolist() if values is None else values
    top = values[-1] if values else 0.0
    first = bisect.bisect_right(values, max(rel * top, 0.0)) if top > 0 else len(values)
    return e[first:], Q[:, first:].contiguous()


def _eig_parts(S: Tensor, rel: float) -> tuple[Tensor, Tensor]:
    """Eigenvalues and eigenvectors of a symmetric PSD matrix above ``rel * max eigenvalue``."""
    return _keep(*_eigh_sym(S), rel)


def pinv_psd(S: Tensor, rel: float) -> Tensor:
    e, Q = _eig_parts(S, rel)
    return (Q / e) @ Q.T


def inv_sqrt_psd(S: Tensor, rel: float) -> Tensor:
    e, Q = _eig_parts(S, rel)
    return (Q * e.rsqrt()) @ Q.T


def _groups(inputs: Mapping[Any, Tensor]) -> list[list[Any]]:
    """The keys of ``inputs`` in groups of tensors of one shape, to stack for one batched LAPACK call:
    on the CPU the batched call runs the same routine on each matrix (the results are the same) and
    saves each call's fixed cost, which dominates for matrices of a few dozen rows. Elsewhere one
    group per key (a GPU may pick another algorithm for a batch, with other signs)."""
    groups: dict[Any, list[Any]] = {}
    for key, value in inputs.items():
        group = tuple(value.shape) if value.device.type == "cpu" else key
        groups.setdefault(group, []).append(key)
    return list(groups.values())


@dataclass
class _Strip:
    """Rows over ``sources`` of (1/n) sum B g_w^T (``G``) and of N's blocks ``-G + P dW*_w^T`` (``R``)."""

    sources: tuple[str, ...]
    rows: dict[str, tuple[int, int]]
    G: Tensor
    R: Tensor | None = None


_SiteKey = tuple[tuple[str, ...], tuple[str, ...], bool]  # (sources, targets, edge)


@dataclass
class _Decomposition:
    """The SVD of S_U^{-1/2} N_UW of a site: its values (as a tensor and as a list), and either the
    singular vectors or, for an edge, the weight (S_U^+ N_UW)^T and the gain -<S_U^+ N_UW, M_UW>."""

    lam: Tensor
    values: list[float]
    Uv: Tensor | None = None
    Vh: Tensor | None = None
    edge_weight: Tensor | None = None
    gain: float = 0.0


class _Shared:
    """What the sites measured in the same statistics have in common, computed once (float64):

    - per source set U, the eigendecomposition of S_U and from it S_U^{-1/2} and S_U^+ (a widened node's
      sources are also the feature blocks B_w of that node as a target: one eigh serves both);
    - per target w, one strip of rows over every source that some site reads for w: ``M_sw`` and
      ``-M_sw + P_{s B_w} dW*_w^T = -(1/n) sum b_s Vperp_w^T`` (one product instead of one per site);
      a site's M_Uw and N_Uw are rows of it;
    - per site (U, W), the SVD of S_U^{-1/2} N_UW (only its values for an edge, with the edge's weight).

    :meth:`prepare` plans the strips for a list of sites and computes the eigendecompositions and SVDs
    in batches of equal shapes. Each value is the one the per-site formulas give, up to round-off.
    """

    def __init__(self, stats: Statistics, settings: ProposalSettings) -> None:
        self.stats, self.settings = stats, settings
        self._eig: dict[tuple[str, ...], tuple[Tensor, Tensor, Tensor]] = {}
        self._inv_sqrt: dict[tuple[str, ...], Tensor] = {}
        self._pinv: dict[tuple[str, ...], Tensor] = {}
        self._wanted: dict[str, dict[str, None]] = {}  # per target, the sources its strip covers
        self._strips: dict[str, _Strip] = {}
        self._index: dict[tuple[tuple[str, ...], tuple[str, ...]], Tensor] = {}
        self._sites: dict[tuple[tuple[str, ...], tuple[str, ...]], tuple[Tensor, Tensor]] = {}
        self._decompositions: dict[_SiteKey, _Decomposition] = {}
        self.updates: dict[str, TargetUpdate] = {}
        self.at_zero: dict[int, tuple[Any, tuple[float, float]]] = {}

    def moment(self, xs: tuple[str, ...], ys: tuple[str, ...]) -> Tensor:
        return self.stats.moment(xs, ys).double()

    def _eigs(self, sets: Iterable[tuple[str, ...]]) -> None:
        """Eigendecompositions of the S_U of ``sets``, batched by size."""
        todo = {U: self.moment(U, U) for U in sets if U not in self._eig}
        rel = self.settings.numerical_threshold
        for keys in _groups(todo):
            e, Q = _eigh_sym(torch.stack([todo[U] for U in keys]))
            for U, e_U, Q_U, values in zip(keys, e, Q, e.tolist(), strict=True):
                self._eig[U] = (todo[U], *_keep(e_U, Q_U, rel, values))

    def eig(self, U: tuple[str, ...]) -> tuple[Tensor, Tensor, Tensor]:
        """S_U and its kept eigenvalues and eigenvectors."""
        if U not in self._eig:
            self._eigs([U])
        return self._eig[U]

    def inv_sqrt(self, U: tuple[str, ...]) -> Tensor:
        if U not in self._inv_sqrt:
            _, e, Q = self.eig(U)
            self._inv_sqrt[U] = (Q * e.rsqrt()) @ Q.T
        return self._inv_sqrt[U]

    def pinv(self, U: tuple[str, ...]) -> Tensor:
        if U not in self._pinv:
            _, e, Q = self.eig(U)
            self._pinv[U] = (Q / e) @ Q.T
        return self._pinv[U]

    def _strip(self, w: str, U: tuple[str, ...]) -> _Strip:
        """The strip of w, (re)built over the wanted sources and U when it does not cover U."""
        strip = self._strips.get(w)
        if strip is None or any(s not in strip.rows for s in U):
            wanted = self._wanted.setdefault(w, {})
            wanted.update(dict.fromkeys(U))
            sources = tuple(wanted)
            rows, start = {}, 0
            for s in sources:
                rows[s] = (start, start + self.stats.dim((s,)))
                start = rows[s][1]
            strip = self._strips[w] = _Strip(sources, rows, self.stats.grad_moment(sources, w).double())
        return strip

    def _take(self, strip: _Strip, t: Tensor, U: tuple[str, ...]) -> Tensor:
        """The rows of U (in that order) of a strip's tensor: a slice when they are adjacent."""
        spans = [strip.rows[s] for s in U]
        if all(stop == start for (_, stop), (start, _) in zip(spans, spans[1:], strict=False)):
            return t[spans[0][0] : spans[-1][1]]
        key = (strip.sources, U)
        index = self._index.get(key)
        if index is None:
            rows = [i for start, stop in spans for i in range(start, stop)]
            index = self._index[key] = torch.tensor(rows, device=t.device)
        return t.index_select(0, index)

    def target_update(self, sg: SpecGraph, w: str) -> TargetUpdate:
        if w not in self.updates:
            bw = linear_sources(sg, w)
            strip = self._strip(w, bw)
            M = self._take(strip, strip.G, bw)
            SpM = self.pinv(bw) @ M
            d = float((M * SpM).sum())
            self.updates[w] = TargetUpdate(w, bw, SpM.T.contiguous(), d, max(self.stats.grad_sq(w) - d, 0.0))
        return self.updates[w]

    def site(self, U: tuple[str, ...], updates: dict[str, TargetUpdate]) -> tuple[Tensor, Tensor]:
        """M_UW and N_UW = [-M_Uw + P_Uw dW*_w^T ...] (columns over the targets)."""
        key = (U, tuple(updates))
        if key not in self._sites:
            M, N = [], []
            for w, update in updates.items():
                strip = self._strip(w, U)
                if strip.R is None:
                    P = self.moment(strip.sources, update.sources)
                    strip.R = -strip.G + P @ update.delta.T
                M.append(self._take(strip, strip.G, U))
                N.append(self._take(strip, strip.R, U))
            self._sites[key] = (
                M[0] if len(M) == 1 else torch.cat(M, 1),
                N[0] if len(N) == 1 else torch.cat(N, 1),
            )
        return self._sites[key]

    def _decompose(self, todo: dict[_SiteKey, dict[str, TargetUpdate]]) -> None:
        """The decompositions of the sites ``(U, W, edge) -> updates``, batched by shape."""
        N = {key: self.site(key[0], updates)[1] for key, updates in todo.items()}
        with _single_threaded():
            for edge in (True, False):
                for keys in _groups({k: v for k, v in N.items() if k[2] == edge}):
                    Ns = torch.stack([N[k] for k in keys])
                    A = torch.stack([self.inv_sqrt(k[0]) for k in keys]) @ Ns
                    if not edge:
                        Uv, lam, Vh = torch.linalg.svd(A, full_matrices=False)
                        for k, U_k, lam_k, Vh_k, values in zip(keys, Uv, lam, Vh, lam.tolist(), strict=True):
                            self._decompositions[k] = _Decomposition(lam_k, values, Uv=U_k, Vh=Vh_k)
                        continue
                    lam = torch.linalg.svdvals(A)  # an edge has no fan-in or fan-out: only the values
                    # S_U^+ N: the least squares of -Vperp_w on b_u
                    SpN = torch.stack([self.pinv(k[0]) for k in keys]) @ Ns
                    M = torch.stack([self.site(k[0], todo[k])[0] for k in keys])
                    gains = (SpN * M).sum((1, 2)).tolist()
                    for k, lam_k, values, E, gain in zip(keys, lam, lam.tolist(), SpN.mT, gains, strict=True):
                        self._decompositions[k] = _Decomposition(lam_k, values, edge_weight=E, gain=-gain)

    def decomposition(
        self, U: tuple[str, ...], updates: dict[str, TargetUpdate], edge: bool
    ) -> _Decomposition:
        key = (U, tuple(updates), edge)
        if key not in self._decompositions:
            self._decompose({key: updates})
        return self._decompositions[key]

    def prepare(self, sg: SpecGraph, sites: list[Site]) -> None:
        """dW* of every target and the decomposition of every supported site, the eighs and SVDs
        batched by shape."""
        sites = [s for s in sites if s.supported]
        targets = dict.fromkeys(w for s in sites for w in s.targets)
        sources = {w: linear_sources(sg, w) for w in targets}
        for w in targets:  # each strip covers B_w (for dW*) and every site's sources
            self._wanted.setdefault(w, {}).update(dict.fromkeys(sources[w]))
        for s in sites:
            for w in s.targets:
                self._wanted[w].update(dict.fromkeys(s.sources))
        self._eigs(dict.fromkeys([*sources.values(), *(s.sources for s in sites)]))
        for w in targets:
            self.target_update(sg, w)
        todo = {}
        for s in sites:
            key = (s.sources, s.targets, s.kind == "edge")
            if key not in self._decompositions:
                todo[key] = {w: self.updates[w] for w in s.targets}
        self._decompose(todo)

    def slope_and_value_at_zero(self, activation) -> tuple[float, float]:
        """``_at_zero`` looked up once per activation object (its key, a JSON dump, costs more than the
        lookup)."""
        hit = self.at_zero.get(id(activation))
        if hit is None:  # the object is kept with its values, so that its id is not reused meanwhile
            hit = self.at_zero[id(activation)] = (activation, _at_zero(activation))
        return hit[1]


_SHARED = ("shared",)  # the cache key of the _Shared (node names are strings)


def _shared(cache: dict[Any, Any], stats: Statistics, settings: ProposalSettings) -> _Shared:
    sh = cache.get(_SHARED)
    if not (isinstance(sh, _Shared) and sh.stats is stats and sh.settings == settings):
        sh = cache[_SHARED] = _Shared(stats, settings)
    return sh


def target_update(
    stats: Statistics, spec: GraphSpec | SpecGraph, w: str, settings: ProposalSettings
) -> TargetUpdate:
    """dW*, d and the bottleneck Psi of one node."""
    sg = spec if isinstance(spec, SpecGraph) else analyze(spec)
    with _single_threaded():
        return _Shared(stats, settings).target_update(sg, w)


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
        return (
            f"no bottleneck direction: {feeds} already feed{'s' if len(set(U) - {ONE}) == 1 else ''} "
            f"{', '.join(updates)} directly, so to first order new neurons fed by {feeds} only repeat "
            "what dW* does (grow a pair that skips a node, or deepen the edge)"
        )
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
    statistics and settings keeps each target's dW*, each source set's eigendecomposition of S_U and
    the rows of M and N per target (several sites write into the same node or read the same sources).
    """
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; expected one of {', '.join(INITS)}")
    if neurons < 1:
        raise ValueError("neurons must be at least 1")
    settings = settings or ProposalSettings()
    if cache is None:
        cache = {}
    with _single_threaded():  # small matrices: threads only add synchronisation (see _single_threaded)
        return _propose(stats, site, init, neurons, weights, settings, _shared(cache, stats, settings), cache)


def _propose(
    stats: Statistics,
    site: Site,
    init: str,
    neurons: int,
    weights: Mapping[str, Tensor] | None,
    settings: ProposalSettings,
    sh: _Shared,
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
    S_is = sh.inv_sqrt(U)
    threshold = max(settings.statistical_threshold * bottleneck, 1e-300)
    notes: list[str] = []

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
            sum_lambda_sq=_sum_sq(dec.values[:count]),
            params_added=_params_added(site, 0, stats),
            skipped=None if count else _no_direction(U, updates),
        )

    Uv, lam, Vh = dec.Uv, dec.lam, dec.Vh
    assert Uv is not None and Vh is not None
    slope, sigma0 = sh.slope_and_value_at_zero(act)
    init_score = None
    skipped = None
    omega: Tensor | None = None  # the fan-out of every target stacked, [sum widths, K], when at hand
    if init == "tiny":
        K = min(neurons, count)
        if K < neurons:
            notes.append(f"only {K} of {neurons} eigenvalues pass the thresholds")
        if K:
            root = lam[:K].sqrt()
            fan_in = (S_is @ Uv[:, :K] * root).T.contiguous()
            omega = Vh[:K].T * root
        else:  # the same empty tensors without the products
            fan_in = torch.zeros(0, Uv.shape[0], dtype=torch.float64, device=Uv.device)
            omega = torch.zeros(Vh.shape[1], 0, dtype=torch.float64, device=Vh.device)
        fan_out = _split_rows(omega, site.targets, stats)
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
            warnings.warn(msg, stacklevel=3)
            notes.append(msg)
        neurons = K
    elif init == "north":
        existing = _existing_fan_in(spec, site.node, U, weights) if site.kind == "widen" else None
        if site.kind == "widen" and existing is None:
            raise ValueError("north needs the model's weights (pass weights=model.state_dict())")
        gen = torch.Generator().manual_seed(settings.seed)
        fan_in = _north_fan_in(sh.eig(U)[0], existing, neurons, gen, stats, U, settings)
        if fan_in.shape[0] < neurons:
            notes.append(f"only {fan_in.shape[0]} directions are orthogonal to the existing pre-activations")
            skipped = None if fan_in.shape[0] else "no direction orthogonal to the existing pre-activations"
        neurons = fan_in.shape[0]
        fan_out = {w: torch.zeros(stats.widths[w], neurons, dtype=torch.float64) for w in site.targets}
    elif init == "random":
        gen = torch.Generator().manual_seed(settings.seed)
        fan_in = _default_fan_in(neurons, U, stats, gen)
        fan_out = {w: torch.zeros(stats.widths[w], neurons, dtype=torch.float64) for w in site.targets}
    else:  # mirrored
        gen = torch.Generator().manual_seed(settings.seed)
        if neurons % 2:
            notes.append(f"mirrored neurons come in pairs: {neurons} rounded up to {neurons + 1}")
            neurons += 1
        half = _default_fan_in(neurons // 2, U, stats, gen)
        fan_in = torch.cat([half, half])
        fan_out = {}
        sg = analyze(spec)
        for w in site.targets:
            fan_w = max(stats.dim([s for s in linear_sources(sg, w) if s != ONE]), 1)
            om = torch.rand(stats.widths[w], neurons // 2, generator=gen, dtype=torch.float64) * 2 - 1
            om = om / math.sqrt(fan_w)
            fan_out[w] = torch.cat([om, -om], 1)

    # the linearised effect per unit gamma is C_w = sigma'(0) Omega_w A^T, and the gain
    # -sum_w tr(C_w M_Uw) = -sigma'(0) <A M_UW, Omega^T> (one product for all the targets)
    if omega is None:
        omega = torch.cat([fan_out[w] for w in site.targets], 0)
    gain = -slope * (float(((fan_in @ M_UW) * omega.T).sum()) if omega.shape[1] else 0.0)
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
        sum_lambda_sq=_sum_sq(dec.values[:neurons]) if init == "tiny" else 0.0,
        params_added=_params_added(site, neurons, stats),
        init_score=init_score,
        skipped=skipped,
        notes=notes,
    )


def _above(values: list[float], threshold: float) -> int:
    """How many of the singular values (sorted in descending order) have ``lambda^2 > threshold``."""
    count = 0
    for value in values:
        if not value * value > threshold:
            break
        count += 1
    return count


def _sum_sq(values: list[float]) -> float:
    return math.fsum(v * v for v in values)


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
    """One proposal per site, from the same statistics: each target's dW*, each source set's
    eigendecomposition and each target's rows of M and N are computed once, and the eighs and SVDs of
    equal shapes in one batched call (see ``_Shared``)."""
    sites = list(sites)
    settings = settings or ProposalSettings()
    sg = analyze(stats.spec)  # type: ignore[arg-type]
    sh = _Shared(stats, settings)
    with _single_threaded():  # once for all the sites (see _single_threaded)
        sh.prepare(sg, sites)
        cache: dict[Any, Any] = {_SHARED: sh, **sh.updates}
        return [
            propose(stats, s, init, neurons, weights=weights, settings=settings, cache=cache) for s in sites
        ]
