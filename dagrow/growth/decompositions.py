"""What the sites measured in the same statistics have in common, computed once (DESIGN.md notation).

Per target w with feature blocks B_w: ``dW*_w = (S_w^+ M_w)^T``, ``d_w = tr(M_w^T S_w^+ M_w)`` and
``Psi_w = (1/n) sum ||g_w||^2 - d_w`` (:class:`TargetUpdate`). Per source set U: the eigendecomposition
of ``S_U`` and from it ``S_U^{-1/2}`` and ``S_U^+``. Per site (U, W): ``M_UW``, ``N_UW = [-M_Uw + P_Uw
dW*_w^T ...]`` and the SVD of ``S_U^{-1/2} N_UW`` (:class:`Decomposition`). :class:`Shared` caches all
of them for one :class:`~dagrow.stats.Statistics` and batches the eighs and SVDs of equal shapes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..activations import one_sided_slopes, slope_at_zero, value_at_zero
from ..graph import SpecGraph
from ..sites import Site, linear_sources
from ..stats import Statistics
from .linalg import batch_groups, eigh_sym, keep_above, single_threaded

__all__ = ["Decomposition", "Shared", "SiteKey", "TargetUpdate"]


@dataclass
class TargetUpdate:
    """Best update of the weights into one target node (rows: neurons of w, columns: its sources)."""

    node: str
    sources: tuple[str, ...]
    delta: Tensor  # dW*_w, [width_w, dim B_w]
    d: float
    bottleneck: float


_AT_ZERO: dict[str, tuple[float, float]] = {}
_ONE_SIDED: dict[str, tuple[float, float]] = {}


def _at_zero(activation) -> tuple[float, float]:
    """(sigma'(0), sigma(0)), memoised per activation spec (each evaluation builds a module and runs
    autograd, which cost more than the rest of a small site's proposal)."""
    key = activation.model_dump_json()
    if key not in _AT_ZERO:
        _AT_ZERO[key] = (slope_at_zero(activation), value_at_zero(activation))
    return _AT_ZERO[key]


@dataclass
class _Strip:
    """Rows over ``sources`` of (1/n) sum B g_w^T (``G``) and of N's blocks ``-G + P dW*_w^T`` (``R``)."""

    sources: tuple[str, ...]
    rows: dict[str, tuple[int, int]]
    G: Tensor
    R: Tensor | None = None


SiteKey = tuple[tuple[str, ...], tuple[str, ...], bool]  # (sources, targets, edge)


@dataclass
class Decomposition:
    """The SVD of S_U^{-1/2} N_UW of a site: its values (as a tensor and as a list), and either the
    singular vectors or, for an edge, the weight (S_U^+ N_UW)^T and the gain -<S_U^+ N_UW, M_UW>."""

    lam: Tensor
    values: list[float]
    Uv: Tensor | None = None
    Vh: Tensor | None = None
    edge_weight: Tensor | None = None
    gain: float = 0.0


class Shared:
    """What the sites measured in the same statistics have in common, computed once (float64):

    - per source set U, the eigendecomposition of S_U and from it S_U^{-1/2} and S_U^+ (a widened node's
      sources are also the feature blocks B_w of that node as a target: one eigh serves both);
    - per target w, one strip of rows over every source that some site reads for w: ``M_sw`` and
      ``-M_sw + P_{s B_w} dW*_w^T = -(1/n) sum b_s Vperp_w^T`` (one product instead of one per site);
      a site's M_Uw and N_Uw are rows of it;
    - per site (U, W), the SVD of S_U^{-1/2} N_UW (only its values for an edge, with the edge's weight).

    :meth:`prepare` plans the strips for a list of sites and computes the eigendecompositions and SVDs
    in batches of equal shapes. Each value is the one the per-site formulas give, up to round-off.
    ``numerical_threshold``: eigenvalues of an S below it times the largest one are dropped.
    """

    def __init__(self, stats: Statistics, numerical_threshold: float) -> None:
        self.stats, self.numerical_threshold = stats, numerical_threshold
        self._eig: dict[tuple[str, ...], tuple[Tensor, Tensor, Tensor]] = {}
        self._inv_sqrt: dict[tuple[str, ...], Tensor] = {}
        self._pinv: dict[tuple[str, ...], Tensor] = {}
        self._wanted: dict[str, dict[str, None]] = {}  # per target, the sources its strip covers
        self._strips: dict[str, _Strip] = {}
        self._index: dict[tuple[tuple[str, ...], tuple[str, ...]], Tensor] = {}
        self._sites: dict[tuple[tuple[str, ...], tuple[str, ...]], tuple[Tensor, Tensor]] = {}
        self._decompositions: dict[SiteKey, Decomposition] = {}
        self.updates: dict[str, TargetUpdate] = {}
        self.at_zero: dict[int, tuple[Any, tuple[float, float]]] = {}
        self.sides: dict[int, tuple[Any, tuple[float, float]]] = {}

    def moment(self, xs: tuple[str, ...], ys: tuple[str, ...]) -> Tensor:
        return self.stats.moment(xs, ys).double()

    def _eigs(self, sets: Iterable[tuple[str, ...]]) -> None:
        """Eigendecompositions of the S_U of ``sets``, batched by size."""
        todo = {U: self.moment(U, U) for U in sets if U not in self._eig}
        rel = self.numerical_threshold
        for keys in batch_groups(todo):
            e, Q = eigh_sym(torch.stack([todo[U] for U in keys]))
            for U, e_U, Q_U, values in zip(keys, e, Q, e.tolist(), strict=True):
                self._eig[U] = (todo[U], *keep_above(e_U, Q_U, rel, values))

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

    def _decompose(self, todo: dict[SiteKey, dict[str, TargetUpdate]]) -> None:
        """The decompositions of the sites ``(U, W, edge) -> updates``, batched by shape."""
        N = {key: self.site(key[0], updates)[1] for key, updates in todo.items()}
        with single_threaded():
            for edge in (True, False):
                for keys in batch_groups({k: v for k, v in N.items() if k[2] == edge}):
                    Ns = torch.stack([N[k] for k in keys])
                    A = torch.stack([self.inv_sqrt(k[0]) for k in keys]) @ Ns
                    if not edge:
                        Uv, lam, Vh = torch.linalg.svd(A, full_matrices=False)
                        for k, U_k, lam_k, Vh_k, values in zip(keys, Uv, lam, Vh, lam.tolist(), strict=True):
                            self._decompositions[k] = Decomposition(lam_k, values, Uv=U_k, Vh=Vh_k)
                        continue
                    lam = torch.linalg.svdvals(A)  # an edge has no fan-in or fan-out: only the values
                    # S_U^+ N: the least squares of -Vperp_w on b_u
                    SpN = torch.stack([self.pinv(k[0]) for k in keys]) @ Ns
                    M = torch.stack([self.site(k[0], todo[k])[0] for k in keys])
                    gains = (SpN * M).sum((1, 2)).tolist()
                    for k, lam_k, values, E, gain in zip(keys, lam, lam.tolist(), SpN.mT, gains, strict=True):
                        self._decompositions[k] = Decomposition(lam_k, values, edge_weight=E, gain=-gain)

    def decomposition(
        self, U: tuple[str, ...], updates: dict[str, TargetUpdate], edge: bool
    ) -> Decomposition:
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

    def one_sided(self, activation) -> tuple[float, float]:
        """``(sigma'(0-), sigma'(0+))`` of an activation spec, memoised like ``_at_zero``."""
        hit = self.sides.get(id(activation))
        if hit is None:
            key = activation.model_dump_json()
            if key not in _ONE_SIDED:
                _ONE_SIDED[key] = one_sided_slopes(activation)
            hit = self.sides[id(activation)] = (activation, _ONE_SIDED[key])
        return hit[1]

    def slope_and_value_at_zero(self, activation) -> tuple[float, float]:
        """``_at_zero`` looked up once per activation object (its key, a JSON dump, costs more than the
        lookup)."""
        hit = self.at_zero.get(id(activation))
        if hit is None:  # the object is kept with its values, so that its id is not reused meanwhile
            hit = self.at_zero[id(activation)] = (activation, _at_zero(activation))
        return hit[1]
