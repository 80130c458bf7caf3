"""Feature blocks: the named pieces of B_v that the statistics multiply together (DESIGN.md notation).

A flat node's features are its linear sources' post-activations (the block is named after the source)
and the constant ``"1"`` of its bias: one row per sample. An image node's features live on its output
grid, one row per (sample, output position), as DESIGN.md's convention for convolutions says (a sample
contributes the sum over its positions):

- ``"u#3x3s1x1p1x1"``: the patches of ``u``'s post-activation that a conv2d edge with kernel 3x3, stride
  1 and padding 1 reads (``torch.nn.functional.unfold``; ``C_u * kh * kw`` values, channel-major,
  in the order of the conv weight flattened as ``weight.reshape(C_out, -1)``);
- ``"1#8x8"``: the constant 1 at every position of an 8x8 grid (the bias of an image node);
- ``"u#3x3s1x1p1x1/sum"``, ``"1#8x8/sum"``: the same summed over the grid's positions, one row per
  sample (what a new channel writes through a flatten when its fan-out is the same at every position).

Only features on the same grid are ever multiplied together (pairs of rows must be the same samples at
the same positions). The pre-activation gradient of an image node is read on its grid too: ``g_w`` has
``C_w`` values per position.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

ONE = "1"

Pair = tuple[int, int]


def _pair(v) -> Pair:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


@dataclass(frozen=True)
class Geometry:
    """Kernel, stride and padding of a conv2d edge (each (height, width))."""

    kernel: Pair
    stride: Pair = (1, 1)
    padding: Pair = (0, 0)

    @classmethod
    def of(cls, op) -> Geometry:
        return cls(_pair(op.kernel), _pair(op.stride), _pair(op.padding))

    @classmethod
    def same(cls, kernel: int) -> Geometry:
        """A stride-1 conv that keeps the grid (odd kernel, padding (k - 1) / 2)."""
        return cls((kernel, kernel), (1, 1), ((kernel - 1) // 2, (kernel - 1) // 2))

    @property
    def tag(self) -> str:
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        return f"{kh}x{kw}s{sh}x{sw}p{ph}x{pw}"

    @property
    def area(self) -> int:
        return self.kernel[0] * self.kernel[1]

    def out_grid(self, grid: Pair) -> Pair:
        return (
            (grid[0] + 2 * self.padding[0] - self.kernel[0]) // self.stride[0] + 1,
            (grid[1] + 2 * self.padding[1] - self.kernel[1]) // self.stride[1] + 1,
        )

    @property
    def centred(self) -> bool:
        """Whether output position p reads its input at p through the kernel's centre (odd kernel,
        stride 1, padding (k - 1) / 2): new channels placed at the centre tap act position-wise."""
        return all(
            k % 2 == 1 and s == 1 and p == (k - 1) // 2
            for k, s, p in zip(self.kernel, self.stride, self.padding, strict=True)
        )

    @property
    def centre(self) -> Pair:
        return (self.kernel[0] // 2, self.kernel[1] // 2)

    def op(self) -> dict:
        """The spec data of a conv2d edge with this geometry."""

        def short(p: Pair):
            return p[0] if p[0] == p[1] else list(p)

        return {
            "type": "conv2d",
            "kernel": short(self.kernel),
            "stride": short(self.stride),
            "padding": short(self.padding),
        }


def patch_feature(source: str, geometry: Geometry) -> str:
    return f"{source}#{geometry.tag}"


def grid_one(grid: Pair) -> str:
    return f"{ONE}#{grid[0]}x{grid[1]}"


SUM = "/sum"


def pool_tag(op) -> str:
    """The transform of an avg_pool edge: ``/avg2x2s2x2p0x0``."""
    stride = op.kernel if op.stride is None else op.stride
    return "/avg" + Geometry(_pair(op.kernel), _pair(stride), _pair(op.padding)).tag


def core(feature: str) -> str:
    """The feature before its transforms (``"c1#3x3s1x1p1x1/avg2x2s2x2p0x0/sum"`` -> ``"c1#3x3s1x1p1x1"``)."""
    return feature.partition("/")[0]


def transform(feature: str) -> str:
    """The transforms of a feature (``"/avg2x2s2x2p0x0/sum"``): average pools, then a sum over the grid."""
    return feature[len(core(feature)) :]


def is_summed(feature: str) -> bool:
    return feature.endswith(SUM)


def _pools(transforms: str) -> list[Geometry]:
    return [_parse_tag(t[3:]) for t in transforms.split("/") if t.startswith("avg")]


def apply_transform(rows_: Tensor, n: int, grid: Pair, transforms: str) -> Tensor:
    """Rows ``[n * H * W, D]`` on ``grid`` through the transforms: average pools (as the avg_pool op
    computes them), then the sum over the positions (rows ``[n, D]``) or the rows on the pooled grid."""
    if not transforms:
        return rows_
    image = rows_.reshape(n, grid[0], grid[1], -1).permute(0, 3, 1, 2)
    for g in _pools(transforms):
        image = F.avg_pool2d(image, g.kernel, g.stride, g.padding)
    return image.sum((2, 3)) if transforms.endswith(SUM) else image_rows(image)


def position_weights(grid: Pair, transforms: str, dtype: torch.dtype, device) -> Tensor:
    """The weight of each position of ``grid`` in a summed transform (``.../sum``): the rows' transform
    is ``sum_p weights[p] rows(p)`` (average pools then a sum over the grid are linear and act on every
    column alike), ``[H, W]``."""
    with torch.inference_mode(False), torch.enable_grad():  # autograd on a small tensor, in any mode
        ones = torch.ones(grid[0] * grid[1], 1, dtype=dtype, device=device, requires_grad=True)
        (weights,) = torch.autograd.grad(apply_transform(ones, 1, grid, transforms).sum(), ones)
    return weights.reshape(grid)


def weighted_patch_sum(value: Tensor, geometry: Geometry, weights: Tensor) -> Tensor:
    """``sum_p weights[p] patch(p)`` per sample without unfolding: ``[n, C * kh * kw]`` (the patch at
    p reads ``value[c, stride * p + a - padding]``, so the sum is a correlation of each channel with
    the weights dilated by the stride)."""
    n, c, h, w = value.shape
    kh, kw = geometry.kernel
    out = F.conv2d(
        value.reshape(n * c, 1, h, w),
        weights.to(value.dtype)[None, None],
        padding=geometry.padding,
        dilation=geometry.stride,
    )
    return out[:, 0, :kh, :kw].reshape(n, c * kh * kw)


def transformed_grid(grid: Pair, transforms: str) -> Pair | None:
    for g in _pools(transforms):
        grid = g.out_grid(grid)
    return None if transforms.endswith(SUM) else grid


def is_one(feature: str) -> bool:
    """Whether the feature is a constant 1 (the flat ``"1"`` or an image grid's ``"1#HxW"``)."""
    return feature == ONE or feature.startswith(ONE + "#")


def describe(feature: str) -> str:
    """A feature in words, for messages: ``"c1#3x3s1x1p1x1"`` -> ``"c1 (3x3 patches)"``."""
    geometry = parse_geometry(feature)
    if geometry is None:
        return feature
    kh, kw = geometry.kernel
    ways = [
        w for w, on in (("pooled", "/avg" in feature), ("summed over the grid", is_summed(feature))) if on
    ]
    way = (", " + " and ".join(ways)) if ways else ""
    return f"{base(feature)} ({kh}x{kw} patches{way})"


def base(feature: str) -> str:
    """The node a feature reads (``"u#3x3s1x1p1x1"`` -> ``"u"``)."""
    return feature.partition("#")[0]


def parse_geometry(feature: str) -> Geometry | None:
    """The geometry of a patch feature, None for a plain feature or a constant."""
    name, _, tag = core(feature).partition("#")
    if not tag or name == ONE:
        return None
    return _parse_tag(tag)


def _parse_tag(tag: str) -> Geometry:
    k, _, rest = tag.partition("s")
    s, _, p = rest.partition("p")

    def two(text: str) -> Pair:
        a, _, b = text.partition("x")
        return (int(a), int(b))

    return Geometry(two(k), two(s), two(p))


def feature_width(feature: str, shapes: dict[str, tuple[int, ...]]) -> int:
    """The number of values of a feature per row."""
    if is_one(feature):
        return 1
    geometry = parse_geometry(feature)
    if geometry is None:
        return math.prod(shapes[feature])
    return shapes[base(feature)][0] * geometry.area


def feature_grid(feature: str, shapes: dict[str, tuple[int, ...]]) -> Pair | None:
    """The grid a feature's rows live on (None: flat, one row per sample)."""
    if feature == ONE:
        return None
    if transform(feature):
        inner = feature_grid(core(feature), shapes)
        return None if inner is None else transformed_grid(inner, transform(feature))
    name = base(feature)
    if name == ONE:
        return _tag_grid(feature)
    geometry = parse_geometry(feature)
    if geometry is None:
        shape = shapes[feature]
        return None if len(shape) == 1 else (shape[1], shape[2])
    shape = shapes[name]
    return geometry.out_grid((shape[1], shape[2]))


def _value_grid(feature: str, value: Tensor | None) -> Pair:
    """The grid of a patch feature's rows, from its node's value."""
    geometry = parse_geometry(feature)
    assert value is not None and geometry is not None
    return geometry.out_grid((value.shape[2], value.shape[3]))


def _tag_grid(one: str) -> Pair:
    h, _, w = one.partition("#")[2].partition("x")
    return (int(h), int(w))


def node_grid(shape: tuple[int, ...]) -> Pair | None:
    return None if len(shape) == 1 else (shape[1], shape[2])


def rows(
    feature: str,
    value: Tensor | None,
    n: int,
    grid: Pair | None,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | None = None,
) -> Tensor:
    """The rows of a feature for a batch of ``n`` samples: ``[n, width]`` (flat) or ``[n * H * W,
    width]`` (on a grid), in ``dtype`` (default: the value's).

    ``value`` is the post-activation of the feature's node (None for a constant, whose rows are ones
    in ``dtype`` on ``device``)."""
    if transform(feature):
        inner = core(feature)
        inner_grid = _tag_grid(inner) if is_one(inner) else _value_grid(inner, value)
        geometry = parse_geometry(inner)
        if is_summed(feature) and geometry is not None and value is not None:
            weights = position_weights(inner_grid, transform(feature), value.dtype, value.device)
            out = weighted_patch_sum(value, geometry, weights)
            return out if dtype is None else out.to(dtype)
        inner_rows = rows(inner, value, n, inner_grid, dtype=dtype, device=device)
        return apply_transform(inner_rows, n, inner_grid, transform(feature))
    if is_one(feature):
        count = n if grid is None else n * grid[0] * grid[1]
        return torch.ones(count, 1, dtype=dtype, device=device)
    assert value is not None
    geometry = parse_geometry(feature)
    if geometry is None:
        out = value.flatten(1) if grid is None else image_rows(value)
    else:
        patches = F.unfold(value, geometry.kernel, padding=geometry.padding, stride=geometry.stride)
        out = patches.transpose(1, 2).reshape(-1, patches.shape[1])
    return out if dtype is None else out.to(dtype)


def node_rows(value: Tensor) -> Tensor:
    """A node's value (or its gradient) as rows: ``[n, width]``, or ``[n * H * W, C]`` on an image."""
    return image_rows(value) if value.dim() == 4 else value.flatten(1)


def image_rows(value: Tensor) -> Tensor:
    """``[n, C, H, W]`` -> ``[n * H * W, C]`` (rows in the order of unfold's positions)."""
    return value.permute(0, 2, 3, 1).reshape(-1, value.shape[1])


def parameter(feature: str, target: str) -> str:
    """The parameter that multiplies a feature of ``target``: an edge weight or the node's bias."""
    return f"nodes.{target}.bias" if is_one(feature) else f"edges.{base(feature)}__{target}.weight"


def as_parameter(block: Tensor, feature: str) -> Tensor:
    """Columns ``[rows, width]`` of a feature -> the slice of its parameter: a bias ``[rows]``, a
    linear weight ``[rows, width]`` or a conv weight ``[rows, C, kh, kw]``."""
    if is_one(feature):
        return block.reshape(-1)
    geometry = parse_geometry(feature)
    if geometry is None:
        return block
    return block.reshape(block.shape[0], -1, *geometry.kernel)


def as_columns(weight: Tensor) -> Tensor:
    """Inverse of :func:`as_parameter` for weights: ``[rows, ...] -> [rows, width]``."""
    return weight.reshape(weight.shape[0], -1) if weight.dim() > 1 else weight.reshape(-1, 1)
