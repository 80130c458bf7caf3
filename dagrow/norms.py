"""The registry of node normalisations: what a node applies to its summed input (plus bias) before its
activation, ``b_v = sigma(norm(a_v))``. Each entry is a pydantic model of the spec language (``norm:
NAME`` or ``{type: NAME, ...}``) that builds its ``nn.Module`` for a flat or an image node.

=============  ==============================  ==============================  ========================
norm           flat node ``[n, width]``        image node ``[n, C, H, W]``     statistics
=============  ==============================  ==============================  ========================
batch_norm     ``BatchNorm1d(width)``          ``BatchNorm2d(C)``              per channel, over the
                                                                               batch (running in eval)
layer_norm     ``LayerNorm(width)``            ``GroupNorm(1, C)``: over       per sample, over every
                                               ``[C, H, W]``, affine per C     entry of the node
group_norm     ``GroupNorm(groups, width)``    ``GroupNorm(groups, C)``        per sample and group
=============  ==============================  ==============================  ========================

Parameters ``nodes.<v>.norm.weight`` and ``.bias`` (``[size]``, unless ``affine: false``); batch norm
keeps ``running_mean``, ``running_var`` and ``num_batches_tracked`` as buffers (in bundles and
checkpoints with the weights).

Growth (docs/growing.md): new channels of a batch-normed node get weight 1, bias 0, running mean 0 and
running variance ``1 - eps``, so that in eval mode their norm is exactly the identity
(:func:`grow_norm`). Layer and group norms mix a node's channels, so a node that has one is not widened
(:func:`widen_problem`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, StrictBool, StrictInt
from torch import Tensor, nn

from .ops import SpecModel

MAX_GROUPS = 1_000_000

Eps = Annotated[float, Field(strict=True, gt=0.0, lt=1.0)]
Momentum = Annotated[float, Field(strict=True, gt=0.0, le=1.0)]
Groups = Annotated[StrictInt, Field(gt=0, le=MAX_GROUPS)]


@dataclass(frozen=True)
class NormInfo:
    """A normalisation: its pydantic model and a one-line summary."""

    name: str
    model: type[SpecModel]
    summary: str


NORMS: dict[str, NormInfo] = {}


def register_norm(name: str, summary: str):
    def deco(model: type[SpecModel]) -> type[SpecModel]:
        NORMS[name] = NormInfo(name, model, summary)
        return model

    return deco


def list_norms() -> list[str]:
    return list(NORMS)


def norm_info(name: str) -> NormInfo:
    return NORMS[name]


class _Norm(SpecModel):
    """Settings every norm has: ``eps`` (added to the variance) and ``affine`` (a learnable weight and
    bias per channel)."""

    type: str
    eps: Eps = 1e-5
    affine: StrictBool = True

    # whether each channel is normalised by statistics of its own (then widening leaves the old
    # channels alone)
    per_channel: ClassVar[bool] = False

    def build(self, size: int, image: bool) -> nn.Module:  # pragma: no cover - every entry overrides
        raise NotImplementedError

    def size_problem(self, size: int, what: str) -> str | None:
        """Why the norm cannot normalise a node of this size (None when it can)."""
        return None

    def num_params(self, size: int) -> int:
        return 2 * size if self.affine else 0


@register_norm("batch_norm", "per channel over the batch; running mean and variance in eval mode")
class BatchNormSpec(_Norm):
    type: Literal["batch_norm"] = "batch_norm"
    momentum: Momentum = 0.1

    per_channel: ClassVar[bool] = True

    def build(self, size: int, image: bool) -> nn.Module:
        cls = nn.BatchNorm2d if image else nn.BatchNorm1d
        return cls(size, eps=self.eps, momentum=self.momentum, affine=self.affine)


@register_norm("layer_norm", "per sample over every entry of the node (image: [C, H, W], affine per channel)")
class LayerNormSpec(_Norm):
    type: Literal["layer_norm"] = "layer_norm"

    def build(self, size: int, image: bool) -> nn.Module:
        if image:
            return nn.GroupNorm(1, size, eps=self.eps, affine=self.affine)
        return nn.LayerNorm(size, eps=self.eps, elementwise_affine=self.affine, bias=self.affine)


@register_norm("group_norm", "per sample over groups of channels (groups must divide the size)")
class GroupNormSpec(_Norm):
    type: Literal["group_norm"] = "group_norm"
    groups: Groups

    def build(self, size: int, image: bool) -> nn.Module:
        return nn.GroupNorm(self.groups, size, eps=self.eps, affine=self.affine)

    def size_problem(self, size: int, what: str) -> str | None:
        if size % self.groups:
            return f"group_norm: {self.groups} groups do not divide the node's {what} {size}"
        return None


def widen_problem(node: str, norm: SpecModel | None) -> str | None:
    """Why widening ``node`` with this norm cannot preserve its function (None when it can)."""
    if norm is None or getattr(norm, "per_channel", False):
        return None
    return (
        f"{node} has a {norm.type}, whose statistics mix the node's channels: new channels would "  # type: ignore[attr-defined]
        "change the normalisation of the old ones"
    )


def grow_norm(weights: dict[str, Tensor], prefix: str, norm: SpecModel, k: int) -> None:
    """Append ``k`` channels to the tensors of the norm at ``prefix`` (``nodes.<v>.norm``), in place:
    weight 1, bias 0, running mean 0, running variance ``1 - eps`` (so ``sqrt(var + eps) = 1`` and the
    new channels' norm is the identity in eval mode). ``num_batches_tracked`` is kept."""
    eps = float(norm.eps)  # type: ignore[attr-defined]
    for suffix, value in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0 - eps)):
        name = f"{prefix}.{suffix}"
        if name in weights:
            old = weights[name]
            weights[name] = torch.cat([old, old.new_full((k,), value)])


def apply_to_new_channels(module: nn.Module | None, z: Tensor) -> Tensor:
    """What a widened node's norm does to the pre-activations ``z`` (``[n, K]`` or ``[n, K, H, W]``) of
    its new channels in the grown model (weight 1, bias 0, running mean 0, running variance 1 - eps):
    the identity up to round-off in eval mode, batch normalisation by the batch's own statistics in
    train mode. ``module`` is the node's norm (None: no norm)."""
    if module is None:
        return z
    if not isinstance(module, nn.modules.batchnorm._BatchNorm):
        raise ValueError(f"new channels of a node with {type(module).__name__} are not supported")
    k = z.shape[1]
    ones = z.new_ones(k)
    if module.training or not module.track_running_stats:
        return F.batch_norm(z, None, None, ones, ones * 0, training=True, eps=module.eps)
    var = z.new_full((k,), 1.0 - module.eps)
    return F.batch_norm(z, ones * 0, var, ones, ones * 0, training=False, eps=module.eps)


@contextmanager
def running_stats_kept(*models: nn.Module) -> Iterator[None]:
    """Run a block (a statistics pass, a line search, a loss check) without changing the running
    statistics of any norm of ``models``: their buffers are restored on exit, whatever the mode."""
    saved = [(b, b.detach().clone()) for m in models for b in m.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, copy in saved:
                b.copy_(copy)
