"""Moments of conv patches without unfolding them (stride-1 patch features, :mod:`dagrow.features`).

The patches of a stride-1 conv read their input at shifted positions: the row of output position p
holds ``x[c, p + o(a)]`` for each tap ``a`` of the kernel, ``o(a) = a - padding``. The moment of two
such features u and v (kernels k and k', on the same output grid) is therefore, block by block,

    S[(c, a), (c', b)] = sum_samples sum_{q in window(a)} x_u[c, q] x_v[c', q + d],   d = o_v(b) - o_u(a),

a correlation of the two inputs at the offset d summed over the output window that tap ``a`` sees.
Every pair of taps with the same offset shares the full correlation ``F_d = sum_q x_u[q] x_v[q + d]^T``;
the window's borders are subtracted by inclusion and exclusion (rows, columns, corner points outside
the window), and every block is one signed sum of these terms (one product with a small matrix of
+-1 per pair of features, :class:`_Assembly`).

The full correlations of every offset come from the inputs' discrete Fourier transforms: zero padded
to a :class:`Layout` (the grid plus the largest shift, so that no correlation wraps around), the
correlation is ``F_d = (1/N) sum_k Re(conj(X_u[k])^T X_v[k] e^{2 pi i k.d/N})`` over the frequencies k
of the real transform, about ``rows cols / 2`` frequencies. Per sample and pair of channels that is
three real multiply-adds per frequency for an input with itself (four for two inputs) instead of
``rows cols`` per offset (13 offsets for a 3x3 feature with itself, 25 for two 3x3 features); the
transforms are two small real matrix products. When the sites need every pair of a grid's nodes,
:class:`Correlations` correlates all their channels at once (``F_-d(u, v) = F_d(v, u)^T``).

The gradient blocks ``sum_samples sum_p patch(p) g_w(p)^T`` of a stride-1 feature are the weight
gradient of a conv with that geometry (``torch.ops.aten.convolution_backward``).

Everything here is a sum over the given samples; the accumulator scales and adds.
"""

from __future__ import annotations

import functools
import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from .features import Geometry, Pair

Key = tuple  # a term: ("f", d) | ("r", d, q1) | ("c", d, q2) | ("p", d, q1, q2)


def fast(geometry: Geometry | None) -> bool:
    """Whether a patch feature of this geometry is measured here (stride 1; any kernel and padding)."""
    return geometry is not None and geometry.stride == (1, 1)


