"""The amplitude factor: apply a proposal as ``(W - gamma dW*, sqrt(gamma) alpha, sqrt(gamma) omega)``
and find ``gamma*`` minimising the real loss on a growth batch.

The grown architecture does not depend on gamma, so it is compiled once; the weights at gamma are
``W(gamma) = W0 + gamma (Wu - W0) + sqrt(gamma) (Wn - W0)`` where ``Wu`` applies only the best update
and ``Wn`` only the new neurons (each entry of the grown weights is one or the other), and the loss
is evaluated with ``torch.func.functional_call``. The line search runs only the part of the graph
that the moving weights reach (:meth:`GrownFamily.evaluator`): the rest is computed once per batch.
The search evaluates a log grid of gamma (2^-12 .. 2^6 by default), then refines around the best
point by golden section: about 30 evaluations. ``Delta_l = L(0) - L(gamma*)``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, fx, nn
from torch.func import functional_call

from ..compile import DagModel, compile, spec_of
from ..graph import analyze
from ..rewrite import Action, AddEdge, AddNeurons, AddNode, UpdateWeights, new_node_name, replay
from ..sites import ONE
from ..spec import GraphSpec
from ..stats import LossFn, loss_function
from .proposals import Proposal

GOLDEN = (math.sqrt(5) - 1) / 2


def update_action(proposal: Proposal, spec: GraphSpec, gamma: float = 1.0) -> UpdateWeights | None:
    """The best update dW* of the proposal's targets as an :class:`UpdateWeights` action."""
    shapes = analyze(spec).shapes
    deltas: dict[str, Tensor] = {}
    for w, upd in proposal.updates.items():
        col = 0
        for s in upd.sources:
            width = 1 if s == ONE else math.prod(shapes[s])
            block = upd.delta[:, col : col + width]
            if s == ONE:
                deltas[f"nodes.{w}.bias"] = block.reshape(-1)
            else:
                deltas[f"edges.{s}__{w}.weight"] = block
            col += width
    return UpdateWeights(deltas, gamma) if deltas else None


def neuron_action(proposal: Proposal, spec: GraphSpec, gamma: float = 1.0) -> Action | None:
    """The new neurons (or edge) of the proposal as an action at amplitude gamma."""
    site = proposal.site
    if site.kind == "edge":
        u, w = site.pair  # type: ignore[misc]
        return AddEdge(u, w, proposal.edge_weight, gamma) if proposal.edge_weight is not None else None
    if proposal.neurons == 0:
        return None
    if site.kind == "widen":
        return AddNeurons(site.node, site.sources, proposal.fan_in, proposal.fan_out, gamma)  # type: ignore[arg-type]
    if site.kind == "node":
        u, w = site.pair  # type: ignore[misc]
        act = (
            proposal.activation.model_dump()
            if hasattr(proposal.activation, "model_dump")
            else proposal.activation
        )
        return AddNode(u, w, new_node_name(spec, u, w), proposal.fan_in, proposal.fan_out[w], act, gamma)
    raise ValueError(f"{site.kind} sites are applied by DeepenEdge, not by a neuron proposal")


def proposal_actions(
    proposal: Proposal,
    spec: GraphSpec,
    gamma: float,
    *,
    update: bool = True,
    neuron_gamma: float | None = None,
) -> list[Action]:
    """Actions that apply the proposal: the best update at ``gamma`` (when ``update``), then the new
    neurons at ``neuron_gamma`` (default: the same gamma)."""
    acts = [
        update_action(proposal, spec, gamma) if update else None,
        neuron_action(proposal, spec, gamma if neuron_gamma is None else neuron_gamma),
    ]
    return [a for a in acts if a is not None]


@dataclass
class AmplitudeResult:
    """Outcome of the line search."""

    gamma: float
    loss_before: float
    loss_after: float
    evaluations: int
    predicted_decrease: float  # gamma* times the first-order improvement
    seconds: float

    @property
    def delta_l(self) -> float:
        return self.loss_before - self.loss_after


