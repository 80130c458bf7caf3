"""Patch moments without unfolding (dagrow.patch_moments) equal products of unfolded patches (float64)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch.nn import functional as F

from dagrow.features import SUM, Geometry, apply_transform, rows, transformed_grid
from dagrow.patch_moments import (
    Chunk,
    Correlations,
    Layout,
    correlate_jointly,
    fast,
    largest_shift,
    multiply_adds,
    patch_gradient,
)


def unfolded(x: torch.Tensor, g: Geometry) -> torch.Tensor:
    patches = F.unfold(x, g.kernel, padding=g.padding, stride=g.stride)
    return patches.transpose(1, 2).reshape(-1, patches.shape[1])


geometries = st.builds(
    lambda kh, kw, ph, pw: Geometry((kh, kw), (1, 1), (min(ph, kh - 1), min(pw, kw - 1))),
    st.integers(1, 5),
    st.integers(1, 5),
    st.integers(0, 2),
    st.integers(0, 2),
)


@settings(max_examples=60, deadline=None)
@given(gu=geometries, gv=geometries, h=st.integers(1, 7), w=st.integers(1, 7), seed=st.integers(0, 9))
def test_moment_of_two_patch_features_is_the_product_of_their_unfolded_rows(gu, gv, h, w, seed):
    out = gu.out_grid((h, w))
    # v's input grid chosen so that both features land on the same output grid
    hv = out[0] - 2 * gv.padding[0] + gv.kernel[0] - 1
    wv = out[1] - 2 * gv.padding[1] + gv.kernel[1] - 1
    assume(min(out) >= 1 and hv >= 1 and wv >= 1)
    gen = torch.Generator().manual_seed(seed)
    xu = torch.randn(3, 2, h, w, generator=gen, dtype=torch.float64)
    xv = torch.randn(3, 3, hv, wv, generator=gen, dtype=torch.float64)
    layout = Layout.of([(h, w), (hv, wv)], largest_shift(gu, gv))
    pu, pv = layout.stack(xu, dtype=torch.float64), layout.stack(xv, dtype=torch.float64)
    expected = unfolded(xu, gu).T @ unfolded(xv, gv)
    got = Chunk(layout).moment(pu, (2, h, w), gu, pv, (3, hv, wv), gv, out)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    # the same from the correlations of both inputs' channels at once (one layout, u then v, padded
    # for every pair it serves)
    reach = [largest_shift(g1, g2) for g1, g2 in ((gu, gv), (gu, gu), (gv, gv))]
    layout = Layout.of([(h, w), (hv, wv)], (max(r[0] for r in reach), max(r[1] for r in reach)))
    channels = {"u": slice(0, 2), "v": slice(2, 5)}
    corr = Correlations(layout.stack(xu, xv, dtype=torch.float64), channels, layout)
    jointly = corr.moment("u", (2, h, w), gu, "v", (3, hv, wv), gv, out)
    torch.testing.assert_close(jointly, expected, rtol=0, atol=1e-12)
    backwards = corr.moment("v", (3, hv, wv), gv, "u", (2, h, w), gu, out)
    torch.testing.assert_close(backwards, expected.T, rtol=0, atol=1e-12)
    for name, x, g, c in (("u", xu, gu, 2), ("v", xv, gv, 3)):
        joint = corr.moment(name, (c, *x.shape[2:]), g, name, (c, *x.shape[2:]), g, out)
        torch.testing.assert_close(joint, unfolded(x, g).T @ unfolded(x, g), rtol=0, atol=1e-12)
    # a feature with itself (one input: the terms at -d are the transposed terms at d)
    layout = Layout.of([(h, w)], largest_shift(gu, gu))
    xp = layout.stack(xu, dtype=torch.float64)
    itself = Chunk(layout).moment(xp, (2, h, w), gu, xp, (2, h, w), gu, out)
    torch.testing.assert_close(itself, unfolded(xu, gu).T @ unfolded(xu, gu), rtol=0, atol=1e-12)
    grad = torch.randn(3, 4, *out, generator=gen, dtype=torch.float64)
    rows = grad.permute(0, 2, 3, 1).reshape(-1, 4)
    torch.testing.assert_close(patch_gradient(xu, gu, grad), unfolded(xu, gu).T @ rows, rtol=0, atol=1e-12)


def test_only_stride_one_patches_are_correlated():
    assert fast(Geometry.same(3))
    assert fast(Geometry((2, 2), (1, 1), (0, 0)))
    assert not fast(Geometry((2, 2), (2, 2), (0, 0)))
    assert not fast(None)


@settings(max_examples=40, deadline=None)
@given(
    g=st.builds(
        lambda k, s, p: Geometry((k, k), (s, s), (min(p, k - 1), min(p, k - 1))),
        st.integers(1, 4),
        st.integers(1, 2),
        st.integers(0, 2),
    ),
    size=st.integers(3, 9),
    pool=st.sampled_from(["", "/avg2x2s2x2p0x0", "/avg3x3s1x1p1x1", "/avg2x2s1x1p0x0/avg2x2s2x2p1x1"]),
)
def test_a_summed_patch_feature_equals_its_unfolded_rows_pooled_and_summed(g, size, pool):
    out = g.out_grid((size, size))
    transforms = pool + SUM
    grid = out
    for step in pool.split("/")[1:]:  # every pooled grid must keep a position
        grid = transformed_grid(grid, "/" + step)
        assume(grid is not None and min(grid) >= 1)
    assume(min(out) >= 1)
    x = torch.randn(3, 2, size, size, generator=torch.Generator().manual_seed(size), dtype=torch.float64)
    feature = f"x#{g.tag}{transforms}"
    expected = apply_transform(unfolded(x, g), 3, out, transforms)
    torch.testing.assert_close(rows(feature, x, 3, None), expected, rtol=0, atol=1e-12)


def test_correlations_are_joint_when_every_pair_of_nodes_is_needed():
    widths = (3, 32, 32)
    every = [(a, b, i == j) for i, a in enumerate(widths) for j, b in enumerate(widths) if j >= i]
    assert correlate_jointly(every, 67)  # all pairs: about the same multiply-adds in fewer, wider products
    assert not correlate_jointly([(32, 32, True)], 96)  # one node of three: 9 times the work
    assert not correlate_jointly([], 0)


def test_float32_moments_keep_float32_accuracy():
    """The transforms add round-off in float32; a moment of ReLU inputs stays within 1e-5 of the
    largest entry of the float64 product of unfolded rows (cross pairs and a feature with itself)."""
    gen = torch.Generator().manual_seed(0)
    xu = torch.relu(torch.randn(64, 8, 16, 16, generator=gen))
    xv = torch.relu(torch.randn(64, 6, 16, 16, generator=gen))
    g, g5 = Geometry.same(3), Geometry.same(5)
    layout = Layout.of([(16, 16)], largest_shift(g5, g5))  # the largest shift of the three pairs
    su, sv = layout.stack(xu, dtype=torch.float32), layout.stack(xv, dtype=torch.float32)
    chunk = Chunk(layout)  # the pairs share the inputs' spectra
    for a, ga, b, gb in ((su, g, su, g), (su, g, sv, g5), (sv, g5, sv, g5)):
        x, y = (xu if a is su else xv), (xu if b is su else xv)
        exact = unfolded(x.double(), ga).T @ unfolded(y.double(), gb)
        got = chunk.moment(a, x.shape[1:], ga, b, y.shape[1:], gb, (16, 16))
        assert got.dtype == torch.float32
        assert float((got.double() - exact).abs().max() / exact.abs().max()) < 1e-5
    small = Layout.of([(16, 16)], largest_shift(g, g5))  # too small for a 5x5 feature with itself
    with pytest.raises(ValueError, match="wrap"):
        Chunk(small).moment(sv, xv.shape[1:], g5, sv, xv.shape[1:], g5, (16, 16))


def test_multiply_adds_count_the_spectra_and_the_border_terms():
    g1, g3 = Geometry.same(1), Geometry.same(3)
    layout = Layout.of([(16, 16)], (0, 0))
    # a 1x1 feature has one offset and no border: three real products per frequency with itself
    assert multiply_adds(g1, (16, 16), 4, g1, (16, 16), 4, (16, 16), True) == 3 * layout.frequencies * 16
    assert multiply_adds(g1, (16, 16), 4, g1, (16, 16), 5, (16, 16), False) == 4 * layout.frequencies * 20
    # a 3x3 feature with itself: 18 x 10 frequencies, rows 0 and 15 at three column offsets (16, 15
    # and 14 products each), the same for columns, and four corner points
    borders = 2 * 2 * (16 + 15 + 14) + 4
    assert multiply_adds(g3, (16, 16), 2, g3, (16, 16), 2, (16, 16), True) == (3 * 180 + borders) * 4
