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

``"1"`` in a source list stands for the constant feature that carries a bias. Only legal sites are
offered: tied sizes (inputs, outputs, parameter-free edges), cycles, image nodes (conv statistics come
in a later issue) and the growth limits are checked here, and sites that the spec allows but dagrow
cannot measure yet are listed with ``supported=False`` and the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import networkx as nx

from .graph import SpecGraph, analyze
from .norms import widen_problem
from .ops import op_info
from .spec import GraphSpec

ONE = "1"
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
    """The feature blocks B_v of node v: sources of its linear edges, then "1" if it has a bias."""
    srcs = tuple(e.source for e in sg.in_edges(v) if e.op.type == "linear")
    return srcs + ((ONE,) if sg.spec.nodes[v].bias else ())


def _measurable_target(sg: SpecGraph, w: str) -> str | None:
    """Why target w cannot be measured (None when it can)."""
    if not sg.is_flat(w):
        return f"{w} is an image node (conv statistics come in a later issue)"
    others = [e for e in sg.in_edges(w) if op_info(e.op.type).parametric and e.op.type != "linear"]
    if others:
        return f"{w} has a {others[0].op.type} edge (its statistics come in a later issue)"
    return None


def _pairs(spec: GraphSpec, setting, sg: SpecGraph, existing: bool) -> list[tuple[str, str]]:
    if setting == "none":
        return []
    if setting == "edges":
        return [(e.source, e.target) for e in spec.edges if e.op.type == "linear"]  # type: ignore[attr-defined]
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


def enumerate_sites(spec: GraphSpec | SpecGraph, *, include_unsupported: bool = True) -> list[Site]:
    """Every growth site the spec allows, in a deterministic order (widen, node, edge, deepen)."""
    sg = spec if isinstance(spec, SpecGraph) else analyze(spec)
    spec = sg.spec
    g = spec.growth
    sites: list[Site] = []

    widen = list(spec.nodes) if g.widen == "all" else [] if g.widen == "none" else g.widen
    for h in [v for v in sg.order if v in widen]:
        reason = sg.tied.get(h)
        reason = f"{h} is {reason}" if reason else None
        if reason is None and not sg.is_flat(h):
            reason = f"{h} is an image node (channel growth comes in a later issue)"
        if reason is None:
            bad = [e for e in sg.in_edges(h) + sg.out_edges(h) if e.op.type != "linear"]
            if bad:
                reason = f"{h} has a {bad[0].op.type} edge {bad[0].source}->{bad[0].target}"
        if reason is None:
            reason = widen_problem(h, spec.nodes[h].norm)
        if reason is None and spec.nodes[h].size >= g.max_width:
            reason = f"{h} has reached max_width {g.max_width}"
        if reason is None:
            reason = next(filter(None, (_measurable_target(sg, w) for w in sg.succs(h))), None)
        sites.append(
            Site(
                "widen",
                linear_sources(sg, h),
                tuple(sg.succs(h)),
                node=h,
                supported=reason is None,
                reason=reason,
            )
        )

    for kind, setting in (("node", g.new_nodes), ("edge", g.new_edges), ("deepen", g.deepen)):
        for u, w in _pairs(spec, setting, sg, existing=kind != "edge"):
            reason = None
            if u not in sg.shapes or w not in spec.nodes:
                reason = f"{u}->{w} does not join two known nodes"
            elif w != u and nx.has_path(sg.dag, w, u):
                reason = f"{w} reaches {u}: a path {u}->...->{w} would close a cycle"
            elif not sg.is_flat(u) or not sg.is_flat(w):
                reason = f"{u}->{w} involves an image node (conv growth comes in a later issue)"
            elif kind == "edge" and sg.dag.has_edge(u, w):
                reason = f"{u}->{w} already exists"
            elif kind == "deepen" and not (
                sg.dag.has_edge(u, w) and spec.edge(u, w).op.type == "linear"  # type: ignore[attr-defined]
            ):
                reason = f"deepen needs an existing linear edge {u}->{w}"
            else:
                reason = _measurable_target(sg, w)
            sources = (u,) if kind == "edge" else (u, ONE)
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
