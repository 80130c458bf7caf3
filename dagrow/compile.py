"""GraphSpec -> torch.fx GraphModule, built node by node with the Graph API (nothing is traced).

Parameter names are stable and part of the public contract (bundles, optimizer state and user code
rely on them):

- ``edges.<source>__<target>.weight``: the weight of a parametric edge (linear ``[out, in]``,
  conv2d ``[out, in, kh, kw]``);
- ``nodes.<node>.bias``: the node's bias ``[width]`` or ``[channels]``;
- ``nodes.<node>.activation.<param>``: learnable activation parameters (``weight`` for prelu,
  ``v``, ``c``, ``l`` for rational);
- ``nodes.<node>.norm.weight`` and ``.bias`` (``[size]``) of a node with a ``norm``, and for batch norm
  the buffers ``nodes.<node>.norm.running_mean``, ``.running_var`` and ``.num_batches_tracked``.

In the generated code ``a_<node>`` is a node's pre-activation (its summed input plus bias: what
``nodes.<node>`` returns and what the statistics read), ``norm_<node>`` its normalised value
(``nodes.<node>.norm``, between the two) and ``<node>`` its post-activation.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping

import torch
from torch import fx, nn

from .activations import activation_info
from .graph import analyze
from .ops import op_info
from .spec import GraphSpec, load_spec


class NodeModule(nn.Module):
    """Adds the node's bias to the sum of its incoming edges (its forward is the pre-activation
    ``a_v``); holds the norm (if any) and the activation as children, which the graph calls after it:
    ``b_v = activation(norm(a_v))``."""

    def __init__(
        self, size: int, image: bool, bias: bool, activation: nn.Module, norm: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(size)) if bias else None
        self.image = image
        if norm is not None:
            self.norm = norm
        self.activation = activation

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        if self.bias is None:
            return s
        return s + (self.bias.view(-1, 1, 1) if self.image else self.bias)


class DagModel(fx.GraphModule):
    """A compiled spec: a GraphModule that knows its spec (``model.spec``)."""

    @property
    def spec(self) -> GraphSpec:
        return self.meta["dagrow_spec"]


def spec_of(model: nn.Module) -> GraphSpec:
    """The spec a model was compiled from."""
    try:
        return model.meta["dagrow_spec"]  # type: ignore[union-attr,index,return-value]
    except (AttributeError, KeyError):
        raise TypeError("this module was not compiled by dagrow (it carries no spec)") from None


def _build_root(spec: GraphSpec, generator: torch.Generator | None) -> nn.Module:
    sg = analyze(spec)
    root = nn.Module()
    root.edges = nn.ModuleDict()
    root.nodes = nn.ModuleDict()
    for e in spec.edges:
        root.edges[e.key] = op_info(e.op.type).build(e.op, sg.shapes[e.source], sg.shapes[e.target])
    for v in sg.hidden_and_outputs:
        node = spec.nodes[v]
        act = activation_info(node.activation.name).build(node.activation)
        image = node.channels is not None
        norm = node.norm.build(node.size, image) if node.norm is not None else None
        root.nodes[v] = NodeModule(node.size, image, node.bias, act, norm)
        fan_in = sum(op_info(e.op.type).fan_in(e.op, sg.shapes[e.source]) for e in sg.in_edges(v))
        bound = 1.0 / math.sqrt(fan_in) if fan_in else 0.0
        with torch.no_grad():
            for e in sg.in_edges(v):
                w = getattr(root.edges[e.key], "weight", None)
                if w is not None:
                    w.uniform_(-bound, bound, generator=generator)
            bias = getattr(root.nodes[v], "bias", None)
            if bias is not None:
                bias.uniform_(-bound, bound, generator=generator)
    return root


def build_graph(spec: GraphSpec) -> fx.Graph:
    """The fx graph of a spec: placeholders, one call_module per edge, adds, bias, norm, activation,
    output."""
    sg = analyze(spec)
    g = fx.Graph()
    env: dict[str, fx.Node] = {}
    for x in spec.inputs:
        env[x] = g.placeholder(x)
        env[x].meta["dagrow"] = {"role": "input", "id": x}
    for v in sg.hidden_and_outputs:
        total = None
        for e in sg.in_edges(v):
            term = g.create_node("call_module", f"edges.{e.key}", (env[e.source],), name=e.key)
            term.meta["dagrow"] = {"role": "edge", "id": f"{e.source}->{e.target}", "op": e.op.type}
            total = (
                term
                if total is None
                else g.create_node("call_function", operator.add, (total, term), name=f"sum_{v}")
            )
        a = g.create_node("call_module", f"nodes.{v}", (total,), name=f"a_{v}")
        a.meta["dagrow"] = {"role": "preactivation", "id": v}
        if spec.nodes[v].norm is not None:
            a = g.create_node("call_module", f"nodes.{v}.norm", (a,), name=f"norm_{v}")
            a.meta["dagrow"] = {"role": "norm", "id": v}
        b = g.create_node("call_module", f"nodes.{v}.activation", (a,), name=v)
        b.meta["dagrow"] = {"role": "activation", "id": v}
        env[v] = b
    outs = [env[y] for y in spec.outputs]
    g.output(outs[0] if len(outs) == 1 else tuple(outs))
    g.lint()
    return g


def compile(  # noqa: A001 - the public name the design asks for
    spec: GraphSpec | str,
    weights: Mapping[str, torch.Tensor] | None = None,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    seed: int | None = None,
) -> DagModel:
    """Compile a spec into a :class:`DagModel` (a torch.fx GraphModule).

    Parameters are initialised like torch.nn's Linear: weights and bias ~ U(-1/sqrt(fan_in),
    1/sqrt(fan_in)) where fan_in sums over every parametric edge into the node (the default torch RNG,
    or a private generator when ``seed`` is given). ``weights`` (a state dict) replaces them after a
    check of every name and shape (:func:`load_weights`); without ``dtype`` the model takes the
    weights' floating dtype, so float64 weights are not rounded through float32.
    """
    spec = load_spec(spec) if not isinstance(spec, GraphSpec) else spec
    if dtype is None and weights is not None:
        dtype = weights_dtype(weights)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    root = _build_root(spec, generator)
    model = DagModel(root, build_graph(spec), class_name=_class_name(spec.name))
    model.meta["dagrow_spec"] = spec
    if dtype is not None or device is not None:
        model.to(device=device, dtype=dtype)
    if weights is not None:
        load_weights(model, weights)
    return model


def expected_tensors(spec: GraphSpec) -> dict[str, torch.Tensor]:
    """The state dict that ``compile(spec)`` has, as meta tensors (names, shapes, dtypes; no memory)."""
    with torch.device("meta"):
        return dict(compile(spec).state_dict())


def _class_name(name: str) -> str:
    words = "".join(ch if ch.isalnum() else " " for ch in name).split()
    cls = "".join(w[:1].upper() + w[1:] for w in words) or "Net"
    return cls if cls[0].isalpha() else f"Net{cls}"


def weights_dtype(weights: Mapping[str, torch.Tensor]) -> torch.dtype | None:
    """The one floating dtype of ``weights`` (None when they are empty or mix dtypes)."""
    dtypes = {t.dtype for t in weights.values() if t.is_floating_point()}
    return dtypes.pop() if len(dtypes) == 1 else None


class WeightsMismatch(ValueError):
    """Weights do not fit a spec: lists every missing, unexpected and mis-shaped name."""


def weights_problems(model: nn.Module, weights: Mapping[str, torch.Tensor]) -> list[str]:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    problems = []
    for k in expected:
        if k not in weights:
            problems.append(f"missing tensor {k!r} (shape {list(expected[k])})")
    for k, t in weights.items():
        if k not in expected:
            problems.append(
                f"unexpected tensor {k!r} (shape {list(t.shape)}): the spec has no such parameter"
            )
        elif tuple(t.shape) != expected[k]:
            problems.append(f"tensor {k!r} has shape {list(t.shape)} but the spec needs {list(expected[k])}")
    return problems


def load_weights(model: nn.Module, weights: Mapping[str, torch.Tensor]) -> None:
    """Copy ``weights`` into ``model`` after checking every name and shape (all problems at once)."""
    problems = weights_problems(model, weights)
    if problems:
        raise WeightsMismatch("; ".join(problems))
    with torch.no_grad():
        for k, p in model.state_dict().items():
            p.copy_(weights[k])
