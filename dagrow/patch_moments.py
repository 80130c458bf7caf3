"""Moments of conv patches without unfolding them (stride-1 patch features, :mod:`dagrow.features`).

The patches of a stride-1 conv read their input at shifted positions: the row of output position p
holds ``x[c, p + o(a)]`` for each tap ``a`` of the kernel, ``o(a) = a - padding``. The moment of two
such features u and v (kernels k and k', on the same output grid) is therefore, block by block,

    S[(c, a), (c', b)] = sum_samples sum_{q in window(a)} x_u[c, q] x_v[c', q + d],   d = o_v(b) - o_u(a),

a correlation of the two inputs at the offset d summed over the output window that tap ``a`` sees.
Every pair of taps with the same offset shares the full correlation ``F_d = sum_q x_u[q] x_v[q + d]^T``
(one matrix product over the channels-last inputs, zero padded so that a flat shift by ``d`` never
wraps a value onto another row or sample); the window's borders are subtracted by inclusion and
exclusion (rows, columns, corner points outside the window). A 3x3 feature with itself needs 13
correlations instead of the 81 blocks an unfolded product computes, and no unfolded copy. When the
sites need every pair of a grid's nodes, :class:`Correlations` correlates all their channels at once
(one wider product per offset serves every pair, ``F_-d(u, v) = F_d(v, u)^T``).

The gradient blocks ``sum_samples sum_p patch(p) g_w(p)^T`` of a stride-1 feature are the weight
gradient of a conv with that geometry (``torch.ops.aten.convolution_backward``).

Everything here is a sum over the given samples; the accumulator scales and adds.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .features import Geometry, Pair


def fast(geometry: Geometry | None) -> bool:
    """Whether a patch feature of this geometry is measured here (stride 1; any kernel and padding)."""
    return geometry is not None and geometry.stride == (1, 1)


@dataclass(frozen=True)
class Layout:
    """The padded channels-last layout of the inputs of a group of features: ``[n, rows, cols, C]``
    with each input's values at the top left and zeros after (rows >= height + the largest shift)."""

    rows: int
    cols: int

    @classmethod
    def of(cls, grids: Sequence[Sequence[int]], shift: Pair) -> Layout:
        return cls(max(g[0] for g in grids) + shift[0], max(g[1] for g in grids) + shift[1])

    def pad(self, *xs: Tensor, dtype: torch.dtype) -> Tensor:
        """``x [n, C, H, W]`` (each of ``xs``) -> ``[n, rows, cols, sum C]`` in ``dtype``, the channels of
        each input after those of the one before."""
        n, channels = xs[0].shape[0], sum(x.shape[1] for x in xs)
        out = xs[0].new_zeros((n, self.rows, self.cols, channels), dtype=dtype)
        start = 0
        for x in xs:
            _, c, h, w = x.shape
            out[:, :h, :w, start : start + c] = x.permute(0, 2, 3, 1)
            start += c
        return out


def offsets(geometry: Geometry) -> tuple[range, range]:
    """The shifts ``o(a) = a - padding`` of a kernel's taps, per dimension."""
    return tuple(  # type: ignore[return-value]
        range(-p, k - p) for k, p in zip(geometry.kernel, geometry.padding, strict=True)
    )


def largest_shift(gu: Geometry, gv: Geometry) -> Pair:
    """The largest |d| per dimension between the taps of two geometries."""
    ou, ov = offsets(gu), offsets(gv)
    return tuple(  # type: ignore[return-value]
        max(abs(ov[i][-1] - ou[i][0]), abs(ov[i][0] - ou[i][-1])) for i in range(2)
    )


def _span(lo_u: int, hi_u: int, lo_v: int, hi_v: int, d: int) -> tuple[int, int]:
    """q with q in [lo_u, hi_u) and q + d in [lo_v, hi_v)."""
    return max(lo_u, lo_v - d), min(hi_u, hi_v - d)


