"""The registry of edge ops, and the base of every model of the spec language.

Everything that knows about an op reads it from here: the spec language (pydantic discriminated
unions), the shape checks, the compiler, the JSON Schema, the CLI help and the contract tests
(parametrised over :func:`list_ops`). Node activations have their registry in
:mod:`dagrow.activations`.

An *op* sits on an edge ``u -> w`` and maps the post-activation of ``u`` to a contribution to the
pre-activation of ``w``.

Shapes never include the batch dimension: a flat node has shape ``(width,)``, an image node
``(channels, height, width)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Literal

import torch
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt
from torch import nn

Shape = tuple[int, ...]

MAX_SETTING = 1_000_000  # kernel, stride and padding (larger is absurd for any image dagrow can hold)
MAX_COEFFICIENT = 1e6  # |activation parameter| (a slope or a coefficient of a million is a typo)

PositiveSetting = Annotated[StrictInt, Field(gt=0, le=MAX_SETTING)]
Padding = Annotated[StrictInt, Field(ge=0, le=MAX_SETTING)]


def coefficient(x: float) -> float:
    if not math.isfinite(x):
        raise ValueError(f"{x} is not a finite number")
    if abs(x) > MAX_COEFFICIENT:
        raise ValueError(f"{x:g} is larger than {MAX_COEFFICIENT:g} in magnitude")
    return x


# a finite float in [-1e6, 1e6]; ints are accepted as floats (init: 1), bools and strings are not
Coefficient = Annotated[float, Field(strict=True), AfterValidator(coefficient)]


class ShapeError(ValueError):
    """An op cannot map its input shape to the shape the target node declares."""


class SpecModel(BaseModel):
    """Base of every model of the spec language: frozen, unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------------------------------
# Ops (edges)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OpInfo:
    """What the rest of dagrow needs to know about an op.

    ``out_shape(op, in_shape, target)`` returns the shape the edge produces given the source shape and
    the target node's declared ``(width, channels)``; ``build(op, in_shape, out_shape)`` returns the
    ``nn.Module`` that computes it (parameters named ``weight`` when the op is parametric).
    """

    name: str
    model: type[SpecModel]
    summary: str
    parametric: bool
    out_shape: Callable[[SpecModel, Shape, tuple[int | None, int | None]], Shape]
    build: Callable[[SpecModel, Shape, Shape], nn.Module]
    fan_in: Callable[[SpecModel, Shape], int]


OPS: dict[str, OpInfo] = {}


def register_op(name: str, summary: str, *, parametric: bool, fan_in=lambda op, s: 0):
    """Class decorator: register a pydantic op model with its shape rule and builder."""

    def deco(model: type[SpecModel]) -> type[SpecModel]:
        OPS[name] = OpInfo(
            name=name,
            model=model,
            summary=summary,
            parametric=parametric,
            out_shape=lambda op, s, t: op.out_shape(s, t),  # type: ignore[attr-defined]
            build=lambda op, s, o: op.build(s, o),  # type: ignore[attr-defined]
            fan_in=fan_in,
        )
        return model

    return deco


def list_ops() -> list[str]:
    """Names of the registered ops, in registration order."""
    return list(OPS)


def op_info(name: str) -> OpInfo:
    return OPS[name]


def _need_flat(name: str, in_shape: Shape) -> int:
    if len(in_shape) != 1:
        raise ShapeError(
            f"{name} needs a flat input but its source has shape {list(in_shape)} "
            "(put a flatten edge before it)"
        )
    return in_shape[0]


def _need_image(name: str, in_shape: Shape) -> tuple[int, int, int]:
    if len(in_shape) != 3:
        raise ShapeError(f"{name} needs an image input (channels, height, width) but got {list(in_shape)}")
    return in_shape  # type: ignore[return-value]


def _need_width(name: str, target: tuple[int | None, int | None]) -> int:
    width, _ = target
    if width is None:
        raise ShapeError(f"{name} writes a flat vector, so its target node needs 'width', not 'channels'")
    return width


def _need_channels(name: str, target: tuple[int | None, int | None]) -> int:
    _, channels = target
    if channels is None:
        raise ShapeError(f"{name} writes an image, so its target node needs 'channels', not 'width'")
    return channels


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _spatial_out(name, in_shape, kernel, stride, padding) -> tuple[int, int]:
    _, h, w = _need_image(name, in_shape)
    (kh, kw), (sh, sw), (ph, pw) = _pair(kernel), _pair(stride), _pair(padding)
    oh, ow = _conv_out(h, kh, sh, ph), _conv_out(w, kw, sw, pw)
    if oh < 1 or ow < 1:
        raise ShapeError(f"{name} with kernel {kernel} on a {h}x{w} image leaves no output pixel")
    return oh, ow


