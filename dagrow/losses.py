"""The named losses, registered in :data:`LOSSES`, and :func:`loss_function` for a name or a callable.

A loss is ``loss(output, target) -> scalar``, the mean over samples ``L = (1/n) sum_i l_i`` (DESIGN.md's
convention: the statistics use the per-sample gradient ``n dL/da``, so a summed loss would scale them
by n).
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor

from .registry import Registry, UnknownName, unknown_name_message

__all__ = ["LOSSES", "LossFn", "cross_entropy", "loss_function", "mse"]

LossFn = Callable[[Tensor, Tensor], Tensor]
LOSSES: Registry[LossFn] = Registry("loss")
"""The named losses (name -> ``(output, target) -> mean loss``), in registration order."""


@LOSSES.register("mse", "mean squared error over samples and outputs (regression)")
def mse(output: Tensor, target: Tensor) -> Tensor:
    """``mean((output - target)^2)`` over every element: output and target ``[n, d]``."""
    return F.mse_loss(output, target)


@LOSSES.register("cross_entropy", "softmax cross-entropy, mean over samples (classification)")
def cross_entropy(output: Tensor, target: Tensor) -> Tensor:
    """``mean_i -log softmax(output_i)[target_i]``: logits ``[n, classes]``, class indices ``[n]`` (int64)."""
    return F.cross_entropy(output, target)


def loss_function(loss: str | LossFn) -> LossFn:
    """``"mse"``, ``"cross_entropy"`` or a callable ``(output, target) -> mean loss``.

    An unknown name raises :class:`~dagrow.registry.UnknownName` (a ``ValueError``) with a "did you
    mean" hint and every choice."""
    if callable(loss):
        return loss
    if loss not in LOSSES:
        raise UnknownName(unknown_name_message("loss", loss, LOSSES) + " or a callable")
    return LOSSES.get(loss)
