"""Brute-force references for the statistics and proposal tests (float64, small nets only).

Nothing here uses dagrow's hooks or closed forms: the forward pass is re-implemented from the spec and
the state dict, per-sample gradients ``g_v(x_i) = d l_i / d a_v`` come from autograd on each sample's
own loss (through a zero perturbation added to every pre-activation), and the moments are sums of
outer products built sample by sample. Also: a few hand-written specs and a hypothesis strategy for
random DAGs of flat linear nodes with smooth activations.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import Tensor

import dagrow
from dagrow.spec import GraphSpec, parse_spec

ONE = "1"
SMOOTH = ("identity", "tanh", "sigmoid", "softplus", "gelu")


def _activation(node) -> Callable[[Tensor, Mapping[str, Tensor]], Tensor]:
    a = node.activation
    name = a.name
    if name == "identity":
        return lambda x, p: x
    if name == "tanh":
        return lambda x, p: torch.tanh(x)
    if name == "sigmoid":
        return lambda x, p: 1 / (1 + torch.exp(-x))
    if name in ("relu", "relu_grad1"):
        return lambda x, p: torch.where(x > 0, x, torch.zeros_like(x))
    if name == "leaky_relu":
        return lambda x, p: torch.where(x > 0, x, a.negative_slope * x)
    if name == "softplus":
        return lambda x, p: torch.log1p(torch.exp(a.beta * x)) / a.beta
    if name == "gelu":
        return lambda x, p: 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))
    if name == "prelu":
        return lambda x, p: torch.where(x > 0, x, p["weight"] * x)
    if name == "rational":
        return lambda x, p: (2 * p["v"] * x + p["c"]) / (1 + x * x) + p["l"] * x
    raise NotImplementedError(name)


def _order(spec: GraphSpec) -> list[str]:
    done, order = set(spec.inputs), []
    pending = list(spec.nodes)
    while pending:
        for v in pending:
            if all(e.source in done for e in spec.edges if e.target == v):
                order.append(v)
                done.add(v)
                pending.remove(v)
                break
        else:  # pragma: no cover
            raise ValueError("cycle")
    return order


def forward(
    spec: GraphSpec,
    weights: Mapping[str, Tensor],
    inputs: Sequence[Tensor],
    eps: Mapping[str, Tensor] | None = None,
) -> tuple[dict[str, Tensor], dict[str, Tensor], Tensor]:
    """(pre-activations, post-activations incl. inputs, output) of a flat, linear-edge spec."""
    post = dict(zip(spec.inputs, inputs, strict=True))
    pre: dict[str, Tensor] = {}
    for v in _order(spec):
        node = spec.nodes[v]
        a = sum(post[e.source] @ weights[f"edges.{e.key}.weight"].T for e in spec.edges if e.target == v)
        if node.bias:
            a = a + weights[f"nodes.{v}.bias"]
        if eps is not None:
            a = a + eps[v]
        prefix = f"nodes.{v}.activation."
        params = {k[len(prefix) :]: t for k, t in weights.items() if k.startswith(prefix)}
        pre[v] = a
        post[v] = _activation(node)(a, params)
    outs = [post[y] for y in spec.outputs]
    return pre, post, outs[0] if len(outs) == 1 else tuple(outs)


@dataclass
class Reference:
    """Per-sample features and gradients of one batch."""

    spec: GraphSpec
    post: dict[str, Tensor]  # v -> [n, width] (inputs and "1" included)
    grad: dict[str, Tensor]  # v -> [n, width], d l_i / d a_v
    pre: dict[str, Tensor]
    loss: float

    @property
    def n(self) -> int:
        return next(iter(self.post.values())).shape[0]

    def B(self, sources: Sequence[str]) -> Tensor:
        return torch.cat([self.post[s] for s in sources], 1)

    def moment(self, xs: Sequence[str], ys: Sequence[str]) -> Tensor:
        """(1/n) sum_i B_xs(x_i) B_ys(x_i)^T, one outer product per sample."""
        bx, by = self.B(xs), self.B(ys)
        return sum(torch.outer(bx[i], by[i]) for i in range(self.n)) / self.n

    def grad_moment(self, xs: Sequence[str], w: str) -> Tensor:
        bx = self.B(xs)
        return sum(torch.outer(bx[i], self.grad[w][i]) for i in range(self.n)) / self.n

    def G(self, w: str) -> Tensor:
        g = self.grad[w]
        return sum(torch.outer(g[i], g[i]) for i in range(self.n)) / self.n


def reference(
    spec: GraphSpec,
    weights: Mapping[str, Tensor],
    inputs: Sequence[Tensor],
    target: Tensor,
    loss: Callable[[Tensor, Tensor], Tensor] = F.mse_loss,
) -> Reference:
    """Sample by sample: features, d l_i / d a_v by autograd on l_i alone, and the mean loss."""
    weights = {k: v.detach().double() for k, v in weights.items()}
    inputs = [x.double() for x in inputs]
    n = inputs[0].shape[0]
    _, post, _ = forward(spec, weights, inputs)
    widths = {v: post[v].shape[1] for v in spec.nodes}
    grads: dict[str, list[Tensor]] = {v: [] for v in spec.nodes}
    pres: dict[str, list[Tensor]] = {v: [] for v in spec.nodes}
    total = 0.0
    for i in range(n):
        eps = {v: torch.zeros(1, widths[v], dtype=torch.float64, requires_grad=True) for v in spec.nodes}
        pre, _, out = forward(spec, weights, [x[i : i + 1] for x in inputs], eps)
        li = loss(out, target[i : i + 1])
        gs = torch.autograd.grad(li, list(eps.values()))
        for v, g in zip(eps, gs, strict=True):
            grads[v].append(g[0])
            pres[v].append(pre[v][0].detach())
        total += float(li.detach())
    post = {k: v.detach() for k, v in post.items()}
    post[ONE] = torch.ones(n, 1, dtype=torch.float64)
    return Reference(
        spec,
        post,
        {v: torch.stack(g) for v, g in grads.items()},
        {v: torch.stack(p) for v, p in pres.items()},
        total / n,
    )


def linear_sources(spec: GraphSpec, v: str) -> tuple[str, ...]:
    srcs = tuple(e.source for e in spec.edges if e.target == v)
    return srcs + ((ONE,) if spec.nodes[v].bias else ())


# --------------------------------------------------------------------------------------------------
# specs
# --------------------------------------------------------------------------------------------------

MLP = """
version: 1
name: mlp
inputs: {x: {shape: [5]}}
nodes:
  h1: {width: 3, activation: tanh}
  h2: {width: 4, activation: tanh}
  out: {width: 3}