def line_search(
    f: Callable[[float], float], *, lo_exp: int = -12, hi_exp: int = 6, refine: int = 12
) -> tuple[float, float, int]:
    """Minimise f on [0, 2^hi_exp]: a grid 0, 2^lo_exp .. 2^hi_exp, then golden section around the best
    grid point. Returns (gamma*, f(gamma*), evaluations). Non-finite values count as +inf."""

    def safe(g: float) -> float:
        v = f(g)
        return v if math.isfinite(v) else math.inf

    grid = [0.0] + [2.0**k for k in range(lo_exp, hi_exp + 1)]
    values = [safe(g) for g in grid]
    i = min(range(len(grid)), key=values.__getitem__)
    evals = len(grid)
    if i == 0:
        return 0.0, values[0], evals
    a = grid[i - 1]
    b = grid[i + 1] if i + 1 < len(grid) else grid[i]
    best_g, best_v = grid[i], values[i]
    c, d = b - GOLDEN * (b - a), a + GOLDEN * (b - a)
    fc, fd = safe(c), safe(d)
    evals += 2
    for _ in range(refine):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - GOLDEN * (b - a)
            fc = safe(c)
        else:
            a, c, fc = c, d, fd
            d = a + GOLDEN * (b - a)
            fd = safe(d)
        evals += 1
    for g, v in ((c, fc), (d, fd)):
        if v < best_v:
            best_g, best_v = g, v
    return best_g, best_v, evals


class GrownFamily:
    """The grown model of a proposal as a function of gamma (one compile, weights interpolated)."""

    def __init__(self, model: nn.Module, proposal: Proposal, *, update: bool = True) -> None:
        spec = spec_of(model)
        base = {k: v.detach() for k, v in model.state_dict().items()}
        self.spec, w0 = replay(spec, base, proposal_actions(proposal, spec, 0.0, update=update))
        # without the update, W(gamma) does not depend on it: no replay needed for wu
        wu = replay(spec, base, proposal_actions(proposal, spec, 1.0, neuron_gamma=0.0))[1] if update else w0
        _, wn = replay(spec, base, proposal_actions(proposal, spec, 0.0, update=update, neuron_gamma=1.0))
        self.w0 = w0
        self.du = {k: wu[k] - w0[k] for k in w0}
        self.dn = {k: wn[k] - w0[k] for k in w0}
        self.proposal, self.update = proposal, update
        self._model: DagModel | None = None
        # new neurons scale with sqrt(gamma) on both sides; a new edge is linear in gamma
        self.power = 1.0 if proposal.site.kind == "edge" else 0.5
        self._evaluation: _Evaluation | None = None

    @property
    def model(self) -> DagModel:
        """The grown architecture holding the gamma = 0 weights, compiled on first use (by the line
        search's :meth:`evaluator` or a call)."""
        if self._model is None:
            ref = next(iter(self.w0.values()))
            self._model = compile(self.spec, self.w0, dtype=ref.dtype, device=ref.device)
        return self._model

    def weights(self, gamma: float, keys: Iterable[str] | None = None) -> dict[str, Tensor]:
        """``W0 + gamma dU + gamma^power dN`` for ``keys`` (default: every weight)."""
        r = max(gamma, 0.0) ** self.power
        keys = self.w0 if keys is None else keys
        return {k: self.w0[k] + gamma * self.du[k] + r * self.dn[k] for k in keys}

    def __call__(self, gamma: float, *inputs: Tensor):
        return functional_call(self.model, self.weights(gamma), inputs)

    def evaluator(self, *inputs: Tensor) -> Callable[[float], Any]:
        """``gamma -> outputs`` on fixed ``inputs``, bit-identical to ``self(gamma, *inputs)``, for line
        searches: the part of the graph that no moving weight reaches is computed once, and
        each call runs only the rest (see :class:`_Evaluation`)."""
        if self._evaluation is None:
            self._evaluation = _Evaluation(self)
        return self._evaluation.bind(inputs)

    def materialise(self, gamma: float) -> DagModel:
        ref = next(iter(self.w0.values()))
        # the dtype before the weights: compile() alone would round them through float32
        return compile(self.spec, self.weights(gamma), dtype=ref.dtype, device=ref.device)


