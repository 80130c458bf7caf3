"""Growth sites, enumerated from the graph and the spec's ``growth`` section.

A site says where new capacity could go and which statistics measure it:

=========  ====================  ==========================  =====================================
kind       id                    sources U (new fan-in)       targets W (new fan-out)
=========  ====================  ==========================  =====================================
widen      ``widen:h``           predecessors of h (+ 1)      successors of h
node       ``node:u->w``         u (+ 1, the new node's bias)  w
edge       ``edge:u->w``         u                            w
deepen     ``deepen:u->w``       u (+ 1)                      w (the edge u->w is replaced)
=========  ====================  ==========================  =====================================

``"1"`` in a source list stands for the constant feature that carries a bias. On image nodes the
sources are features of :mod:`dagrow.features` (a conv edge's patches ``u#3x3s1x1p1x1``, the grid's
constant ``1#8x8``): new channels read patches and write into each successor through the centre tap of
its kernel, so they act position by position; grown conv edges and nodes use ``growth.conv_kernel``
with stride 1 and the padding that keeps the grid. Only legal sites are offered: tied sizes (inputs,
outputs, parameter-free edges), cycles, flat/image mismatches, grids and kernels that new channels
cannot write through, and the growth limits are checked here, and sites that the spec allows but
dagrow cannot measure yet are listed with ``supported=False`` and the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import networkx as nx

from .features import ONE, SUM, Geometry, grid_one, node_grid, patch_feature, pool_tag
from .graph import SpecGraph, analyze
from .norms import widen_problem
from .ops import op_info
from .spec import GraphSpec

__all__ = [
    "ONE",
    "ChannelPath",
    "Site",
    "channel_paths",
    "widen_ways",
    "SiteKind",
    "enumerate_sites",
    "find_site",
    "linear_sources",
    "parse_site_id",
]
SiteKind = Literal["widen", "node", "edge", "deepen"]


@dataclass(frozen=True)
class Site:
    """A place where the network may grow (see the module docstring for the meaning of each field)."""

    kind: SiteKind
    sources: tuple[str, ...]
    targets: tuple[str, ...]
    node: str | None = None  # the widened node (widen)
    pair: tuple[str, str] | None = None  # (u, w) for node, edge and deepen
    supported: bool = True
    reason: str | None = None

    @property
    def id(self) -> str:
        if self.kind == "widen":
            return f"widen:{self.node}"
        u, w = self.pair  # type: ignore[misc]
        return f"{self.kind}:{u}->{w}"

    def __str__(self) -> str:
        return self.id


def parse_site_id(site_id: str) -> tuple[SiteKind, str | tuple[str, str]]:
    """``"node:x->h2"`` -> ``("node", ("x", "h2"))``; raise ValueError on a malformed id."""
    kind, _, rest = site_id.partition(":")
    if kind == "widen" and rest:
        return "widen", rest
    if kind in ("node", "edge", "deepen") and "->" in rest:
        u, _, w = rest.partition("->")
        return kind, (u, w)  # type: ignore[return-value]
    raise ValueError(f"malformed site id {site_id!r} (expected widen:h, node:u->w, edge:u->w or deepen:u->w)")


def linear_sources(sg: SpecGraph, v: str) -> tuple[str, ...]:
    """The feature blocks B_v of node v (:mod:`dagrow.features`): one per linear edge (its source) or
    conv2d edge (its source's patches) into v, then the constant of v's bias ("1" on a flat node, "1#HxW"
    on an image node)."""
    if sg.is_flat(v):
        srcs = tuple(e.source for e in sg.in_edges(v) if e.op.type == "linear")
        one = ONE
    else:
        srcs = tuple(
            patch_feature(e.source, Geometry.of(e.op)) for e in sg.in_edges(v) if e.op.type == "conv2d"
        )
        one = grid_one(node_grid(sg.shapes[v]))  # type: ignore[arg-type]
    return srcs + ((one,) if sg.spec.nodes[v].bias else ())


def _measured_op(sg: SpecGraph, v: str) -> str:
    """The parametric edge type whose statistics dagrow measures into v."""
    return "linear" if sg.is_flat(v) else "conv2d"


def _measurable_target(sg: SpecGraph, w: str) -> str | None:
    """Why target w cannot be measured (None when it can)."""
    kind = _measured_op(sg, w)
    others = [e for e in sg.in_edges(w) if op_info(e.op.type).parametric and e.op.type != kind]
    if others:
        return f"{w} has a {others[0].op.type} edge (its statistics come in a later issue)"
    return None


@dataclass(frozen=True)
class ChannelPath:
    """How new channels of an image node h reach a node whose pre-activation they change: through
    ``via`` (nodes that only pass channels on: an avg_pool or identity edge into a node with no other
    input, no bias, no norm and the identity activation; or a flatten into such a flat node), then a
    conv2d (at the centre of its kernel) or, after a flatten, a linear edge (the same fan-out at every
    position). ``transform`` is what the way does to h's features (:mod:`dagrow.features`)."""

    target: str
    via: tuple[str, ...]
    transform: str


class _Refused(Exception):
    pass


def _pass_reason(sg: SpecGraph, h: str, p: str) -> str | None:
    """Why node p cannot pass new channels of h on (None when it can)."""
    node = sg.spec.nodes.get(p)
    if node is None or len(sg.in_edges(p)) != 1:
        return f"{p} sums more than what {h} sends it (a join grows with all its inputs or not at all)"
    if p in sg.spec.outputs:
        return f"{p} is an output"
    if node.bias or node.activation.name != "identity" or node.norm is not None:
        return f"{p} is not a plain pass-through (it has a bias, a norm or an activation)"
    return None


def channel_paths(sg: SpecGraph, h: str) -> list[ChannelPath]:
    """The ways new channels of image node h reach their targets; :class:`_Refused` with the reason
    when one of h's edges cannot carry them."""
    paths: list[ChannelPath] = []

    def walk(v: str, via: tuple[str, ...], transform: str) -> None:
        for e in sg.out_edges(v):
            kind, p = e.op.type, e.target
            if kind == "conv2d":
                geo = Geometry.of(e.op)
                if not geo.centred:
                    raise _Refused(
                        f"{v}->{p} is a conv2d with kernel {geo.kernel}, stride {geo.stride}, padding "
                        f"{geo.padding}: new channels write at the kernel's centre, which needs an odd "
                        "kernel, stride 1 and padding (k - 1) / 2"
                    )
                paths.append(ChannelPath(p, via, transform))
            elif kind in ("avg_pool", "identity", "flatten"):
                why = _pass_reason(sg, h, p)
                if why:
                    raise _Refused(f"new channels of {h} cannot pass {v}->{p}: {why}")
                if kind != "flatten":
                    walk(p, (*via, p), transform + (pool_tag(e.op) if kind == "avg_pool" else ""))
                    continue
                for x in sg.out_edges(p):
                    if x.op.type != "linear":
                        raise _Refused(
                            f"{p} feeds a {x.op.type} edge: after a flatten new channels need linear edges"
                        )
                    paths.append(ChannelPath(x.target, (*via, p), transform + SUM))
            else:
                raise _Refused(f"{v}->{p} is a {kind} edge, which is not linear in new channels")

    walk(h, (), "")
    return paths


def widen_ways(sg: SpecGraph, h: str) -> tuple[list[ChannelPath], str | None]:
    """The ways new neurons of h reach their targets (a flat node: straight to each successor) and
    why they cannot (None when they can)."""
    if sg.is_flat(h):
        return [ChannelPath(w, (), "") for w in sg.succs(h)], None
    try:
        paths = channel_paths(sg, h)
    except _Refused as exc:
        return [], str(exc)
    if len({p.transform for p in paths}) > 1:
        return (
            paths,
            f"new channels of {h} would reach its targets in different ways (pooled, flattened or not)",
        )
    if not paths:
        return paths, f"{h} feeds no parametric edge"
    return paths, None


def _targets(ways: list[ChannelPath]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(p.target for p in ways))


def _widen_site(sg: SpecGraph, h: str) -> Site:
    """The widen site of h: its features transformed as the way to its targets transforms them
    (pooled, or summed over the grid through a flatten), its targets, and why it cannot grow."""
    ways, why = widen_ways(sg, h)
    targets = _targets(ways)
    suffix = ways[0].transform if ways else ""
    sources = tuple(f + suffix for f in linear_sources(sg, h))
    reason = _widen_reason(sg, h, why, targets)
    return Site("widen", sources, targets, node=h, supported=reason is None, reason=reason)


def _widen_reason(sg: SpecGraph, h: str, why: str | None, targets: tuple[str, ...]) -> str | None:
    """Why node h cannot take new neurons or channels (None when it can); ``why``: what its ways
    to its ``targets`` say (:func:`widen_ways`)."""
    spec, g = sg.spec, sg.spec.growth
    if h in spec.inputs or h in spec.outputs:
        return f"{h} is {sg.tied[h]}"
    kind = _measured_op(sg, h)
    bad = [e for e in sg.in_edges(h) if e.op.type != kind]
    if bad:
        if not op_info(bad[0].op.type).parametric:
            return f"{h} is {sg.tied[h]}"
        return f"{h} has a {bad[0].op.type} edge {bad[0].source}->{bad[0].target}"
    if sg.is_flat(h):
        reason = sg.tied.get(h)
        if reason:
            return f"{h} is {reason}"
        bad = [e for e in sg.out_edges(h) if e.op.type != kind]
        if bad:
            return f"{h} has a {bad[0].op.type} edge {bad[0].source}->{bad[0].target}"
    elif why:
        return why
    reason = widen_problem(h, spec.nodes[h].norm)
    if reason:
        return reason
    if spec.nodes[h].size >= g.max_width:
        return f"{h} has reached max_width {g.max_width}"
    return next(filter(None, (_measurable_target(sg, w) for w in targets)), None)


def _pairs(spec: GraphSpec, setting, sg: SpecGraph, existing: bool) -> list[tuple[str, str]]:
    if setting == "none":
        return []
    if setting == "edges":
        return [(e.source, e.target) for e in spec.edges if e.op.type in ("linear", "conv2d")]  # type: ignore[attr-defined]
    if setting == "all":
        names = [v for v in sg.order]
        return [
            (u, w)
            for u in names
            for w in names  # "all" offers only the legal pairs
            if w in spec.nodes
            and u != w
            and (existing or not sg.dag.has_edge(u, w))
            and not nx.has_path(sg.dag, w, u)
        ]
    return [tuple(p) for p in setting]


def _pair_reason(sg: SpecGraph, kind: str, u: str, w: str) -> str | None:
    """Why the pair (u, w) cannot take a new node, a new edge or a deepening (None when it can)."""
    spec = sg.spec
    if u not in sg.shapes or w not in spec.nodes:
        return f"{u}->{w} does not join two known nodes"
    if w != u and nx.has_path(sg.dag, w, u):
        return f"{w} reaches {u}: a path {u}->...->{w} would close a cycle"
    if sg.is_flat(u) != sg.is_flat(w):
        return f"{u}->{w} joins an image node and a flat node (growth adds linear or conv2d edges only)"
    op = _measured_op(sg, w)
    if kind == "edge" and sg.dag.has_edge(u, w):
        return f"{u}->{w} already exists"
    if kind == "deepen" and not (sg.dag.has_edge(u, w) and spec.edge(u, w).op.type == op):
        return f"deepen needs an existing {op} edge {u}->{w}"
    size = sg.shapes[u][0]  # a flat node's width or an image node's channels
    if kind == "deepen" and size > spec.growth.max_width:  # the identity block copies u's size
        limit = spec.growth.max_width
        return f"deepening {u}->{w} adds a node of {u}'s size {size}, more than max_width {limit}"
    if op == "conv2d" and kind != "deepen" and node_grid(sg.shapes[u]) != node_grid(sg.shapes[w]):
        return (
            f"{u} ({sg.shapes[u][1]}x{sg.shapes[u][2]}) and {w} ({sg.shapes[w][1]}x{sg.shapes[w][2]}) are "
            "on different grids: grown convs have stride 1 and keep the grid"
        )
    return _measurable_target(sg, w)


def _pair_sources(sg: SpecGraph, kind: str, u: str) -> tuple[str, ...]:
    """The features of the new neurons (node, deepen: with a bias) or of the new edge at a pair."""
    if u in sg.shapes and not sg.is_flat(u):
        feature = patch_feature(u, Geometry.same(sg.spec.growth.conv_kernel))
        return (feature,) if kind == "edge" else (feature, grid_one(node_grid(sg.shapes[u])))  # type: ignore[arg-type]
    return (u,) if kind == "edge" else (u, ONE)


def enumerate_sites(spec: GraphSpec | SpecGraph, *, include_unsupported: bool = True) -> list[Site]:
    """Every growth site the spec allows, in a deterministic order (widen, node, edge, deepen)."""
    sg = spec if isinstance(spec, SpecGraph) else analyze(spec)
    spec = sg.spec
    g = spec.growth
    sites: list[Site] = []

    widen = list(spec.nodes) if g.widen == "all" else [] if g.widen == "none" else g.widen
    for h in [v for v in sg.order if v in widen]:
        sites.append(_widen_site(sg, h))

    for kind, setting in (("node", g.new_nodes), ("edge", g.new_edges), ("deepen", g.deepen)):
        for u, w in _pairs(spec, setting, sg, existing=kind != "edge"):
            reason = _pair_reason(sg, kind, u, w)
            sources = _pair_sources(sg, kind, u) if reason is None or u in sg.shapes else (u,)
            site = Site(kind, sources, (w,), pair=(u, w), supported=reason is None, reason=reason)  # type: ignore[arg-type]
            sites.append(site)
    seen: set[str] = set()
    unique = []
    for s in sites:
        if s.id not in seen and (include_unsupported or s.supported):
            seen.add(s.id)
            unique.append(s)
    return unique


def find_site(spec: GraphSpec | SpecGraph, site_id: str) -> Site:
    """The site with this id; ValueError naming the available ids otherwise."""
    parse_site_id(site_id)
    sites = enumerate_sites(spec)
    for s in sites:
        if s.id == site_id:
            return s
    raise ValueError(f"no growth site {site_id!r}; available: {', '.join(s.id for s in sites) or 'none'}")