@dataclass(frozen=True)
class Layout:
    """Where the inputs of a group of features sit: ``[n, C, height, width]`` (each input at the top
    left, zeros after), transformed at ``rows x cols`` (>= the grid + the largest shift, so that a
    correlation at any needed offset never wraps)."""

    height: int
    width: int
    rows: int
    cols: int

    @classmethod
    def of(cls, grids: Sequence[Sequence[int]], shift: Pair) -> Layout:
        h, w = max(g[0] for g in grids), max(g[1] for g in grids)
        return cls(h, w, h + shift[0], w + shift[1])

    @property
    def half(self) -> int:
        """Column frequencies of the real transform."""
        return self.cols // 2 + 1

    @property
    def frequencies(self) -> int:
        """Frequencies of the real transform: ``rows half``."""
        return self.rows * self.half

    def floats(self, channels: int) -> int:
        """Floats per sample that one chunk holds for ``channels`` channels: the inputs, the
        transform along the columns and the spectrum."""
        return channels * (self.height * self.width + 2 * self.height * self.half + 2 * self.frequencies)

    def transform_cost(self, channels: int) -> int:
        """Multiply-adds per sample of :meth:`spectrum` for ``channels`` channels."""
        return channels * self.half * (2 * self.width * self.height + 4 * self.rows * self.height)

    def stack(self, *xs: Tensor, dtype: torch.dtype) -> Tensor:
        """``x [n, C, H, W]`` (each of ``xs``) -> ``[n, sum C, height, width]`` in ``dtype``, the channels
        of each input after those of the one before (the input itself when it is the only one, of
        the layout's grid and ``dtype``)."""
        grid = (self.height, self.width)
        padded = [
            x if tuple(x.shape[2:]) == grid else F.pad(x, (0, grid[1] - x.shape[3], 0, grid[0] - x.shape[2]))
            for x in xs
        ]
        return (padded[0] if len(padded) == 1 else torch.cat(padded, 1)).to(dtype).contiguous()

    def spectrum(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The real and imaginary parts of the 2-D discrete Fourier transform of ``x [n, C, height,
        width]`` zero padded to ``rows x cols``, at the frequencies of the real transform: ``[F, n,
        C]`` each (F = ``frequencies``, the row frequency outer)."""
        along_cols, along_rows = _dft(self, x.dtype, x.device)
        n, c, h, w = x.shape
        half = self.half
        y = along_cols @ x.reshape(n * c, h, w).permute(1, 2, 0)  # [h, (re, im) x half, n C]
        z = along_rows @ y.reshape(2 * h, half * n * c)  # [(re, im) x rows, half n C]
        z = z.reshape(2, self.frequencies, n, c)
        return z[0], z[1]

    def phases(self, ds: Sequence[Pair], dtype: torch.dtype, device) -> tuple[Tensor, Tensor]:
        """``[len(ds), F]`` each: ``w_k cos(theta)/N`` and ``w_k sin(theta)/N`` with ``theta = 2 pi (k1 d1
        / rows + k2 d2 / cols)``; w_k = 2 for a column frequency whose conjugate is not in the real
        transform, else 1."""
        return _phases(self, tuple(ds), dtype, device)


@functools.lru_cache(maxsize=64)
def _phases(layout: Layout, ds: tuple[Pair, ...], dtype: torch.dtype, device) -> tuple[Tensor, Tensor]:
    k1 = torch.arange(layout.rows, dtype=torch.float64).view(-1, 1)
    k2 = torch.arange(layout.half, dtype=torch.float64).view(1, -1)
    weight = torch.full((layout.rows, layout.half), 2.0, dtype=torch.float64)
    weight[:, 0] = 1.0
    if layout.cols % 2 == 0:
        weight[:, -1] = 1.0
    weight /= layout.rows * layout.cols
    theta = torch.stack([2 * math.pi * (k1 * d[0] / layout.rows + k2 * d[1] / layout.cols) for d in ds])
    theta = theta.reshape(len(ds), -1)
    flat = weight.reshape(-1)
    return (
        (flat * torch.cos(theta)).to(dtype=dtype, device=device),
        (flat * torch.sin(theta)).to(dtype=dtype, device=device),
    )


@functools.lru_cache(maxsize=32)
def _dft(layout: Layout, dtype: torch.dtype, device) -> tuple[Tensor, Tensor]:
    """The two real matrices of :meth:`Layout.spectrum`: along the columns ``[2 half, width]`` (the
    cosines, then minus the sines, of the real transform's frequencies), then along the rows
    ``[2 rows, 2 height]`` (a complex transform of (re, im) pairs, the pair inner in its columns)."""
    half = layout.half
    q2 = torch.arange(layout.width, dtype=torch.float64)
    angle = 2 * math.pi * torch.arange(half, dtype=torch.float64).view(-1, 1) * q2 / layout.cols
    along_cols = torch.cat([torch.cos(angle), -torch.sin(angle)])
    q1 = torch.arange(layout.height, dtype=torch.float64)
    angle = 2 * math.pi * torch.arange(layout.rows, dtype=torch.float64).view(-1, 1) * q1 / layout.rows
    c, s = torch.cos(angle), torch.sin(angle)
    # (c - i s)(y_re + i y_im) = (c y_re + s y_im) + i (c y_im - s y_re); columns (q1, re/im)
    along_rows = torch.stack(
        [torch.stack([c, s], -1).reshape(layout.rows, -1), torch.stack([-s, c], -1).reshape(layout.rows, -1)]
    ).reshape(2 * layout.rows, 2 * layout.height)
    return along_cols.to(dtype=dtype, device=device), along_rows.to(dtype=dtype, device=device)


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


class _Products:
    """The correlation terms of two inputs ``a``, ``b`` in one :class:`Layout` (``[n, C, height,
    width]`` each), ``[C_a, C_b]`` by :data:`Key`: at an offset d the full correlation ``F_d = sum_q a[q]
    b[q + d]^T`` ("f"), the part of it from one row q1 of a ("r"), from one column q2 ("c"), and from
    one point (q1, q2) ("p"). Cached: the full correlations of all the offsets asked at once from
    the spectra, the others one product each. The layout is zero outside each input's values, so a
    row or column term may run over the whole layout."""

    def __init__(self, a: Tensor, b: Tensor, layout: Layout, chunk: Chunk) -> None:
        self.a, self.b, self.layout = a, b, layout
        # the spectra and lines of the inputs, shared; a weak reference: the chunk holds this
        # object, and a cycle would keep the spectra alive until the garbage collector runs
        self.chunk = weakref.proxy(chunk)
        self.cache: dict[Key, Tensor] = {}

    def stack(self, keys: Sequence[Key]) -> Tensor:
        """``[len(keys), C_a, C_b]``."""
        missing = [k for k in keys if k not in self.cache]
        self._correlate([k[1] for k in missing if k[0] == "f"])
        lines: dict[tuple[int, str], set[int]] = {}  # the rows and columns the border terms read
        for kind, d, *at in missing:
            if kind != "f":
                which, i = ("c", 1) if kind == "c" else ("r", 0)
                lines.setdefault((0, which), set()).add(at[0])
                lines.setdefault((1, which), set()).add(at[0] + d[i])
        for (side, which), qs in lines.items():
            self.chunk.read_lines(self.b if side else self.a, which, qs)
        return torch.stack([self._term(k) for k in keys])

    def _correlate(self, ds: list[Pair]) -> None:
        """The full correlations at the offsets ``ds`` and at every other offset that the layout
        holds (one pass over the spectra: later pairs of geometries need them no more; the offsets
        cost only their share of the projection)."""
        if not ds:
            return
        same = self.b is self.a
        window = (self.layout.rows - self.layout.height, self.layout.cols - self.layout.width)
        every = [
            (d0, d1) for d0 in range(-window[0], window[0] + 1) for d1 in range(-window[1], window[1] + 1)
        ]
        ds = sorted({*ds, *(d for d in every if not same or d >= (0, 0))})
        (ar, ai), (br, bi) = self.chunk.spectrum(self.a), self.chunk.spectrum(self.b)
        cos, sin = self.layout.phases(ds, ar.dtype, ar.device)
        ca, cb = ar.shape[2], br.shape[2]
        out = ar.new_zeros((len(ds), ca * cb))
        step = max(1, (1 << 20) // (ca * cb))  # frequencies per product: 4 MiB of float32 at most
        for lo in range(0, ar.shape[0], step):
            f = slice(lo, lo + step)
            real = torch.baddbmm(ar[f].mT @ br[f], ai[f].mT, bi[f])  # Re sum conj(x_u[k]) x_v[k]^T
            if same:
                t = ar[f].mT @ ai[f]
                imag = t - t.mT
            else:
                imag = torch.baddbmm(ar[f].mT @ bi[f], ai[f].mT, br[f], alpha=-1)
            out.addmm_(cos[:, f], real.reshape(real.shape[0], -1))
            out.addmm_(sin[:, f], imag.reshape(imag.shape[0], -1), alpha=-1)
        for d, term in zip(ds, out.reshape(len(ds), ca, cb), strict=True):
            self.cache[("f", d)] = term

    def _term(self, key: Key) -> Tensor:
        if key not in self.cache:
            kind, d = key[0], key[1]
            a, b, line = self.a, self.b, self.chunk.line
            if kind == "r":  # row q1 of a against row q1 + d1 of b
                q1, size = key[2], self.layout.width
                lo = max(0, -d[1])
                hi = max(lo, min(size, size - d[1]))
                x, y = line(a, "r", q1)[lo:hi], line(b, "r", q1 + d[0])[lo + d[1] : hi + d[1]]
            elif kind == "c":
                q2, size = key[2], self.layout.height
                lo = max(0, -d[0])
                hi = max(lo, min(size, size - d[0]))
                x, y = line(a, "c", q2)[lo:hi], line(b, "c", q2 + d[1])[lo + d[0] : hi + d[0]]
            else:
                q1, q2 = key[2], key[3]
                x, y = line(a, "r", q1)[q2], line(b, "r", q1 + d[0])[q2 + d[1]]
            self.cache[key] = x.reshape(-1, x.shape[-1]).T @ y.reshape(-1, y.shape[-1])
        return self.cache[key]


class Correlations:
    """The patch moments of several nodes' inputs at once: their channels concatenated in one
    :class:`Layout` (``x [n, sum C, height, width]``, ``channels[v]`` the slice of node v); one
    spectrum of all the channels and one product per frequency serve every pair, and the blocks of
    every pair of nodes under two geometries come from one signed sum of terms, a term at -d being
    the transposed term at d (all the channels correlated with themselves). Fewer, wider products
    than one per pair: each reads the inputs once."""

    def __init__(
        self, x: Tensor, channels: dict[str, slice], layout: Layout, chunk: Chunk | None = None
    ) -> None:
        self.x, self.channels, self.layout = x, channels, layout
        self.chunk = chunk or Chunk(layout)
        self.products = self.chunk.products(x, x)
        self.own = chunk is None  # then no other pair reads the spectrum after the first moment
        self.blocks: dict[tuple, Tensor] = {}

    def moment(
        self,
        u: str,
        shape_u: Sequence[int],
        gu: Geometry,
        v: str,
        shape_v: Sequence[int],
        gv: Geometry,
        out_grid: Pair,
    ) -> Tensor:
        """:meth:`Chunk.moment` of u's patches under ``gu`` and v's under ``gv``."""
        _check(self.layout, gu, gv)
        grid_u, grid_v = tuple(shape_u[1:]), tuple(shape_v[1:])
        key = (gu, grid_u, gv, grid_v, tuple(out_grid))
        if key not in self.blocks:  # every pair of channels at once
            assembly = _Assembly.of(*key)
            flipped = torch.tensor([k[1] < (0, 0) for k in assembly.keys], device=self.x.device)
            own = [_canonical_key(k) if k[1] < (0, 0) else k for k in assembly.keys]
            terms = self.products.stack(own)
            if self.own:
                self.chunk.spectra.clear()
            terms = torch.where(flipped.view(-1, 1, 1), terms.mT, terms)
            self.blocks[key] = _assemble(assembly, terms).permute(2, 0, 3, 1).contiguous()
        blocks = self.blocks[key][self.channels[u], :, self.channels[v]]  # [C_u, area_u, C_v, area_v]
        return blocks.reshape(blocks.shape[0] * blocks.shape[1], -1)


def _assemble(assembly: _Assembly, terms: Tensor) -> Tensor:
    """``[area_u, area_v, C_u, C_v]``: the blocks of every pair of taps, from ``terms [len(keys), C_u,
    C_v]``."""
    signs = assembly.signs.to(dtype=terms.dtype, device=terms.device)
    blocks = signs @ terms.reshape(len(assembly.keys), -1)
    return blocks.reshape(assembly.areas[0], assembly.areas[1], terms.shape[1], terms.shape[2])


def _block_rows(blocks: Tensor) -> Tensor:
    """``[area_u, area_v, C_u, C_v]`` -> ``[C_u area_u, C_v area_v]`` (in the order of
    :func:`dagrow.features.rows`)."""
    au, av, cu, cv = blocks.shape
    return blocks.permute(2, 0, 3, 1).reshape(cu * au, cv * av)


def _check(layout: Layout, gu: Geometry, gv: Geometry) -> None:
    shift = largest_shift(gu, gv)
    if layout.rows - layout.height < shift[0] or layout.cols - layout.width < shift[1]:
        raise ValueError(f"{layout} is too small for offsets up to {shift}: the correlations would wrap")


def _canonical_key(key: Key) -> Key:
    """The key of the same term seen from v's side, at -d (its row, column or point moves by d)."""
    kind, d, *at = key
    moved = [q + shift for q, shift in zip(at, d if kind != "c" else d[1:], strict=False)]
    return (kind, (-d[0], -d[1]), *moved)


def correlate_jointly(pairs: Sequence[tuple[int, int, bool]], channels: int) -> bool:
    """Whether :class:`Correlations` of all ``channels`` at once cost at most 1.5 times the products
    of the pairs' own spectra (``(C_u, C_v, symmetric)`` each: three real products of C_u C_v per
    frequency for a feature with itself, four for two): the wider products are faster per
    multiply-add, but compute every pair of nodes."""
    alone = sum((3 if symmetric else 4) * cu * cv for cu, cv, symmetric in pairs)
    return bool(pairs) and 3 * channels * channels <= 1.5 * alone


@dataclass(frozen=True)
class _Assembly:
    """How the blocks of one pair of features are made of terms: ``keys`` (the terms), ``signs``
    ``[blocks_u blocks_v, len(keys)]`` (+1 for the full correlation and corner points, -1 for a row or
    column outside a tap's window)."""

    keys: tuple[Key, ...]
    signs: Tensor
    areas: Pair

    @staticmethod
    @functools.lru_cache(maxsize=256)
    def of(gu: Geometry, grid_u: Pair, gv: Geometry, grid_v: Pair, out_grid: Pair) -> _Assembly:
        (hu, wu), (hv, wv) = grid_u, grid_v
        ou, ov = offsets(gu), offsets(gv)

        def outside(o: int, size: int, lo: int, hi: int) -> list[int]:
            """The q in [lo, hi) (where both inputs are real) outside the window [o, o + size)."""
            return [*range(lo, min(hi, max(lo, o))), *range(max(lo, min(hi, o + size)), hi)]

        index: dict[Key, int] = {}
        entries: list[tuple[int, int, float]] = []
        block = 0
        for a in ((a1, a2) for a1 in ou[0] for a2 in ou[1]):
            for b in ((b1, b2) for b1 in ov[0] for b2 in ov[1]):
                d = (b[0] - a[0], b[1] - a[1])
                rows_out = outside(a[0], out_grid[0], *_span(0, hu, 0, hv, d[0]))
                cols_out = outside(a[1], out_grid[1], *_span(0, wu, 0, wv, d[1]))
                signed: list[tuple[Key, float]] = [(("f", d), 1.0)]
                signed += [(("r", d, q1), -1.0) for q1 in rows_out]
                signed += [(("c", d, q2), -1.0) for q2 in cols_out]
                signed += [(("p", d, q1, q2), 1.0) for q1 in rows_out for q2 in cols_out]
                for key, sign in signed:
                    entries.append((block, index.setdefault(key, len(index)), sign))
                block += 1
        signs = torch.zeros(block, len(index), dtype=torch.float64)
        for i, k, sign in entries:
            signs[i, k] += sign
        return _Assembly(tuple(index), signs, (gu.area, gv.area))


def multiply_adds(
    gu: Geometry, grid_u: Pair, cu: int, gv: Geometry, grid_v: Pair, cv: int, out_grid: Pair, same: bool
) -> int:
    """Multiply-adds per sample of :meth:`Chunk.moment` for one pair of features (``same``: one input):
    the products of its spectra and its border terms; the transforms are :meth:`Layout.transform_cost`."""
    layout = Layout.of([grid_u, grid_v], largest_shift(gu, gv))
    keys = set(_Assembly.of(gu, grid_u, gv, grid_v, out_grid).keys)
    if same:
        keys = {_canonical_key(k) if k[1] < (0, 0) else k for k in keys}
    border = 0
    for kind, d, *_ in keys:
        if kind == "r":
            border += max(0, min(layout.width, layout.width - d[1]) - max(0, -d[1]))
        elif kind == "c":
            border += max(0, min(layout.height, layout.height - d[0]) - max(0, -d[0]))
        elif kind == "p":
            border += 1
    return ((3 if same else 4) * layout.frequencies + border) * cu * cv


class Chunk:
    """The patch moments of the inputs of one chunk of samples in one :class:`Layout`
    (``[n, C, height, width]`` each): each input's spectrum, its rows and columns that border terms
    read, and the terms of each pair of inputs are computed once for all the pairs of features
    asked (the inputs are held, so that their ids stay theirs)."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.inputs: dict[int, Tensor] = {}
        self.spectra: dict[int, tuple[Tensor, Tensor]] = {}
        self.lines: dict[tuple, Tensor] = {}
        self.pairs: dict[tuple[int, int], _Products] = {}

    def _hold(self, x: Tensor) -> int:
        self.inputs[id(x)] = x
        return id(x)

    def spectrum(self, x: Tensor) -> tuple[Tensor, Tensor]:
        key = self._hold(x)
        if key not in self.spectra:
            self.spectra[key] = self.layout.spectrum(x)
        return self.spectra[key]

    def line(self, x: Tensor, which: str, q: int) -> Tensor:
        """Row (``which`` "r") or column ("c") ``q`` of ``x``, ``[width or height, n, C]``."""
        self.read_lines(x, which, [q])
        return self.lines[(id(x), which, q)]

    def read_lines(self, x: Tensor, which: str, qs) -> None:
        """Read the rows or columns ``qs`` of ``x`` that are not read yet, in one pass over ``x``."""
        key = self._hold(x)
        todo = sorted(q for q in set(qs) if (key, which, q) not in self.lines)
        if todo:
            dim = 2 if which == "r" else 3
            picked = x.index_select(dim, torch.tensor(todo, device=x.device))
            lines = picked.permute(dim, 5 - dim, 0, 1).contiguous()  # [len(todo), length, n, C]
            for q, line in zip(todo, lines, strict=True):
                self.lines[(key, which, q)] = line

    def products(self, a: Tensor, b: Tensor) -> _Products:
        key = (self._hold(a), self._hold(b))
        if key not in self.pairs:
            self.pairs[key] = _Products(a, b, self.layout, self)
        return self.pairs[key]

    def moment(
        self,
        xu: Tensor,
        shape_u: Sequence[int],
        gu: Geometry,
        xv: Tensor,
        shape_v: Sequence[int],
        gv: Geometry,
        out_grid: Pair,
    ) -> Tensor:
        """``sum_samples sum_p patch_u(p)^T patch_v(p)``, shape ``[C_u kh kw, C_v kh' kw']`` (columns in
        the order of :func:`dagrow.features.rows`).

        ``xu``, ``xv``: the inputs in the layout (``[n, C, height, width]``; the same tensor for a
        feature with itself, whose terms at -d are then the transposed terms at d); ``shape_u``,
        ``shape_v``: their real ``(C, H, W)``. Several nodes at once: :class:`Correlations`."""
        if xu is xv:
            everything = {"x": slice(None)}
            joint = Correlations(xu, everything, self.layout, self)
            return joint.moment("x", shape_u, gu, "x", shape_v, gv, out_grid)
        _check(self.layout, gu, gv)
        assembly = _Assembly.of(gu, tuple(shape_u[1:]), gv, tuple(shape_v[1:]), tuple(out_grid))
        return _block_rows(_assemble(assembly, self.products(xu, xv).stack(assembly.keys)))


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