def _shifted_product(a: Tensor, b: Tensor, cols: int, d: Pair) -> Tensor:
    """``sum_q a[q]^T b[q + d]`` over the flat rows of one :class:`Layout` (``[total, C]`` each)."""
    total = a.shape[0]
    shift = d[0] * cols + d[1]
    lo, hi = max(0, -shift), min(total, total - shift)
    return a[lo:hi].T @ b[lo + shift : hi + shift]


class Correlations:
    """The full correlations of several nodes' inputs at once: their channels concatenated in one
    :class:`Layout` (``x [n, rows, cols, sum C]``, ``channels[v]`` the slice of node v), one product
    ``X^T X_d`` per offset d >= (0, 0) gives every pair's ``F_d`` (and ``F_-d(u, v) = F_d(v, u)^T``).
    Fewer, wider products than one per pair and offset: each reads the inputs once."""

    def __init__(self, x: Tensor, channels: dict[str, slice]) -> None:
        self.x, self.channels = x, channels
        self.flat = x.reshape(-1, x.shape[3])
        self.products: dict[Pair, Tensor] = {}
        self.edges: dict[tuple, Tensor] = {}

    def view(self, v: str) -> Tensor:
        return self.x[..., self.channels[v]]

    def full(self, u: str, v: str, d: Pair) -> Tensor:
        """``F_d(u, v) = sum_q x_u[q] x_v[q + d]^T``, ``[C_u, C_v]``."""
        if d >= (0, 0):
            return self._product(d)[self.channels[u], self.channels[v]]
        return self._product((-d[0], -d[1]))[self.channels[v], self.channels[u]].T

    def _product(self, d: Pair) -> Tensor:
        if d not in self.products:
            self.products[d] = _shifted_product(self.flat, self.flat, self.x.shape[2], d)
        return self.products[d]

    def terms(self, u: str, v: str) -> Terms:
        """The correlation terms of the pair (u, v), from products of all the channels (shared by
        every pair: the border terms too)."""
        return _JointTerms(self, u, v)

    def _edge(self, key: tuple, a: Tensor, b: Tensor) -> Tensor:
        if key not in self.edges:
            self.edges[key] = a.reshape(-1, a.shape[-1]).T @ b.reshape(-1, b.shape[-1])
        return self.edges[key]

    def row(self, e: Pair, r: int) -> Tensor:
        """``sum_{n, q2} X[n, r, q2] X[n, r + e1, q2 + e2]^T`` for e >= (0, 0), all channels."""
        lo, hi = max(0, -e[1]), min(self.x.shape[2], self.x.shape[2] - e[1])
        return self._edge(("r", e, r), self.x[:, r, lo:hi], self.x[:, r + e[0], lo + e[1] : hi + e[1]])

    def column(self, e: Pair, c: int) -> Tensor:
        lo, hi = max(0, -e[0]), min(self.x.shape[1], self.x.shape[1] - e[0])
        return self._edge(("c", e, c), self.x[:, lo:hi, c], self.x[:, lo + e[0] : hi + e[0], c + e[1]])

    def point(self, e: Pair, r: int, c: int) -> Tensor:
        return self._edge(("p", e, r, c), self.x[:, r, c], self.x[:, r + e[0], c + e[1]])


class Terms(ABC):
    """The four kinds of correlation terms of a pair (u, v) at an offset d: the full correlation, one
    row q1 of u (all columns), one column q2, one point (q1, q2) (``[C_u, C_v]`` each)."""

    @abstractmethod
    def full(self, d: Pair) -> Tensor: ...

    @abstractmethod
    def row(self, d: Pair, q1: int) -> Tensor: ...

    @abstractmethod
    def column(self, d: Pair, q2: int) -> Tensor: ...

    @abstractmethod
    def point(self, d: Pair, q1: int, q2: int) -> Tensor: ...


