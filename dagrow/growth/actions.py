"""Proposals become rewrite actions here, and only here, keyed by site kind.

Every strategy's plan is built from these functions: the proposals of TINY, GradMax, NORTH, random and
mirrored (:class:`~dagrow.growth.proposals.Proposal`), SENN's candidates
(:class:`~dagrow.growth.natural.NaturalProposal`) and the seeds' best update of one node
(:class:`~dagrow.growth.proposals.TargetUpdate`).

A proposal is applied at amplitude gamma as ``(W - gamma dW*, sqrt(gamma) alpha, sqrt(gamma) omega)``
(a new edge: ``gamma W_edge``). A proposal without a fan-out (SENN's widen and node candidates) gets a
zero fan-out: the function is unchanged until training moves it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import torch
from torch import Tensor

from ..features import as_parameter, feature_width, parameter
from ..graph import analyze
from ..registry import Registry
from ..rewrite import Action, AddEdge, AddNeurons, AddNode, DeepenEdge, UpdateWeights, new_node_name
from ..sites import Site
from ..spec import GraphSpec
from .proposals import TargetUpdate


class Growable(Protocol):
    """What the action builders read from a proposal (both Proposal and NaturalProposal have it)."""

    site: Site
    activation: Any


ActionBuilder = Callable[[Any, GraphSpec, float], Action | None]
SITE_ACTIONS: Registry[ActionBuilder] = Registry("site kind")


def update_action(
    updates: Mapping[str, TargetUpdate], spec: GraphSpec, gamma: float = 1.0
) -> UpdateWeights | None:
    """The best update dW* of each target node (``W <- W - gamma dW*``) as one :class:`UpdateWeights`."""
    shapes = analyze(spec).shapes
    deltas: dict[str, Tensor] = {}
    for w, upd in updates.items():
        col = 0
        for s in upd.sources:
            width = feature_width(s, shapes)
            deltas[parameter(s, w)] = as_parameter(upd.delta[:, col : col + width], s)
            col += width
    return UpdateWeights(deltas, gamma) if deltas else None


def _activation(p: Growable) -> Any:
    act = p.activation
    return act.model_dump() if hasattr(act, "model_dump") else act


def _fan_out(p: Any, w: str, width: int) -> Tensor:
    """The fan-out of the new neurons into ``w`` ([width_w, K]); zeros when the proposal has none."""
    fan_out = getattr(p, "fan_out", None)
    if fan_out is not None:
        return fan_out[w]
    return torch.zeros(width, p.fan_in.shape[0], dtype=torch.float64)


def _has_neurons(p: Any) -> bool:
    return getattr(p, "neurons", 1) > 0 and p.fan_in is not None and p.fan_in.shape[0] > 0


def _sizes(spec: GraphSpec) -> dict[str, int]:
    """The growable size of every node: its width, or its channels for an image node (a new neuron's
    fan-out into an image node is one value per channel, written at the centre of the kernel)."""
    return {v: sh[0] if len(sh) == 3 else math.prod(sh) for v, sh in analyze(spec).shapes.items()}


def _kernel(spec: GraphSpec, u: str) -> int | None:
    """The kernel of the conv edges grown out of ``u`` (None: u is flat, growth adds linear edges)."""
    return spec.growth.conv_kernel if len(analyze(spec).shapes[u]) == 3 else None


@SITE_ACTIONS.register(
    "widen", "new neurons in a node: rows of every edge into it, columns of every edge out"
)
def widen_action(p: Any, spec: GraphSpec, gamma: float) -> Action | None:
    site = p.site
    if not _has_neurons(p):
        return None
    sizes = _sizes(spec)
    fan_out = {w: _fan_out(p, w, sizes[w]) for w in site.targets}
    return AddNeurons(site.node, site.sources, p.fan_in, fan_out, gamma)


@SITE_ACTIONS.register("node", "a new hidden node on a pair u -> new -> w")
def node_action(p: Any, spec: GraphSpec, gamma: float) -> Action | None:
    if not _has_neurons(p):
        return None
    u, w = p.site.pair
    fan_out = _fan_out(p, w, _sizes(spec)[w])
    name = new_node_name(spec, u, w)
    return AddNode(u, w, name, p.fan_in, fan_out, _activation(p), gamma, kernel=_kernel(spec, u))


@SITE_ACTIONS.register("edge", "a direct linear edge u -> w, least-squares initialised")
def edge_action(p: Any, spec: GraphSpec, gamma: float) -> Action | None:
    u, w = p.site.pair
    weight = getattr(p, "edge_weight", None)
    return AddEdge(u, w, weight, gamma, kernel=_kernel(spec, u)) if weight is not None else None


@SITE_ACTIONS.register("deepen", "a function-preserving node m inserted on an edge u -> m -> w")
def deepen_action(p: Any, spec: GraphSpec, gamma: float) -> Action | None:
    if not hasattr(p, "basis"):
        raise ValueError(f"{p.site.id}: deepen sites are proposed by the natural strategy only")
    u, w = p.site.pair
    name = new_node_name(spec, u, w)
    return DeepenEdge(u, w, name, p.activation, basis=p.basis, shift=p.shift, kernel=spec.growth.conv_kernel)


def proposal_actions(
    proposal: Any,
    spec: GraphSpec,
    gamma: float = 1.0,
    *,
    update: bool = True,
    neuron_gamma: float | None = None,
) -> list[Action]:
    """The actions that apply ``proposal`` to ``spec``: the best update at ``gamma`` (when ``update``
    and the proposal has one), then the growth of its site at ``neuron_gamma`` (default ``gamma``)."""
    updates = getattr(proposal, "updates", None)
    acts = [
        update_action(updates, spec, gamma) if update and updates else None,
        SITE_ACTIONS.get(proposal.site.kind)(proposal, spec, gamma if neuron_gamma is None else neuron_gamma),
    ]
    return [a for a in acts if a is not None]