class _Evaluation:
    """The grown family split into a gamma-independent prefix and a suffix.

    The suffix holds every fx node that a moving weight (one with a non-zero ``du`` or ``dn``)
    reaches; the prefix computes the values it needs from the inputs, once per batch. The suffix runs
    the same modules on the same values as the whole model, so its outputs are bit-identical to
    :meth:`GrownFamily.__call__`. (Cheaper forms that reorder sums, such as widened neurons evaluated
    as a node of their own, change the losses by round-off, which moves gamma* and the runs after it.)
    """

    def __init__(self, family: GrownFamily) -> None:
        self.family = family
        self.moving = [k for k in family.w0 if bool(family.du[k].any()) or bool(family.dn[k].any())]
        self.prefix, self.suffix = _split_graph(family.model, self.moving)

    def bind(self, inputs: tuple[Tensor, ...]) -> Callable[[float], Any]:
        with torch.no_grad():
            cached = self.prefix(*inputs)

        def outputs(gamma: float):
            return functional_call(self.suffix, self.family.weights(gamma, self.moving), cached)

        return outputs


def _split_graph(model: fx.GraphModule, moving_keys: list[str]) -> tuple[fx.GraphModule, fx.GraphModule]:
    """(prefix, suffix): the prefix maps the inputs to the values, independent of the moving weights,
    that the suffix needs; the suffix maps those to the outputs through every node a moving weight
    reaches (call_module nodes owning one, and everything downstream of them)."""
    owners = {k.rsplit(".", 1)[0] for k in moving_keys}
    graph = model.graph
    moving: set[fx.Node] = set()
    for n in graph.nodes:
        owns = n.op == "call_module" and any(o == n.target or o.startswith(f"{n.target}.") for o in owners)
        if owns or any(a in moving for a in n.all_input_nodes):
            moving.add(n)
    out = next(n for n in graph.nodes if n.op == "output")
    frontier = list(dict.fromkeys(a for n in [*moving, out] for a in n.all_input_nodes if a not in moving))
    pre: fx.Graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for n in graph.nodes:
        if n.op != "output" and n not in moving:
            env[n] = pre.node_copy(n, env.__getitem__)
    pre.output(tuple(env[n] for n in frontier))
    post: fx.Graph = fx.Graph()
    env = {n: post.placeholder(f"cached_{i}") for i, n in enumerate(frontier)}
    for n in graph.nodes:
        if n in moving or n.op == "output":
            env[n] = post.node_copy(n, env.__getitem__)
    return fx.GraphModule(model, pre), fx.GraphModule(model, post)


def amplitude_factor(
    model: nn.Module,
    proposal: Proposal,
    batch,
    loss: str | LossFn = "mse",
    *,
    update: bool = True,
    family: GrownFamily | None = None,
    lo_exp: int = -12,
    hi_exp: int = 6,
) -> tuple[AmplitudeResult, GrownFamily]:
    """gamma* for the proposal on ``batch = (inputs, target)`` and the grown family it belongs to."""
    start = time.perf_counter()
    loss_fn = loss_function(loss)
    x, y = batch
    xs = tuple(x) if isinstance(x, tuple | list) else (x,)
    family = family or GrownFamily(model, proposal, update=update)
    outputs = family.evaluator(*xs)

    @torch.no_grad()
    def f(gamma: float) -> float:
        return float(loss_fn(outputs(gamma), y))

    with torch.no_grad():
        before = float(loss_fn(model(*xs), y))
    gamma, after, evals = line_search(f, lo_exp=lo_exp, hi_exp=hi_exp)
    if after > before:  # numerical noise at gamma = 0: keep the network as it is
        gamma, after = 0.0, before
    res = AmplitudeResult(
        gamma, before, after, evals + 1, gamma * proposal.first_order_improvement, time.perf_counter() - start
    )
    return res, family
