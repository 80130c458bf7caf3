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


class Terms(ABC):
    """The four kinds of correlation terms of a pair (u, v) at an offset d, ``[C_u, C_v]`` each: the
    full correlation ``F_d = sum_q x_u[q] x_v[q + d]^T``, the part of it from one row q1 of u, from one
    column q2, and from one point (q1, q2)."""

    @abstractmethod
    def full(self, d: Pair) -> Tensor: ...

    @abstractmethod
    def row(self, d: Pair, q1: int) -> Tensor: ...

    @abstractmethod
    def column(self, d: Pair, q2: int) -> Tensor: ...

    @abstractmethod
    def point(self, d: Pair, q1: int, q2: int) -> Tensor: ...


class _Products(Terms):
    """The terms of two inputs ``a``, ``b`` in one :class:`Layout` (``[n, rows, cols, C]`` each), one
    cached product per term. The layout is zero outside each input's values, so a row or column term
    may run over the whole layout."""

    def __init__(self, a: Tensor, b: Tensor) -> None:
        self.a, self.b = a, b
        self.cache: dict[tuple, Tensor] = {}

    def _product(self, key: tuple, x: Tensor, y: Tensor) -> Tensor:
        if key not in self.cache:
            self.cache[key] = x.reshape(-1, x.shape[-1]).T @ y.reshape(-1, y.shape[-1])
        return self.cache[key]

    def full(self, d: Pair) -> Tensor:
        if ("f", d) not in self.cache:  # a flat shift by d: the padding keeps it from wrapping
            a, b = self.a.reshape(-1, self.a.shape[3]), self.b.reshape(-1, self.b.shape[3])
            shift = d[0] * self.a.shape[2] + d[1]
            lo, hi = max(0, -shift), min(a.shape[0], a.shape[0] - shift)
            self.cache[("f", d)] = a[lo:hi].T @ b[lo + shift : hi + shift]
        return self.cache[("f", d)]

    def row(self, d: Pair, q1: int) -> Tensor:
        lo, hi = max(0, -d[1]), min(self.a.shape[2], self.a.shape[2] - d[1])
        return self._product(("r", d, q1), self.a[:, q1, lo:hi], self.b[:, q1 + d[0], lo + d[1] : hi + d[1]])

    def column(self, d: Pair, q2: int) -> Tensor:
        lo, hi = max(0, -d[0]), min(self.a.shape[1], self.a.shape[1] - d[0])
        return self._product(("c", d, q2), self.a[:, lo:hi, q2], self.b[:, lo + d[0] : hi + d[0], q2 + d[1]])

    def point(self, d: Pair, q1: int, q2: int) -> Tensor:
        return self._product(("p", d, q1, q2), self.a[:, q1, q2], self.b[:, q1 + d[0], q2 + d[1]])


class Correlations:
    """The correlation terms of several nodes' inputs at once: their channels concatenated in one
    :class:`Layout` (``x [n, rows, cols, sum C]``, ``channels[v]`` the slice of node v); one product of
    all the channels per offset d >= (0, 0) (and per border row, column, point) serves every pair, a
    term at -d being the transposed term at d taken from v's side. Fewer, wider products than one per
    pair and offset: each reads the inputs once."""

    def __init__(self, x: Tensor, channels: dict[str, slice]) -> None:
        self.x, self.channels = x, channels
        self.products = _Products(x, x)

    def view(self, v: str) -> Tensor:
        return self.x[..., self.channels[v]]

    def terms(self, u: str, v: str) -> Terms:
        """The terms of the pair (u, v)."""
        return _JointTerms(self.products, self.channels[u], self.channels[v])


class _JointTerms(Terms):
    """A pair's terms read from the products of all the channels: for d below (0, 0) the transposed
    term of -d, which starts at the row and column of v's side."""

    def __init__(self, products: _Products, u: slice, v: slice) -> None:
        self.products, self.u, self.v = products, u, v

    def _pick(self, term: Tensor, flipped: bool) -> Tensor:
        return term[self.v, self.u].T if flipped else term[self.u, self.v]

    def full(self, d: Pair) -> Tensor:
        return self._pick(self.products.full(canonical(d)), d < (0, 0))

    def row(self, d: Pair, q1: int) -> Tensor:
        flipped = d < (0, 0)
        return self._pick(self.products.row(canonical(d), q1 + d[0] if flipped else q1), flipped)

    def column(self, d: Pair, q2: int) -> Tensor:
        flipped = d < (0, 0)
        return self._pick(self.products.column(canonical(d), q2 + d[1] if flipped else q2), flipped)

    def point(self, d: Pair, q1: int, q2: int) -> Tensor:
        flipped = d < (0, 0)
        at = (q1 + d[0], q2 + d[1]) if flipped else (q1, q2)
        return self._pick(self.products.point(canonical(d), *at), flipped)


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
    t = _Products(xu, xv) if terms is None else terms

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