class _JointTerms(Terms):
    """A pair's terms read from :class:`Correlations` (for d below (0, 0) from the transposed term of
    -d, which starts at the row and column of v's side)."""

    def __init__(self, corr: Correlations, u: str, v: str) -> None:
        self.corr, self.u, self.v = corr, corr.channels[u], corr.channels[v]

    def _pick(self, term: Tensor, flipped: bool) -> Tensor:
        return term[self.v, self.u].T if flipped else term[self.u, self.v]

    def full(self, d: Pair) -> Tensor:
        return self._pick(self.corr._product(canonical(d)), d < (0, 0))

    def row(self, d: Pair, q1: int) -> Tensor:
        if d < (0, 0):
            return self._pick(self.corr.row(canonical(d), q1 + d[0]), True)
        return self._pick(self.corr.row(d, q1), False)

    def column(self, d: Pair, q2: int) -> Tensor:
        if d < (0, 0):
            return self._pick(self.corr.column(canonical(d), q2 + d[1]), True)
        return self._pick(self.corr.column(d, q2), False)

    def point(self, d: Pair, q1: int, q2: int) -> Tensor:
        if d < (0, 0):
            return self._pick(self.corr.point(canonical(d), q1 + d[0], q2 + d[1]), True)
        return self._pick(self.corr.point(d, q1, q2), False)


class _PairTerms(Terms):
    """A pair's terms from its own two inputs (one product per term, cached)."""

    def __init__(self, xu: Tensor, shape_u: Sequence[int], xv: Tensor, shape_v: Sequence[int]) -> None:
        self.xu, self.xv = xu, xv
        (self.hu, self.wu), (self.hv, self.wv) = shape_u[1:], shape_v[1:]
        self.cache: dict[tuple, Tensor] = {}

    def _product(self, key: tuple, a: Tensor, b: Tensor) -> Tensor:
        if key not in self.cache:
            self.cache[key] = a.reshape(-1, a.shape[-1]).T @ b.reshape(-1, b.shape[-1])
        return self.cache[key]

    def full(self, d: Pair) -> Tensor:
        if ("f", d) not in self.cache:
            xu, xv = self.xu, self.xv
            a, b = xu.reshape(-1, xu.shape[3]), xv.reshape(-1, xv.shape[3])
            self.cache[("f", d)] = _shifted_product(a, b, xu.shape[2], d)
        return self.cache[("f", d)]

    def row(self, d: Pair, q1: int) -> Tensor:
        c0, c1 = _span(0, self.wu, 0, self.wv, d[1])
        c1 = max(c0, c1)
        return self._product(
            ("r", d, q1), self.xu[:, q1, c0:c1], self.xv[:, q1 + d[0], c0 + d[1] : c1 + d[1]]
        )

    def column(self, d: Pair, q2: int) -> Tensor:
        r0, r1 = _span(0, self.hu, 0, self.hv, d[0])
        r1 = max(r0, r1)
        return self._product(
            ("c", d, q2), self.xu[:, r0:r1, q2], self.xv[:, r0 + d[0] : r1 + d[0], q2 + d[1]]
        )

    def point(self, d: Pair, q1: int, q2: int) -> Tensor:
        return self.xu[:, q1, q2].T @ self.xv[:, q1 + d[0], q2 + d[1]]


def shifts(gu: Geometry, gv: Geometry) -> set[Pair]:
    """The offsets d = o_v(b) - o_u(a) between the taps of two geometries."""
    ou, ov = offsets(gu), offsets(gv)
    return {(b1 - a1, b2 - a2) for a1 in ou[0] for a2 in ou[1] for b1 in ov[0] for b2 in ov[1]}


def canonical(d: Pair) -> Pair:
    """d or -d, whichever is >= (0, 0): the product of :class:`Correlations` that holds F_d."""
    return d if d >= (0, 0) else (-d[0], -d[1])