class LinearWeight(nn.Module):
    """``y = x W^T`` with ``W`` of shape ``[out, in]``; no bias (the bias lives in the target node)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, self.weight)

    def extra_repr(self) -> str:
        return f"in={self.weight.shape[1]}, out={self.weight.shape[0]}"


class Conv2dWeight(nn.Module):
    """2-D convolution without bias; weight ``[out_channels, in_channels, kh, kw]``."""

    def __init__(self, cin: int, cout: int, kernel, stride, padding) -> None:
        super().__init__()
        kh, kw = _pair(kernel)
        self.weight = nn.Parameter(torch.empty(cout, cin, kh, kw))
        self.stride, self.padding = _pair(stride), _pair(padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(x, self.weight, stride=self.stride, padding=self.padding)


class Flatten(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


@register_op(
    "linear", "dense map W b_u (weight [out, in], no bias)", parametric=True, fan_in=lambda op, s: s[0]
)
class LinearOp(SpecModel):
    type: Literal["linear"] = "linear"

    def out_shape(self, in_shape: Shape, target) -> Shape:
        _need_flat("linear", in_shape)
        return (_need_width("linear", target),)

    def build(self, in_shape: Shape, out_shape: Shape) -> nn.Module:
        return LinearWeight(in_shape[0], out_shape[0])


@register_op(
    "conv2d",
    "2-D convolution (kernel, stride, padding; weight [out, in, k, k], no bias)",
    parametric=True,
    fan_in=lambda op, s: s[0] * math.prod(_pair(op.kernel)),
)
class Conv2dOp(SpecModel):
    type: Literal["conv2d"] = "conv2d"
    kernel: PositiveSetting | tuple[PositiveSetting, PositiveSetting] = 3
    stride: PositiveSetting | tuple[PositiveSetting, PositiveSetting] = 1
    padding: Padding | tuple[Padding, Padding] = 0

    def out_shape(self, in_shape: Shape, target) -> Shape:
        oh, ow = _spatial_out("conv2d", in_shape, self.kernel, self.stride, self.padding)
        return (_need_channels("conv2d", target), oh, ow)

    def build(self, in_shape: Shape, out_shape: Shape) -> nn.Module:
        return Conv2dWeight(in_shape[0], out_shape[0], self.kernel, self.stride, self.padding)


@register_op("flatten", "image (C, H, W) -> flat vector of C*H*W", parametric=False)
class FlattenOp(SpecModel):
    type: Literal["flatten"] = "flatten"

    def out_shape(self, in_shape: Shape, target) -> Shape:
        c, h, w = _need_image("flatten", in_shape)
        width = _need_width("flatten", target)
        if width != c * h * w:
            raise ShapeError(
                f"flatten of {list(in_shape)} gives {c * h * w} features but the target has width {width}"
            )
        return (width,)

    def build(self, in_shape: Shape, out_shape: Shape) -> nn.Module:
        return Flatten()


@register_op("identity", "copies the source (shapes must match)", parametric=False)
class IdentityOp(SpecModel):
    type: Literal["identity"] = "identity"

    def out_shape(self, in_shape: Shape, target) -> Shape:
        width, channels = target
        if len(in_shape) == 1:
            if width != in_shape[0]:
                raise ShapeError(
                    f"identity from a source of width {in_shape[0]} into a node of "
                    f"{'width ' + str(width) if width else 'channels ' + str(channels)}"
                )
        elif channels != in_shape[0]:
            raise ShapeError(
                f"identity from an image of {in_shape[0]} channels into a node of "
                f"{'channels ' + str(channels) if channels else 'width ' + str(width)}"
            )
        return in_shape

    def build(self, in_shape: Shape, out_shape: Shape) -> nn.Module:
        return nn.Identity()


class _PoolOp(SpecModel):
    type: str
    kernel: PositiveSetting | tuple[PositiveSetting, PositiveSetting] = 2
    stride: PositiveSetting | tuple[PositiveSetting, PositiveSetting] | None = None
    padding: Padding | tuple[Padding, Padding] = 0

    def out_shape(self, in_shape: Shape, target) -> Shape:
        stride = self.kernel if self.stride is None else self.stride
        for k, p in zip(_pair(self.kernel), _pair(self.padding), strict=True):
            if p > k // 2:  # torch's rule: pooling pads at most half its kernel
                raise ShapeError(
                    f"{self.type} padding {self.padding} is more than half its kernel {self.kernel}"
                )
        oh, ow = _spatial_out(self.type, in_shape, self.kernel, stride, self.padding)
        channels = _need_channels(self.type, target)
        if channels != in_shape[0]:
            raise ShapeError(f"{self.type} keeps {in_shape[0]} channels but the target has {channels}")
        return (channels, oh, ow)


@register_op("avg_pool", "2-D average pooling (kernel, stride defaults to kernel, padding)", parametric=False)
class AvgPoolOp(_PoolOp):
    type: Literal["avg_pool"] = "avg_pool"

    def build(self, in_shape: Shape, out_shape: Shape) -> nn.Module:
        return nn.AvgPool2d(self.kernel, self.stride, self.padding)


@register_op("max_pool", "2-D max pooling (kernel, stride defaults to kernel, padding)", parametric=False)
class MaxPoolOp(_PoolOp):
    type: Literal["max_pool"] = "max_pool"

    def build(self, in_shape: Shape, out_shape: Shape) -> nn.Module:
        return nn.MaxPool2d(self.kernel, self.stride, self.padding)
