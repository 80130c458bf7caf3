"""Patch moments without unfolding (dagrow.patch_moments) equal products of unfolded patches (float64)."""

from __future__ import annotations

import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch.nn import functional as F

from dagrow.features import SUM, Geometry, apply_transform, rows, transformed_grid
from dagrow.patch_moments import (
    Correlations,
    Layout,
    correlate_jointly,
    fast,
    largest_shift,
    patch_gradient,
    patch_moment,
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
    pu, pv = layout.pad(xu, dtype=torch.float64), layout.pad(xv, dtype=torch.float64)
    expected = unfolded(xu, gu).T @ unfolded(xv, gv)
    got = patch_moment(pu, (2, h, w), gu, pv, (3, hv, wv), gv, out)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    # the same from the correlations of both inputs' channels at once (one layout, u then v, padded
    # for every pair it serves)
    reach = [largest_shift(g1, g2) for g1, g2 in ((gu, gv), (gu, gu), (gv, gv))]
    layout = Layout.of([(h, w), (hv, wv)], (max(r[0] for r in reach), max(r[1] for r in reach)))
    corr = Correlations(layout.pad(xu, xv, dtype=torch.float64), {"u": slice(0, 2), "v": slice(2, 5)})
    pair = (corr.view("u"), (2, h, w), gu, corr.view("v"), (3, hv, wv), gv, out)
    jointly = patch_moment(*pair, terms=corr.terms("u", "v"))
    torch.testing.assert_close(jointly, expected, rtol=0, atol=1e-12)
    backwards = patch_moment(*pair[3:6], *pair[:3], out, terms=corr.terms("v", "u"))
    torch.testing.assert_close(backwards, expected.T, rtol=0, atol=1e-12)
    for name, x, g, c in (("u", xu, gu, 2), ("v", xv, gv, 3)):
        shape = (c, *x.shape[2:])
        joint = patch_moment(
            corr.view(name), shape, g, corr.view(name), shape, g, out, True, corr.terms(name, name)
        )
        torch.testing.assert_close(joint, unfolded(x, g).T @ unfolded(x, g), rtol=0, atol=1e-12)
    # a feature with itself: half the offsets, the same matrix (symmetric)
    layout = Layout.of([(h, w)], largest_shift(gu, gu))
    xp = layout.pad(xu, dtype=torch.float64)
    itself = patch_moment(xp, (2, h, w), gu, xp, (2, h, w), gu, out, symmetric=True)
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
    g = Geometry.same(3)
    widths = (3, 32, 32)
    every = [(g, a, g, b, i == j) for i, a in enumerate(widths) for j, b in enumerate(widths) if j >= i]
    assert correlate_jointly(every, 67)  # all pairs: the same multiply-adds in fewer, wider products
    assert not correlate_jointly([(g, 32, g, 32, True)], 96)  # one node of three: 9 times the work
    assert not correlate_jointly([], 0)
