"""Growth actions as data, each a pure function ``(spec, weights) -> (spec', weights')``.

An action checks before (the site exists, the shapes of its tensors agree with the spec) and after (the
new spec passes every graph check and the new weights have exactly the names and shapes the new spec
compiles to). Inputs are never modified. A growth history is a list of actions; :func:`replay` applies
it to an initial bundle and rebuilds the grown model. Actions serialise to JSON (``to_dict`` /
:func:`action_from_dict`); tensors are stored as nested lists of float64 numbers, which round-trip
exactly.

Amplitude: neuron-adding actions carry ``gamma`` and write ``sqrt(gamma) * fan_in`` and
``sqrt(gamma) * fan_out``; :class:`AddEdge` writes ``gamma * weight``; :class:`UpdateWeights` writes
``W - gamma * delta``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import torch
from torch import Tensor

from .compile import compile as compile_spec
from .compile import weights_problems
from .features import SUM, Geometry, as_parameter, core, feature_width, parameter, patch_feature
from .graph import analyze
from .names import name_problem
from .norms import grow_norm
from .registry import Registry, unknown_name_message
from .sites import linear_sources, widen_ways
from .spec import GraphSpec, SpecError, parse_spec

Weights = dict[str, Tensor]


class RewriteError(ValueError):
    """An action does not fit the spec or the weights it is applied to."""


def _t(x: Any) -> Tensor:
    return x if isinstance(x, Tensor) else torch.tensor(x, dtype=torch.float64)


@dataclass(frozen=True)
class Action:
    """Base class: subclasses implement ``_apply(data, weights, spec)`` on copies."""

    kind: ClassVar[str] = "action"

    def apply(self, spec: GraphSpec, weights: Mapping[str, Tensor]) -> tuple[GraphSpec, Weights]:
        data = spec.model_dump(mode="json", by_alias=True)
        new_weights = {k: v.detach().clone() for k, v in weights.items()}
        self._apply(data, new_weights, spec)
        try:
            new_spec = parse_spec(data)
        except SpecError as exc:
            raise RewriteError(f"{self.describe()}: the grown spec is invalid: {exc}") from None
        problems = weights_problems(compile_spec(new_spec), new_weights)
        if problems:
            raise RewriteError(f"{self.describe()}: " + "; ".join(problems))
        return new_spec, new_weights

    def _apply(self, data: dict, weights: Weights, spec: GraphSpec) -> None:  # pragma: no cover
        raise NotImplementedError

    def describe(self) -> str:
        return self.kind

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"action": self.kind}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Tensor):
                v = v.double().tolist()
            elif isinstance(v, dict):
                v = {k: t.double().tolist() if isinstance(t, Tensor) else t for k, t in v.items()}
            elif isinstance(v, tuple):
                v = list(v)
            out[f.name] = v
        return out


def _like(t: Tensor, ref: Tensor) -> Tensor:
    return t.to(dtype=ref.dtype, device=ref.device)


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise RewriteError(message)


@dataclass(frozen=True)
class UpdateWeights(Action):
    """``W <- W - gamma * delta`` for each named parameter (dW* of the proposals)."""

    deltas: dict[str, Tensor]
    gamma: float = 1.0
    kind: ClassVar[str] = "update_weights"

    def _apply(self, data, weights, spec) -> None:
        for name, delta in self.deltas.items():
            _require(name in weights, f"update_weights: no parameter {name!r}")
            w = weights[name]
            _require(w.is_floating_point(), f"update_weights: {name} is a counter ({w.dtype}), not a weight")
            _require(
                tuple(w.shape) == tuple(delta.shape),
                f"update_weights: {name} has shape {list(w.shape)}, delta {list(delta.shape)}",
            )
            weights[name] = w - self.gamma * _like(_t(delta), w)

    def describe(self) -> str:
        return f"update_weights({', '.join(self.deltas)}, gamma={self.gamma:g})"


def _split_columns(
    t: Tensor, sources: Iterable[str], shapes: Mapping[str, tuple[int, ...]], what: str = "fan-in"
) -> dict[str, Tensor]:
    out, col = {}, 0
    for s in sources:
        k = feature_width(s, shapes)  # type: ignore[arg-type]
        out[s] = t[:, col : col + k]
        col += k
    _require(col == t.shape[1], f"{what} has {t.shape[1]} columns but the sources need {col}")
    return out


def _widths(spec: GraphSpec) -> dict[str, int]:
    return {v: math.prod(s) for v, s in analyze(spec).shapes.items()}


@dataclass(frozen=True)
class AddNeurons(Action):
    """Widen ``node`` by K neurons: new rows of every linear edge into it (columns of ``fan_in`` in
    the order of ``sources``, bias last as "1"), new columns of every edge out of it (``fan_out``).

    An image node takes K channels: new output channels of every conv edge into it, new input channels
    of every conv edge out of it (``fan_out[w]`` ``[C_w, K]`` at the kernel's centre, zero elsewhere),
    and through a flatten into a flat node f, H * W new entries of f per channel and as many new
    columns of every linear edge out of f (``fan_out[w]`` ``[width_w, K]``, the same at every
    position).

    A norm on the node gets K channels with weight 1, bias 0, running mean 0 and running variance
    1 - eps (:func:`~dagrow.norms.grow_norm`)."""

    node: str
    sources: tuple[str, ...]
    fan_in: Tensor  # [K, dim U]
    fan_out: dict[str, Tensor]  # w -> [width_w, K]
    gamma: float = 1.0
    kind: ClassVar[str] = "add_neurons"

    def _apply(self, data, weights, spec) -> None:
        h, fan_in = self.node, _t(self.fan_in)
        _require(h in spec.nodes, f"add_neurons: unknown node {h!r}")
        sg = analyze(spec)
        K = fan_in.shape[0]
        expected = linear_sources(sg, h)
        _require(
            tuple(core(s) for s in self.sources) == expected,
            f"add_neurons: sources {list(self.sources)} do not match the edges into {h}: {list(expected)}",
        )
        paths = {p.target: p for p in widen_ways(sg, h)[0]}
        _require(
            set(self.fan_out) == set(paths),
            f"add_neurons: fan-out targets {sorted(self.fan_out)} != targets of {h} {list(paths)}",
        )
        root = math.sqrt(self.gamma)
        blocks = _split_columns(fan_in, self.sources, sg.shapes, f"add_neurons: fan-in of {h}")
        for s, block in blocks.items():
            name = parameter(s, h)
            new = as_parameter(root * block, s)
            weights[name] = torch.cat([weights[name], _like(new, weights[name])], 0)
        grown: dict[str, int] = {}  # the nodes that pass the new channels on, and their new size
        for w, om in self.fan_out.items():
            path = paths[w]
            last = path.via[-1] if path.via else h
            name = f"edges.{last}__{w}.weight"
            om = _t(om)
            _require(
                om.shape == (weights[name].shape[0], K),
                f"add_neurons: fan-out of {h} into {w} has shape "
                f"{list(om.shape)}, expected {[weights[name].shape[0], K]}",
            )
            flattened = path.transform.endswith(SUM)
            before = path.via[-2] if len(path.via) > 1 else h  # the image node the flatten reads
            positions = spec.nodes[last].size // spec.nodes[before].size if flattened else 1
            new = om.repeat_interleave(positions, 1) if flattened else _at_centre(om, weights[name])
            weights[name] = torch.cat([weights[name], _like(root * new, weights[name])], 1)
            for v in path.via:
                grown[v] = spec.nodes[v].size + (K * positions if sg.is_flat(v) else K)
        if spec.nodes[h].norm is not None:  # new channels: weight 1, bias 0, mean 0, var 1 - eps
            grow_norm(weights, f"nodes.{h}.norm", spec.nodes[h].norm, K)
        grown[h] = spec.nodes[h].size + K
        for v, new_size in grown.items():
            data["nodes"][v]["width" if sg.is_flat(v) else "channels"] = new_size

    def describe(self) -> str:
        return f"add_neurons({self.node}, +{_t(self.fan_in).shape[0]})"


def _at_centre(columns: Tensor, weight: Tensor) -> Tensor:
    """New input columns ``[out, K]`` of an edge weight: as they are for a linear weight; for a conv
    weight ``[out, in, kh, kw]`` a kernel slice ``[out, K, kh, kw]`` that is zero but at the centre tap."""
    if weight.dim() != 4:
        return columns
    kh, kw = weight.shape[2:]
    out = torch.zeros(*columns.shape, kh, kw, dtype=columns.dtype)
    out[:, :, kh // 2, kw // 2] = columns
    return out


def _conv_op(kernel: int | None) -> dict[str, Any]:
    """The spec data of a grown edge: linear, or a conv2d that keeps the grid."""
    return {"type": "linear"} if kernel is None else Geometry.same(kernel).op()


def new_node_name(spec: GraphSpec, u: str | None = None, w: str | None = None) -> str:
    """A fresh name for a node that growth inserts (between u and w, or on the edge u -> w when
    deepening): ``n{k}`` with the smallest ``k >= 1`` that no node or input of ``spec`` uses and that
    passes the naming rule (:func:`~dagrow.names.name_problem`).

    The pair does not enter the name, so names never concatenate and stay short on long runs (the
    k-th grown node is ``n{k}`` at most; ``x_h_h_2``-style nesting cannot occur), and the same spec
    always gives the same name. ``u`` and ``w`` are accepted for callers that name the pair."""
    taken = set(spec.nodes) | set(spec.inputs)
    k = 1
    while f"n{k}" in taken or name_problem(f"n{k}") is not None:
        k += 1
    return f"n{k}"


def _insert_node(data: dict, before: str, name: str, node: dict) -> None:
    nodes = {}
    for k, v in data["nodes"].items():
        if k == before:
            nodes[name] = node
        nodes[k] = v
    data["nodes"] = nodes


@dataclass(frozen=True)
class AddNode(Action):
    """A new hidden node ``name`` with edges ``source -> name -> target``; ``fan_in`` is [K, d_u + 1]
    (bias last), ``fan_out`` is [width_target, K]; ``activation`` is a spec activation (data)."""

    source: str
    target: str
    name: str
    fan_in: Tensor
    fan_out: Tensor
    activation: Any = "relu"
    gamma: float = 1.0
    kernel: int | None = None  # image nodes: the (odd) kernel of both conv edges (stride 1, same grid)
    kind: ClassVar[str] = "add_node"

    def _apply(self, data, weights, spec) -> None:
        u, w, m = self.source, self.target, self.name
        _require(m not in spec.nodes and m not in spec.inputs, f"add_node: {m!r} already exists")
        _require(w in spec.nodes, f"add_node: unknown target {w!r}")
        fan_in, fan_out = _t(self.fan_in), _t(self.fan_out)
        K = fan_in.shape[0]
        shapes = analyze(spec).shapes
        _require(u in shapes, f"add_node: unknown source {u!r}")
        feature = _grown_feature(u, shapes, self.kernel, f"add_node {u}->{m}->{w}")
        width_u, width_w = feature_width(feature, shapes), _size(shapes[w])
        _require(
            fan_in.shape == (K, width_u + 1),
            f"add_node {u}->{m}->{w}: fan-in shape {list(fan_in.shape)}, expected {[K, width_u + 1]}",
        )
        _require(
            fan_out.shape == (width_w, K),
            f"add_node {u}->{m}->{w}: fan-out shape {list(fan_out.shape)}, expected {[width_w, K]}",
        )
        act = self.activation if isinstance(self.activation, str | dict) else self.activation.model_dump()
        size = "width" if self.kernel is None else "channels"
        _insert_node(data, w, m, {size: K, "activation": act, "bias": True})
        data["edges"] += [
            {"from": u, "to": m, "op": _conv_op(self.kernel)},
            {"from": m, "to": w, "op": _conv_op(self.kernel)},
        ]
        ref = weights[f"nodes.{w}.bias"] if f"nodes.{w}.bias" in weights else next(iter(weights.values()))
        root = math.sqrt(self.gamma)
        weights[f"edges.{u}__{m}.weight"] = _like(as_parameter(root * fan_in[:, :-1], feature), ref)
        weights[f"nodes.{m}.bias"] = _like(root * fan_in[:, -1], ref)
        out = root * fan_out
        if self.kernel is not None:
            out = _at_centre(out, torch.zeros(width_w, K, self.kernel, self.kernel))
        weights[f"edges.{m}__{w}.weight"] = _like(out, ref)
        for pname, value in _activation_params(self.activation).items():
            weights[f"nodes.{m}.activation.{pname}"] = _like(value, ref)

    def describe(self) -> str:
        return f"add_node({self.source}->{self.name}->{self.target}, width {_t(self.fan_in).shape[0]})"


def _size(shape: tuple[int, ...]) -> int:
    """The growable size of a node of this shape: its width or its channels."""
    return shape[0] if len(shape) == 3 else math.prod(shape)


def _grown_feature(u: str, shapes: Mapping[str, tuple[int, ...]], kernel: int | None, what: str) -> str:
    """What a grown edge out of ``u`` reads: u itself (linear) or u's patches under a conv that keeps
    the grid; refused when the kernel does not fit the node's kind."""
    image = len(shapes[u]) == 3
    _require(
        image == (kernel is not None),
        f"{what}: {u} is {'an image' if image else 'a flat'} node"
        + (", a conv kernel is needed" if image else " but a conv kernel was given"),
    )
    if kernel is None:
        return u
    _require(kernel % 2 == 1, f"{what}: the kernel must be odd to keep the grid, got {kernel}")
    return patch_feature(u, Geometry.same(kernel))


def _activation_params(activation: Any) -> dict[str, Tensor]:
    """Initial learnable parameters of an activation given as spec data or model."""
    from .spec import NodeSpec

    node = NodeSpec.model_validate({"width": 1, "activation": activation})
    module = node.activation.build()  # type: ignore[attr-defined]
    return {k: v.detach().double() for k, v in module.state_dict().items()}


@dataclass(frozen=True)
class AddEdge(Action):
    """A direct linear edge ``source -> target`` with weight ``gamma * weight`` ([width_w, width_u])."""

    source: str
    target: str
    weight: Tensor
    gamma: float = 1.0
    kernel: int | None = None  # between image nodes: a conv2d with this (odd) kernel, stride 1, same grid
    kind: ClassVar[str] = "add_edge"

    def _apply(self, data, weights, spec) -> None:
        u, w = self.source, self.target
        _require(all(not (e.source == u and e.target == w) for e in spec.edges), f"add_edge: {u}->{w} exists")
        shapes = analyze(spec).shapes
        _require(u in shapes, f"add_edge: unknown source {u!r}")
        _require(w in spec.nodes, f"add_edge: unknown target {w!r}")
        feature = _grown_feature(u, shapes, self.kernel, f"add_edge {u}->{w}")
        expected = [_size(shapes[w]), feature_width(feature, shapes)]
        wt = _t(self.weight)
        _require(
            list(wt.shape) == expected,
            f"add_edge {u}->{w}: weight shape {list(wt.shape)}, expected {expected}",
        )
        data["edges"].append({"from": u, "to": w, "op": _conv_op(self.kernel)})
        ref = next(iter(weights.values()))
        weights[f"edges.{u}__{w}.weight"] = _like(as_parameter(self.gamma * wt, feature), ref)

    def describe(self) -> str:
        return f"add_edge({self.source}->{self.target})"


@dataclass(frozen=True)
class DeepenEdge(Action):
    """Replace the linear edge ``u -> w`` by ``u -> m -> w`` computing exactly the same function.

    Two constructions, both with an activation on ``m`` that is the identity at initialisation
    (``prelu`` with init 1, ``rational`` at v = c = 0, l = 1, or ``identity``):

    - identity (``basis=None``): ``m`` has the width of ``u``, an identity weight on ``u -> m``, zero
      bias, and ``m -> w`` takes the old weight W;
    - SENN's basis: ``u -> m`` gets ``basis`` B ([width m, width u], full column rank), ``m`` the bias
      ``shift`` c (default 0), ``m -> w`` gets ``W B^+`` and w's bias loses ``W B^+ c``, so that
      ``W B^+ (B b_u + c) - W B^+ c = W b_u``.

    A conv2d edge (identity construction only) becomes ``u -> m`` a conv with ``kernel`` (odd, stride
    1, same grid, the identity at the kernel's centre) and ``m -> w`` the old conv with its geometry.
    """

    source: str
    target: str
    name: str
    activation: Any = field(default_factory=lambda: {"name": "prelu", "init": 1.0})
    basis: Tensor | None = None
    shift: Tensor | None = None
    kernel: int = 3  # conv2d edges: the kernel of the identity conv u -> m
    kind: ClassVar[str] = "deepen_edge"

    def _apply(self, data, weights, spec) -> None:
        u, w, m = self.source, self.target, self.name
        index = [i for i, e in enumerate(spec.edges) if e.source == u and e.target == w]
        op = spec.edges[index[0]].op if index else None
        _require(
            op is not None and op.type in ("linear", "conv2d"),
            f"deepen_edge: no linear or conv2d edge {u}->{w}",
        )
        _require(m not in spec.nodes and m not in spec.inputs, f"deepen_edge: {m!r} already exists")
        growth = data.get("growth") or {}
        if isinstance(growth.get("deepen"), list):  # a listed edge is consumed: it no longer exists
            growth["deepen"] = [pair for pair in growth["deepen"] if tuple(pair) != (u, w)]
        if op.type == "conv2d":  # type: ignore[union-attr]
            self._apply_conv(data, weights, spec, index[0])
            return
        width_u = _widths(spec)[u]
        old = weights.pop(f"edges.{u}__{w}.weight")
        new_bias = None
        if self.basis is None:
            _require(self.shift is None, f"deepen_edge {u}->{w}: a shift needs a basis")
            width = width_u
            into, bias, out = torch.eye(width), torch.zeros(width), old
        else:
            into = _t(self.basis).to(torch.float64)
            width = into.shape[0]
            _require(
                into.dim() == 2 and into.shape[1] == width_u and width >= width_u,
                f"deepen_edge {u}->{w}: basis shape {list(into.shape)}, expected [>= {width_u}, {width_u}]",
            )
            pinv = torch.linalg.pinv(into)
            err = float((pinv @ into - torch.eye(width_u, dtype=torch.float64)).abs().max())
            _require(err < 1e-8, f"deepen_edge {u}->{w}: the basis is not of full column rank ({err:.2g})")
            out = old.to(torch.float64) @ pinv
            bias = torch.zeros(width, dtype=torch.float64) if self.shift is None else _t(self.shift).double()
            _require(bias.shape == (width,), f"deepen_edge {u}->{w}: shift shape {list(bias.shape)}")
            if bool((bias != 0).any()):
                _require(
                    f"nodes.{w}.bias" in weights, f"deepen_edge {u}->{w}: a nonzero shift needs a bias on {w}"
                )
                new_bias = weights[f"nodes.{w}.bias"].to(torch.float64) - out @ bias
        _insert_node(data, w, m, {"width": width, "activation": self.activation, "bias": True})
        data["edges"][index[0] : index[0] + 1] = [
            {"from": u, "to": m, "op": {"type": "linear"}},
            {"from": m, "to": w, "op": {"type": "linear"}},
        ]
        weights[f"edges.{u}__{m}.weight"] = _like(into, old)
        weights[f"nodes.{m}.bias"] = _like(bias, old)
        weights[f"edges.{m}__{w}.weight"] = _like(out, old)
        if new_bias is not None:
            weights[f"nodes.{w}.bias"] = _like(new_bias, old)
        for pname, value in _activation_params(self.activation).items():
            weights[f"nodes.{m}.activation.{pname}"] = _like(value, old)

    def _apply_conv(self, data, weights, spec, index: int) -> None:
        u, w, m = self.source, self.target, self.name
        _require(
            self.basis is None and self.shift is None, f"deepen_edge {u}->{w}: a conv edge takes no basis"
        )
        _require(self.kernel % 2 == 1, f"deepen_edge {u}->{w}: the kernel must be odd, got {self.kernel}")
        channels = analyze(spec).shapes[u][0]
        old = weights.pop(f"edges.{u}__{w}.weight")
        identity = _at_centre(torch.eye(channels), torch.zeros(channels, channels, self.kernel, self.kernel))
        _insert_node(data, w, m, {"channels": channels, "activation": self.activation, "bias": True})
        data["edges"][index : index + 1] = [
            {"from": u, "to": m, "op": _conv_op(self.kernel)},
            {"from": m, "to": w, "op": spec.edges[index].op.model_dump(mode="json")},
        ]
        weights[f"edges.{u}__{m}.weight"] = _like(identity, old)
        weights[f"nodes.{m}.bias"] = _like(torch.zeros(channels), old)
        weights[f"edges.{m}__{w}.weight"] = old
        for pname, value in _activation_params(self.activation).items():
            weights[f"nodes.{m}.activation.{pname}"] = _like(value, old)

    def describe(self) -> str:
        how = "" if self.basis is None else ", basis"
        return f"deepen_edge({self.source}->{self.name}->{self.target}{how})"


ACTIONS: Registry[type[Action]] = Registry("action")
for _action in (UpdateWeights, AddNeurons, AddNode, AddEdge, DeepenEdge):
    ACTIONS.add(_action.kind, _action, (_action.__doc__ or "").strip().splitlines()[0])


def action_from_dict(data: Mapping[str, Any]) -> Action:
    """Inverse of ``Action.to_dict``."""
    data = dict(data)
    kind = data.pop("action", None)
    if kind not in ACTIONS:
        raise RewriteError(unknown_name_message("action", kind, ACTIONS))
    cls = ACTIONS.get(kind)
    kwargs = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        v = data[f.name]
        if v is None:
            pass
        elif f.name in ("fan_in", "weight", "basis", "shift") or (
            f.name == "fan_out" and not isinstance(v, dict)
        ):
            v = _t(v)
        elif f.name in ("fan_out", "deltas"):
            v = {k: _t(t) for k, t in v.items()}
        elif f.name == "sources":
            v = tuple(v)
        kwargs[f.name] = v
    return cls(**kwargs)


def replay(
    spec: GraphSpec, weights: Mapping[str, Tensor], actions: Iterable[Action]
) -> tuple[GraphSpec, Weights]:
    """Apply a growth history in order."""
    w: Weights = dict(weights)
    for a in actions:
        spec, w = a.apply(spec, w)
    return spec, w
