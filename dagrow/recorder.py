"""Statistics gathered during training steps: :class:`Recorder` adds each step's batch to the same sums
as :func:`dagrow.stats.measure`, reading the gradients the step's ``loss.backward()`` computes anyway."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from .features import Geometry, as_columns, is_one, patch_feature
from .sites import Site
from .stats import Accumulator, Statistics, StatsError, requirements


class Recorder:
    """The statistics of :func:`measure`, gathered from training steps instead of a pass of their own.

    While the recorder is entered, hooks keep the values of the model's latest forward;
    :meth:`backward` runs ``loss.backward()`` (so the optimizer gets its gradients as usual) and adds
    the batch. The gradient of each existing linear edge's weight (and of each bias) is the M block
    of that edge, ``n grad^T = sum_i b_s g_w^T``, so those blocks cost nothing; only S, P and the
    cross M blocks of the sites are extra products. ``loss`` must be the mean of per-sample losses
    over the batch of the latest forward; a penalty on the weights added to it would reach the
    weight gradients, so pass ``weight_grads=False`` then (every M block is computed from the
    pre-activation gradients). Statistics from several steps mix the weights of those steps::

        with Recorder(model, sites=sites) as rec:
            for x, y in batches:
                opt.zero_grad()
                rec.backward(F.cross_entropy(model(x), y))
                opt.step()
        stats = rec.result()
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        sites: Iterable[Site] | None = None,
        dtype: torch.dtype | None = torch.float64,
        products: torch.dtype | None = None,
        all_nodes: bool = True,
        output_factors: bool = True,
        weight_grads: bool = True,
    ) -> None:
        req = requirements(model, sites, all_nodes=all_nodes, output_factors=output_factors)
        self.acc = Accumulator(model, req, dtype, products)
        self.model, self.weight_grads = model, weight_grads
        self.post: dict[str, Tensor] = {}
        self.pre: dict[str, Tensor] = {}
        self.grads: dict[str, Tensor] = {}
        self.known: dict[tuple[str, str], Tensor] = {}
        self.handles: list = []
        self.batches = 0

    def _edge_params(self) -> dict[tuple[str, str], Tensor]:
        """The parameters whose gradient is an M block: linear and conv2d edge weights and node biases."""
        found: dict[tuple[str, str], Tensor] = {}
        if not self.weight_grads or (self.acc.products not in (None, self._param_dtype())):
            return found
        sg, acc = self.acc.sg, self.acc
        for s, w in self.acc.req.grads:
            if is_one(s):
                if sg.spec.nodes[w].bias:
                    found[(s, w)] = self.model.get_parameter(f"nodes.{w}.bias")
                continue
            edge = next((e for e in sg.in_edges(w) if s == _feature(e)), None)
            if edge is not None and s in acc.sources:
                found[(s, w)] = self.model.get_parameter(f"edges.{edge.key}.weight")
        return {k: p for k, p in found.items() if p.requires_grad}

    def _param_dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def __enter__(self) -> Recorder:
        inputs = self.acc.spec.inputs

        def keep_inputs(module, args) -> None:
            self.post.update(zip(inputs, args, strict=False))

        def keep_grad(w: str, value: Tensor) -> None:
            if value.requires_grad:
                value.register_hook(lambda grad, w=w: self.grads.__setitem__(w, grad))

        self.handles = [self.model.register_forward_pre_hook(keep_inputs)]
        self.handles += self.acc.hooks(self.post, self.pre, keep_grad)
        for key, param in self._edge_params().items():
            self.handles.append(param.register_hook(lambda grad, key=key: self.known.__setitem__(key, grad)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def backward(self, loss: Tensor, **kwargs) -> None:
        """``loss.backward(**kwargs)``, then add the batch of the latest forward to the statistics."""
        if not self.handles:
            raise RuntimeError("Recorder.backward needs the recorder entered (use it in a with block)")
        inputs = [self.post[x] for x in self.acc.spec.inputs if x in self.post]
        if len(inputs) != len(self.acc.spec.inputs) or any(w not in self.pre for w in self.acc.targets):
            raise StatsError("no forward of the model was recorded before this backward")
        if not all(self.pre[w].requires_grad for w in self.acc.targets):
            raise StatsError("the latest forward ran without autograd: its statistics cannot be recorded")
        self.acc.check_loss(loss, inputs, self.batches)
        self.grads.clear()
        self.known.clear()
        loss.backward(**kwargs)
        n = inputs[0].shape[0]
        known = {}
        for (s, w), grad in self.known.items():  # n grad^T = sum_i b_s g_w^T (g = n dL/da)
            known[(s, w)] = as_columns(grad).T * n
        self.acc.accumulate(self.post, dict(self.grads), self.pre, float(loss.detach()), known)
        self.batches += 1

    def result(self) -> Statistics:
        return self.acc.result()


def _feature(edge) -> str | None:
    """The feature whose M block an edge's weight gradient is (linear: its source; conv2d: its
    source's patches), None for an edge without weights."""
    if edge.op.type == "linear":
        return edge.source
    if edge.op.type == "conv2d":
        return patch_feature(edge.source, Geometry.of(edge.op))
    return None