def correlate_jointly(pairs: Sequence[tuple[Geometry, int, Geometry, int, bool]], channels: int) -> bool:
    """Whether :class:`Correlations` of all ``channels`` at once cost at most 1.5 times the
    multiply-adds of the pairs' own correlations (``(geometry_u, C_u, geometry_v, C_v, symmetric)``
    each): the wider products are faster per multiply-add, but compute every pair of nodes."""
    alone, needed = 0, set()
    for gu, cu, gv, cv, symmetric in pairs:
        ds = shifts(gu, gv)
        own = {canonical(d) for d in ds}
        needed |= own
        alone += (len(own) if symmetric else len(ds)) * cu * cv
    return bool(pairs) and len(needed) * channels * channels <= 1.5 * alone


def patch_moment(
    xu: Tensor,
    shape_u: Sequence[int],
    gu: Geometry,
    xv: Tensor,
    shape_v: Sequence[int],
    gv: Geometry,
    out_grid: Pair,
    symmetric: bool = False,
    terms: Terms | None = None,
) -> Tensor:
    """``sum_samples sum_p patch_u(p)^T patch_v(p)``, shape ``[C_u kh kw, C_v kh' kw']`` (columns in the
    order of :func:`dagrow.features.rows`).

    ``xu``, ``xv``: the inputs in one :class:`Layout` (``[n, rows, cols, C]``); ``shape_u``/``shape_v``:
    their real ``(C, H, W)``; ``symmetric``: u and v are the same feature (half the offsets);
    ``terms``: the pair's correlation terms when already at hand (``Correlations.terms``), else
    computed here from ``xu`` and ``xv``."""
    cu, cv = xu.shape[3], xv.shape[3]
    (hu, wu), (hv, wv) = shape_u[1:], shape_v[1:]
    ou, ov = offsets(gu), offsets(gv)
    out = xu.new_empty((cu, gu.area, cv, gv.area))
    t = _PairTerms(xu, shape_u, xv, shape_v) if terms is None else terms

    def outside(o: int, size: int, lo: int, hi: int) -> list[int]:
        """The q in [lo, hi) (the span where both inputs are real) outside the window [o, o + size)."""
        return [*range(lo, min(hi, max(lo, o))), *range(max(lo, min(hi, o + size)), hi)]

    for i, a in enumerate((a1, a2) for a1 in ou[0] for a2 in ou[1]):
        for j, b in enumerate((b1, b2) for b1 in ov[0] for b2 in ov[1]):
            if symmetric and j < i:
                continue
            d = (b[0] - a[0], b[1] - a[1])
            block = out[:, i, :, j]
            block.copy_(t.full(d))  # with ``symmetric``, j >= i: d is never below (0, 0)
            rows_out = outside(a[0], out_grid[0], *_span(0, hu, 0, hv, d[0]))
            cols_out = outside(a[1], out_grid[1], *_span(0, wu, 0, wv, d[1]))
            for q1 in rows_out:
                block -= t.row(d, q1)
            for q2 in cols_out:
                block -= t.column(d, q2)
            for q1 in rows_out:
                for q2 in cols_out:
                    block += t.point(d, q1, q2)
            if symmetric and j > i:
                out[:, j, :, i] = block.T
    return out.reshape(cu * gu.area, cv * gv.area)


def patch_gradient(x: Tensor, geometry: Geometry, grad: Tensor) -> Tensor:
    """``sum_samples sum_p patch(p)^T g(p)``, shape ``[C_x kh kw, C_g]``: the weight gradient of a
    stride-1 conv of ``geometry`` from ``x [n, C_x, H, W]`` with output gradient ``grad [n, C_g, H', W']``."""
    weight = grad.new_empty((grad.shape[1], x.shape[1], *geometry.kernel))  # its shape only
    _, dw, _ = torch.ops.aten.convolution_backward(
        grad,
        x,
        weight,
        None,
        list(geometry.stride),
        list(geometry.padding),
        [1, 1],
        False,
        [0, 0],
        1,
        [False, True, False],
    )
    return dw.reshape(grad.shape[1], -1).T
