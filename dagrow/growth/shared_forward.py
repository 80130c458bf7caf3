"""Line searches for many proposals from one forward pass of the current model.

A proposal changes the network only through the pre-activations of its targets W: at amplitude gamma,

    a_w(gamma) = a_w(0) + gamma * (E_w b_u  -  dW*_w B_w)  +  sqrt(gamma) * Omega_w sigma(sqrt(gamma) A^T B_U)

(a new edge contributes the first term, the best update, when applied, the second, new neurons the
last). :class:`SharedForward` runs the current model once on a batch and keeps every value;
:func:`proposal_outputs` turns a proposal into ``gamma -> outputs`` that adds the change above to the
cached ``a_w(0)`` and recomputes only what lies downstream of W. No grown model is built or compiled,
and the candidates of one decision share the forward pass.

The result equals the grown model of :class:`~dagrow.growth.amplitude.GrownFamily` up to the order of
floating-point sums (the tests hold it to 1e-12 in float64); the amplitude that wins is applied
through the rewrites, so round-off here never reaches the network.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, fx
from torch.nn import functional as F

from ..compile import spec_of
from ..features import (
    apply_transform,
    base,
    core,
    feature_grid,
    feature_width,
    image_rows,
    is_one,
    parse_geometry,
    rows,
    transform,
)
from ..graph import analyze
from ..norms import apply_to_new_channels
from .proposals import Proposal

Outputs = Any  # a tensor, or a tuple of tensors for several outputs


class SharedForward:
    """Every fx value of ``model`` on ``inputs`` (computed once, without autograd), and the programs
    that recompute what lies downstream of a set of targets."""

    def __init__(self, model: fx.GraphModule, inputs: Tensor | Sequence[Tensor]) -> None:
        """``inputs``: a tensor (one model input) or the inputs in the spec's order."""
        args = tuple(inputs) if isinstance(inputs, tuple | list) else (inputs,)
        self.model = model
        interpreter = fx.Interpreter(model, garbage_collect_values=False)
        with torch.no_grad():
            interpreter.run(*args)
        self.values: dict[fx.Node, Any] = interpreter.env
        # the values of the last evaluation of a downstream program, held until the next one is
        # done: freed at once, the allocator hands the memory back to the system and the next
        # evaluation faults it in again (conv bench decision: 1.05-1.12 s in 6 of 6 runs held,
        # 0.92-1.50 s, 4 of 6 above 1.39 s, not held); costs one evaluation's activations
        self.last: dict[fx.Node, Any] = {}
        self.pre: dict[str, fx.Node] = {}
        self.post: dict[str, fx.Node] = {}
        for n in model.graph.nodes:
            role = n.meta.get("dagrow", {})
            if role.get("role") == "preactivation":
                self.pre[role["id"]] = n
            elif role.get("role") in ("activation", "input"):
                self.post[role["id"]] = n
        self.n = args[0].shape[0]
        self.shapes = analyze(spec_of(model)).shapes
        self.ref = next(iter(self.values.values()))
        self._programs: dict[tuple[str, ...], _Downstream] = {}
        self._features: dict[str, Tensor] = {}

    def feature(self, s: str, value: Tensor | None = None) -> Tensor:
        """The rows of feature ``s`` (:mod:`dagrow.features`): the current value of its node, or
        ``value`` in its place; [n, dim] (flat) or [n * H * W, dim] (on an image grid)."""
        if value is None:
            value = None if is_one(s) else self.values[self.post[base(s)]]
        grid = feature_grid(s, self.shapes)
        return rows(s, value, self.n, grid, dtype=self.ref.dtype, device=self.ref.device)

    def features(self, sources: Sequence[str]) -> Tensor:
        """B for ``sources`` (post-activations flattened, ``"1"`` a column of ones): [n, dim] (flat) or
        [n * H * W, dim] (on an image grid)."""
        blocks = []
        for s in sources:
            if s not in self._features:
                self._features[s] = self.feature(s)
            blocks.append(self._features[s])
        return blocks[0] if len(blocks) == 1 else torch.cat(blocks, 1)

    def project(self, sources: Sequence[str], matrix: Tensor) -> Tensor:
        """``features(sources) @ matrix`` (``matrix [dim, K]``, rows as in :meth:`features`), in the
        dtype of ``matrix``. Patch features are never unfolded: their share is a conv of their node's
        value with the matching columns as kernels (``K`` output channels)."""
        total: Tensor | None = None
        col = 0
        for s in sources:
            width = feature_width(s, self.shapes)
            block = matrix[col : col + width]
            col += width
            geometry = parse_geometry(s)
            if geometry is not None and not transform(s):
                x = self.values[self.post[base(s)]].to(block.dtype)
                kernels = block.T.reshape(block.shape[1], x.shape[1], *geometry.kernel)
                part = image_rows(F.conv2d(x, kernels, stride=geometry.stride, padding=geometry.padding))
            else:
                part = self.features([s]).to(block.dtype) @ block
            total = part if total is None else total + part
        assert total is not None, "project needs at least one source"
        return total

    def outputs(self) -> Outputs:
        """The model's outputs on the batch (cached)."""
        out = next(n for n in self.model.graph.nodes if n.op == "output")
        return fx.node.map_arg(out.args[0], self.values.__getitem__)

    def downstream(self, targets: Sequence[str]) -> _Downstream:
        key = tuple(sorted(targets))
        if key not in self._programs:
            self._programs[key] = _Downstream(self, key)
        return self._programs[key]