edges:
  - {from: x, to: h1}
  - {from: h1, to: h2}
  - {from: h2, to: out}
outputs: [out]
growth: {new_edges: all, new_nodes: all, new_node_activation: tanh}
"""

SKIP = """
version: 1
name: skip
inputs: {x: {shape: [4]}}
nodes:
  h1: {width: 3, activation: softplus}
  h2: {width: 3, activation: tanh}
  out: {width: 2}
edges:
  - {from: x, to: h1}
  - {from: h1, to: h2}
  - {from: x, to: h2}
  - {from: h2, to: out}
  - {from: h1, to: out}
outputs: [out]
growth: {new_edges: all, new_nodes: all, new_node_activation: tanh}
"""

TWO_INPUTS = """
version: 1
name: two_inputs
inputs: {a: {shape: [3]}, b: {shape: [2]}}
nodes:
  h1: {width: 3, activation: gelu}
  h2: {width: 2, activation: sigmoid, bias: false}
  out: {width: 2}
edges:
  - {from: a, to: h1}
  - {from: b, to: h1}
  - {from: b, to: h2}
  - {from: h1, to: out}
  - {from: h2, to: out}
outputs: [out]
growth: {new_edges: all, new_nodes: all, new_node_activation: tanh}
"""

HAND_WRITTEN = {"mlp": MLP, "skip": SKIP, "two_inputs": TWO_INPUTS}


def with_activation(text: str, activation: str) -> str:
    """The spec with every hidden activation and the new-node activation replaced."""
    return re.sub(r"activation: (tanh|softplus|gelu|sigmoid|relu)\b", f"activation: {activation}", text)


def random_inputs(spec: GraphSpec, n: int, gen: torch.Generator) -> list[Tensor]:
    return [torch.randn(n, *s.shape, generator=gen, dtype=torch.float64) for s in spec.inputs.values()]


def random_target(spec: GraphSpec, n: int, gen: torch.Generator) -> Tensor:
    width = spec.nodes[spec.outputs[0]].size
    return torch.randn(n, width, generator=gen, dtype=torch.float64)


def setup(text_or_spec, n: int = 40, seed: int = 0):
    """(spec, float64 model, inputs, target) with seeded weights and data."""
    spec = text_or_spec if isinstance(text_or_spec, GraphSpec) else dagrow.load_spec(text_or_spec)
    model = dagrow.compile(spec, dtype=torch.float64, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    xs = random_inputs(spec, n, gen)
    return spec, model, xs, random_target(spec, n, gen)


@st.composite
def random_dags(draw, max_hidden: int = 4, max_width: int = 4, activations=SMOOTH) -> GraphSpec:
    """Random DAGs: 1-2 inputs, hidden nodes h1..hk each fed by 1-3 earlier nodes, every dangling node
    wired into ``out``; widths 1..max_width, smooth activations, some nodes without bias."""
    inputs = {f"x{i}": {"shape": [draw(st.integers(1, max_width))]} for i in range(draw(st.integers(1, 2)))}
    k = draw(st.integers(1, max_hidden))
    hidden = [f"h{i + 1}" for i in range(k)]
    nodes: dict[str, dict] = {}
    for h in hidden:
        nodes[h] = {
            "width": draw(st.integers(1, max_width)),
            "activation": draw(st.sampled_from(activations)),
            "bias": draw(st.sampled_from([True, True, True, False])),
        }
    nodes["out"] = {
        "width": draw(st.integers(1, 3)),
        "activation": draw(st.sampled_from(["identity", "tanh"])),
    }
    edges: list[tuple[str, str]] = []
    order = [*inputs, *hidden, "out"]
    for j, v in enumerate(order):
        if v in inputs:
            continue
        earlier = order[:j]
        for u in draw(st.lists(st.sampled_from(earlier), min_size=1, max_size=3, unique=True)):
            edges.append((u, v))
    for u in [*inputs, *hidden]:
        if not any(a == u for a, _ in edges):
            edges.append((u, "out"))
    data = {
        "version": 1,
        "name": "random",
        "inputs": inputs,
        "nodes": nodes,
        "edges": [{"from": u, "to": v} for u, v in edges],
        "outputs": ["out"],
        "growth": {"new_edges": "all", "new_nodes": "all", "new_node_activation": "tanh"},
    }
    return parse_spec(data)
