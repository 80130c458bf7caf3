"""The exact first-order gain of new neurons whose activation has a kink at 0, from one pass over the
growth batch.

New neurons enter as ``sqrt(gamma) alpha`` (fan-in) and ``sqrt(gamma) omega`` (fan-out), so they add
``sqrt(gamma) Omega sigma(sqrt(gamma) A^T B_U)`` to their targets' pre-activations. With sigma(0) = 0
that is ``gamma Omega D(A^T B_U) + o(gamma)``, ``D(z) = sigma'(0+) z`` for z > 0 and ``sigma'(0-) z``
for z < 0 (:func:`~dagrow.activations.directional_derivative`; exactly linear in gamma when sigma is
positively homogeneous: relu, leaky_relu, prelu). The loss then falls, to first order in gamma, by

    gamma * (d - (1/n) sum_i sum_w g_w(x_i)^T Omega_w D(A^T B_U(x_i)))

(DESIGN.md's convention: ``g_w = n dL/da_w`` per sample, the best update dW* giving d). For a smooth
activation D is linear and the sum is a moment of the statistics (``propose`` has it); with a kink
(``sigma'(0-) != sigma'(0+)``) it is not, since alpha is only known after the statistics. Here the
current model's values on the batch (:class:`~dagrow.growth.shared_forward.SharedForward`, shared
with the line search) give B_U, and one backward through what lies downstream of the targets gives
g_W, sample by sample.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..activations import directional_derivative, one_sided_slopes
from ..chunks import chunks_of, size_of
from ..features import apply_transform, core, feature_grid, node_rows, transform
from ..stats import LossFn, loss_function
from .proposals import Proposal
from .shared_forward import SharedForward


def sample_gradients(
    forward: SharedForward, targets: Sequence[str], target: Tensor, loss: str | LossFn = "mse"
) -> dict[str, Tensor] | None:
    """``dL/da_w`` per sample (``[n, width_w]``, or ``[n * H * W, C_w]`` per sample and position for
    an image node; float64; ``g_w / n`` in DESIGN.md's notation) for the nodes ``targets``, from the
    cached forward and one backward through what lies downstream of them. None when the loss is not
    differentiable (a distributed run's global mean is a value only)."""
    program = forward.downstream(targets)
    with torch.enable_grad():
        eps = {w: torch.zeros_like(forward.values[forward.pre[w]]).requires_grad_(True) for w in targets}
        L = loss_function(loss)(program({w: (e, 1.0) for w, e in eps.items()}, {}), target)
        if not L.requires_grad:
            return None
        grads = torch.autograd.grad(L, list(eps.values()), allow_unused=True)
    return {
        w: node_rows(torch.zeros_like(e) if gr is None else gr).double()
        for (w, e), gr in zip(eps.items(), grads, strict=True)
    }


def _slopes(p: Proposal, model: nn.Module) -> tuple[float, float]:
    """A widened node's slopes as its activation module has them (learnable ones as trained)."""
    if p.site.kind == "widen" and p.activation is not None:
        return one_sided_slopes(p.activation, model.get_submodule(f"nodes.{p.site.node}.activation"))
    return p.slopes


def exact_first_order(
    proposals: Sequence[Proposal],
    model: nn.Module,
    batch,
    loss: str | LossFn = "mse",
    *,
    forward: SharedForward | Sequence[SharedForward] | None = None,
) -> list[Proposal]:
    """``proposals`` with the exact first-order figure (module docstring) where ``propose`` could only
    give a kink's moment estimate (``first_order_exact`` False); the others are returned as they are.
    ``batch = (inputs, target)`` (or its chunks, :mod:`dagrow.chunks`) must be the samples the
    statistics were measured on for the figure to be the derivative of the loss on them; ``forward``:
    the model's shared forward on those inputs (one per chunk)."""
    todo = [p for p in proposals if not p.first_order_exact]
    if not todo:
        return list(proposals)
    parts = chunks_of(batch)
    forwards = [forward] if isinstance(forward, SharedForward) else list(forward or [])
    if not forwards:
        forwards = [SharedForward(model, x) for x, _ in parts]  # type: ignore[arg-type]
    total = sum(size_of(part) for part in parts)
    gains = {id(p): 0.0 for p in todo}
    slopes = {id(p): _slopes(p, model) for p in todo}
    targets = sorted({w for p in todo for w in p.fan_out})
    for part, fw in zip(parts, forwards, strict=True):
        grads = sample_gradients(fw, targets, part[1], loss)
        if grads is None:
            return list(proposals)
        share = size_of(part) / total  # each chunk's loss is a mean over its own samples
        for p in todo:
            cores = [core(s) for s in p.site.sources]
            # B_U alpha^T in the model's dtype (a conv for patches), then float64 as the statistics
            z = fw.project(cores, p.fan_in.to(fw.ref.dtype).T).double()
            dz = directional_derivative(z, slopes[id(p)])
            way = transform(p.site.sources[0])
            if way:  # pooled or summed on the way to the targets, as the new channels are
                dz = apply_transform(dz, fw.n, feature_grid(cores[0], fw.shapes), way)  # type: ignore[arg-type]
            gains[id(p)] -= share * sum(float((grads[w] * (dz @ om.T)).sum()) for w, om in p.fan_out.items())
    out = []
    for p in proposals:
        if p.first_order_exact:
            out.append(p)
            continue
        notes = [n for n in p.notes if "has a kink at 0" not in n]
        out.append(
            dataclasses.replace(
                p,
                first_order_improvement=p.d + gains[id(p)],
                first_order_exact=True,
                slopes=slopes[id(p)],
                notes=notes,
            )
        )
    return out