class _Downstream:
    """The model's outputs as a function of additive changes to the pre-activations of ``targets``:
    the fx nodes downstream of them run again on the cached values of everything else."""

    def __init__(self, forward: SharedForward, targets: tuple[str, ...]) -> None:
        graph, model = forward.model.graph, forward.model
        roots = {forward.pre[w]: w for w in targets}
        moving: set[fx.Node] = set()
        self.steps: list[tuple[fx.Node, Callable | None, str | None]] = []
        for n in graph.nodes:
            if n.op == "output":
                self.output = n
                continue
            if n in roots or any(a in moving for a in n.all_input_nodes):
                moving.add(n)
                recompute = n not in roots or any(a in moving for a in n.all_input_nodes)
                fn: Callable | None = None
                if recompute:
                    fn = model.get_submodule(n.target) if n.op == "call_module" else n.target  # type: ignore[arg-type]
                self.steps.append((n, fn, roots.get(n)))
        self.forward, self.moving = forward, moving

    def moves(self, source: str) -> bool:
        """Whether the value of node ``source`` changes with the targets' pre-activations."""
        return source in self.forward.post and self.forward.post[source] in self.moving

    def __call__(
        self,
        scaled: dict[str, tuple[Tensor, float]],
        products: dict[str, list[tuple[Tensor | str, Tensor]]],
    ) -> Outputs:
        """The outputs after adding to each target's pre-activation ``c * t`` for ``(t, c) =
        scaled[w]`` and ``b @ m`` for each ``(b, m)`` in ``products[w]``, where ``b`` is a tensor or
        the name of a node whose current value (flattened) is used. Targets are flat nodes."""
        cached = self.forward.values
        local: dict[fx.Node, Any] = {}

        def value(a: fx.Node) -> Any:
            return local[a] if a in local else cached[a]

        for n, fn, target in self.steps:
            if fn is None:
                v = cached[n]
            else:
                args = fx.node.map_arg(n.args, value)
                kwargs = fx.node.map_arg(n.kwargs, value)
                v = fn(*args, **kwargs)
            if target is not None:
                if target in scaled:
                    t, c = scaled[target]
                    v = torch.add(v, _like_value(t, v), alpha=c)
                for b, m in products.get(target, ()):
                    if isinstance(b, str):
                        b = self.forward.feature(b, None if is_one(b) else value(self.forward.post[base(b)]))
                    v = v + _like_value(b @ m, v) if v.dim() == 4 else torch.addmm(v, b, m)
            local[n] = v
        out = fx.node.map_arg(self.output.args[0], value)
        self.forward.last = local
        return out


def _like_value(rows: Tensor, value: Tensor) -> Tensor:
    """A change given as rows ([n, width], or [n * H * W, C] for an image node) shaped like the
    pre-activation it is added to."""
    if value.dim() != 4 or rows.dim() == 4:  # flat, or already shaped like the value
        return rows
    n, c, h, w = value.shape
    return rows.reshape(n, h, w, c).permute(0, 3, 1, 2)


def proposal_outputs(
    forward: SharedForward, proposal: Proposal, *, update: bool = True
) -> Callable[[float], Outputs]:
    """``gamma -> outputs`` of the model grown by ``proposal`` at amplitude gamma (with the best update
    dW* when ``update``), on the batch of ``forward``; see the module docstring."""
    site, ref = proposal.site, forward.ref

    def cast(t: Tensor) -> Tensor:
        return t.to(dtype=ref.dtype, device=ref.device)

    neurons = site.kind in ("widen", "node") and proposal.neurons > 0
    edge = site.kind == "edge" and proposal.edge_weight is not None
    targets = set(proposal.fan_out) if neurons else set()
    targets |= {site.pair[1]} if edge else set()  # type: ignore[index]
    targets |= set(proposal.updates) if update else set()
    program = forward.downstream(sorted(targets))

    # the change proportional to gamma: from the cached values, or (products) from the new value of
    # a source that moves itself (dW* of a target that another target feeds)
    linear: dict[str, list[Tensor]] = {w: [] for w in targets}
    products: dict[str, list[tuple[Tensor | str, Tensor]]] = {}
    if edge and proposal.edge_weight is not None:
        w = site.pair[1]  # type: ignore[index]
        linear[w].append(forward.project(site.sources, cast(proposal.edge_weight).T))
    for w, upd in proposal.updates.items() if update else ():
        col, fixed = 0, []
        for s in upd.sources:
            width = feature_width(s, forward.shapes)
            block = -cast(upd.delta[:, col : col + width]).T  # [width_s, width_w]
            col += width
            if not is_one(s) and program.moves(base(s)):
                products.setdefault(w, []).append((s, block))
            else:
                fixed.append((s, block))
        if fixed:
            linear[w].append(forward.project([s for s, _ in fixed], torch.cat([b for _, b in fixed])))
    slope = {w: torch.stack(ts).sum(0) if len(ts) > 1 else ts[0] for w, ts in linear.items() if ts}
    # shaped like the pre-activations once (an image node's rows are channels-last: adding them at
    # every gamma through a permuted view took 2.3 ms against 0.45 ms on a [256, 32, 16, 16] node)
    slope = {w: _like_value(t, forward.values[forward.pre[w]]).contiguous() for w, t in slope.items()}

    z: Tensor | None = None
    fan_out: dict[str, Tensor] = {}
    activation: Callable[[Tensor], Tensor] | None = None
    if neurons:
        # new channels act on h's grid; on their way to the targets they may be averaged by pools or
        # summed over the grid through a flatten (their fan-out is then the same at every position)
        way = transform(site.sources[0])
        cores = [core(s) for s in site.sources]
        z = forward.project(cores, cast(proposal.fan_in).T)  # [rows, K]
        grid = feature_grid(cores[0], forward.shapes)
        fan_out = {w: cast(t).T for w, t in proposal.fan_out.items()}  # [K, width_w]
        if site.kind == "widen":
            activation = forward.model.get_submodule(f"nodes.{site.node}.activation")
            if site.node is not None and spec_of(forward.model).nodes[site.node].norm is not None:
                # the new channels pass through the node's norm first
                norm, act = forward.model.get_submodule(f"nodes.{site.node}.norm"), activation
                activation = lambda x: act(apply_to_new_channels(norm, x))  # noqa: E731
        else:
            activation = proposal.activation.build().to(dtype=ref.dtype, device=ref.device)

    def outputs(gamma: float) -> Outputs:
        gamma = max(gamma, 0.0)
        terms: dict[str, list[tuple[Tensor | str, Tensor]]] = {
            w: [(s, gamma * m) for s, m in ps] for w, ps in products.items()
        }
        if z is not None and activation is not None:
            root = math.sqrt(gamma)
            hidden = activation(root * z)
            if way:
                hidden = apply_transform(hidden, forward.n, grid, way)  # type: ignore[arg-type]
            for w, omega in fan_out.items():
                terms.setdefault(w, []).append((hidden, root * omega))
        return program({w: (t, gamma) for w, t in slope.items()}, terms)

    return outputs
