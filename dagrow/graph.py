"""The networkx view of a spec: checks, deterministic topological order, shapes, tied dimensions.

:func:`check_spec` returns every problem it finds as a :class:`Problem` whose ``path`` points into the
spec data (for example ``("edges", 3, "to")``), so that :mod:`dagrow.spec` can give it a file and a
line. :func:`analyze` returns a :class:`SpecGraph` for a valid spec.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

import networkx as nx

from .ops import ShapeError, op_info
from .registry import did_you_mean

if TYPE_CHECKING:  # the spec module imports this one to check specs: no import back at run time
    from .spec import GraphSpec

MAX_PARAMS = 2_000_000_000  # refuse to allocate a model larger than this
MAX_ACTIVATIONS = 100_000_000  # values per sample held by inputs, nodes and padded edge inputs


@dataclass(frozen=True)
class Problem:
    path: tuple[Any, ...]
    message: str


@dataclass
class SpecGraph:
    """A validated spec with its DAG, topological order and node shapes (without batch)."""

    spec: GraphSpec
    dag: nx.DiGraph
    order: list[str]
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @property
    def inputs(self) -> list[str]:
        return list(self.spec.inputs)

    @property
    def hidden_and_outputs(self) -> list[str]:
        """Non-input nodes in topological order."""
        return [v for v in self.order if v in self.spec.nodes]

    def preds(self, v: str) -> list[str]:
        """Sources of the edges into v, in the order the edges are declared."""
        return [e.source for e in self.in_edges(v)]

    def succs(self, v: str) -> list[str]:
        return [e.target for e in self.out_edges(v)]

    def in_edges(self, v: str):
        return list(self._edges_into.get(v, ()))

    def out_edges(self, v: str):
        return list(self._edges_out_of.get(v, ()))

    # indexes rather than a scan of every edge per node, so that compiling 1000 nodes stays linear
    @cached_property
    def _edges_into(self) -> dict[str, list]:
        return _group_edges(self.spec, "target")

    @cached_property
    def _edges_out_of(self) -> dict[str, list]:
        return _group_edges(self.spec, "source")

    @cached_property
    def position(self) -> dict[str, int]:
        return {v: i for i, v in enumerate(self.order)}

    def is_flat(self, v: str) -> bool:
        return len(self.shapes[v]) == 1

    @cached_property
    def tied(self) -> dict[str, str]:
        """Nodes whose size cannot change, with the reason (inputs, outputs, parameter-free edges)."""
        reasons: dict[str, str] = {}
        for v in self.spec.inputs:
            reasons[v] = "an input (its size is the data's)"
        for v in self.spec.outputs:
            reasons.setdefault(v, "an output (its size is the target's)")
        for e in self.spec.edges:
            if not op_info(e.op.type).parametric:
                for v in (e.source, e.target):
                    reasons.setdefault(
                        v,
                        f"joined to {e.source if v == e.target else e.target} by a "
                        f"parameter-free {e.op.type} edge (sizes are tied)",
                    )
        return reasons

    def num_params(self) -> int:
        return count_params(self.spec, self.shapes)


def _group_edges(spec: GraphSpec, end: str) -> dict[str, list]:
    """Edges grouped by their ``source`` or ``target``, each group in declaration order."""
    groups: dict[str, list] = {}
    for e in spec.edges:
        groups.setdefault(getattr(e, end), []).append(e)
    return groups


def count_params(spec: GraphSpec, shapes: dict[str, tuple[int, ...]]) -> int:
    total = 0
    for e in spec.edges:
        info = op_info(e.op.type)
        if info.parametric:
            total += info.fan_in(e.op, shapes[e.source]) * spec.nodes[e.target].size
    for node in spec.nodes.values():
        total += node.size if node.bias else 0
        total += {"prelu": 1, "rational": 3}.get(node.activation.name, 0)
    return total


def _declared_order(spec: GraphSpec) -> dict[str, int]:
    names = list(spec.inputs) + [v for v in spec.nodes if v not in spec.inputs]
    return {v: i for i, v in enumerate(names)}


def check_spec(spec: GraphSpec) -> list[Problem]:
    """Every structural problem of the spec (empty list when it is valid)."""
    problems: list[Problem] = []
    inputs, nodes = spec.inputs, spec.nodes
    for name in inputs:
        if name in nodes:
            problems.append(Problem(("nodes", name), f"{name!r} is both an input and a node"))
    seen: dict[tuple[str, str], int] = {}
    good_edges = []
    for i, e in enumerate(spec.edges):
        ok = True
        if e.source not in nodes and e.source not in inputs:
            problems.append(
                Problem(
                    ("edges", i, "from"), f"unknown source {e.source!r}" + _hint(e.source, [*inputs, *nodes])
                )
            )
            ok = False
        if e.target in inputs:
            problems.append(Problem(("edges", i, "to"), f"an edge cannot write into the input {e.target!r}"))
            ok = False
        elif e.target not in nodes:
            problems.append(
                Problem(("edges", i, "to"), f"unknown target {e.target!r}" + _hint(e.target, nodes))
            )
            ok = False
        if (e.source, e.target) in seen:
            problems.append(
                Problem(
                    ("edges", i),
                    f"duplicate edge {e.source}->{e.target} (first as edges[{seen[(e.source, e.target)]}])",
                )
            )
            ok = False
        seen.setdefault((e.source, e.target), i)
        if ok:
            good_edges.append(e)
    for j, out in enumerate(spec.outputs):
        if out not in nodes:
            what = "an input" if out in inputs else "not a node"
            problems.append(Problem(("outputs", j), f"output {out!r} is {what}" + _hint(out, nodes)))
    if len(set(spec.outputs)) != len(spec.outputs):
        problems.append(Problem(("outputs",), "an output is listed twice"))
    problems += _check_growth(spec)
    if problems:
        return problems

    dag = nx.DiGraph()
    dag.add_nodes_from(_declared_order(spec))
    dag.add_edges_from((e.source, e.target) for e in good_edges)
    edge_index = {(e.source, e.target): i for i, e in enumerate(spec.edges)}
    try:
        cycle = nx.find_cycle(dag)
        path = " -> ".join([u for u, _ in cycle] + [cycle[0][0]])
        return [Problem(("edges", edge_index[cycle[-1]]), f"cycle: {path}")]
    except nx.NetworkXNoCycle:
        pass
    for v in nodes:
        if dag.in_degree(v) == 0:
            problems.append(Problem(("nodes", v), f"node {v!r} has no incoming edge"))
    from_inputs = set().union(*(nx.descendants(dag, x) | {x} for x in inputs))
    to_outputs = set().union(*(nx.ancestors(dag, y) | {y} for y in spec.outputs if y in dag))
    for v in nodes:
        if dag.in_degree(v) and v not in from_inputs:
            problems.append(Problem(("nodes", v), f"node {v!r} has no path from any input"))
        if v not in to_outputs:
            problems.append(
                Problem(("nodes", v), f"node {v!r} has no path to any output (it would be unused)")
            )
    for x in inputs:
        if x not in to_outputs:
            problems.append(Problem(("inputs", x), f"input {x!r} is not used by any output"))
    if problems:
        return problems
    order = _topological_order(spec, dag)
    shapes, shape_problems = _propagate_shapes(spec, order, edge_index)
    if shape_problems:
        return shape_problems
    problems += _check_activations(spec, shapes, edge_index)
    n_params = count_params(spec, shapes)
    if n_params > MAX_PARAMS:
        problems.append(
            Problem(
                ("nodes",),
                f"the model would have {n_params:,} parameters "
                f"(more than the {MAX_PARAMS:,} dagrow allocates)",
            )
        )
    return problems or _check_max_width(spec)


_HINT_CANDIDATES = 5000  # beyond this many names a "did you mean" costs more than it helps


def _hint(name: str, candidates) -> str:
    candidates = list(candidates)
    if len(candidates) > _HINT_CANDIDATES:
        return ""
    return did_you_mean(name, candidates)


def _check_growth(spec: GraphSpec) -> list[Problem]:
    g = spec.growth
    problems = []
    known = set(spec.nodes) | set(spec.inputs)
    if isinstance(g.widen, list):
        for i, v in enumerate(g.widen):
            if v not in spec.nodes:
                problems.append(
                    Problem(("growth", "widen", i), f"cannot widen unknown node {v!r}" + _hint(v, spec.nodes))
                )
    edges = {(e.source, e.target): e for e in spec.edges}
    for key in ("new_nodes", "new_edges", "deepen"):
        pairs = getattr(g, key)
        if isinstance(pairs, list):
            for i, (u, w) in enumerate(pairs):
                unknown = [end for end in (u, w) if end not in known]
                for end in unknown:
                    problems.append(
                        Problem(
                            ("growth", key, i),
                            f"unknown node {end!r} in pair {u}->{w}" + _hint(end, known),
                        )
                    )
                if key == "deepen" and not unknown:
                    edge = edges.get((u, w))
                    if edge is None or edge.op.type not in ("linear", "conv2d"):
                        what = "is not an edge" if edge is None else f"is a {edge.op.type} edge"
                        problems.append(
                            Problem(
                                ("growth", key, i),
                                f"cannot deepen {u}->{w}: it {what} "
                                "(deepen takes existing linear or conv2d edges)",
                            )
                        )
    return problems


def _padded_numel(op: Any, in_shape: tuple[int, ...]) -> int:
    """Values of an edge's padded input (conv2d and pooling pad their input before sliding)."""
    padding = getattr(op, "padding", 0)
    if len(in_shape) != 3 or not padding:
        return 0
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    c, h, w = in_shape
    return c * (h + 2 * ph) * (w + 2 * pw)


def _check_activations(spec: GraphSpec, shapes: dict[str, tuple[int, ...]], edge_index) -> list[Problem]:
    """Refuse a model whose activations for one sample exceed :data:`MAX_ACTIVATIONS` values (a small
    image with an absurd padding has few parameters but would allocate terabytes)."""
    sizes: list[tuple[int, tuple[Any, ...], str]] = []
    for v, shape in shapes.items():
        where = ("inputs", v) if v in spec.inputs else ("nodes", v)
        sizes.append((math.prod(shape), where, f"{where[0][:-1]} {v!r} has shape {list(shape)}"))
    for e in spec.edges:
        padded = _padded_numel(e.op, shapes[e.source])
        if padded:
            what = f"edge {e.source}->{e.target} pads its input to {padded:,} values"
            sizes.append((padded, ("edges", edge_index[(e.source, e.target)], "op"), what))
    total = sum(n for n, _, _ in sizes)
    if total <= MAX_ACTIVATIONS:
        return []
    n, where, what = max(sizes, key=lambda t: t[0])
    return [
        Problem(
            where,
            f"one sample would need {total:,} activation values (more than the {MAX_ACTIVATIONS:,} "
            f"dagrow allows); the largest: {what} ({n:,} values)",
        )
    ]


def _check_max_width(spec: GraphSpec) -> list[Problem]:
    """A node that growth may widen must not already be wider than ``growth.max_width``."""
    g = spec.growth
    widen = list(spec.nodes) if g.widen == "all" else [] if g.widen == "none" else g.widen
    explicit = isinstance(g.widen, list)
    tied = _tied_nodes(spec)
    problems = []
    for v in dict.fromkeys(widen):
        if v in spec.nodes and spec.nodes[v].size > g.max_width and (explicit or v not in tied):
            problems.append(
                Problem(
                    ("growth", "max_width"),
                    f"node {v!r} already has size {spec.nodes[v].size}, more than max_width {g.max_width} "
                    "(raise max_width or leave the node out of widen)",
                )
            )
    return problems


def _tied_nodes(spec: GraphSpec) -> set[str]:
    """Nodes whose size cannot change: outputs and the ends of parameter-free edges (see SpecGraph.tied)."""
    tied = set(spec.outputs)
    for e in spec.edges:
        if not op_info(e.op.type).parametric:
            tied |= {e.source, e.target}
    return tied


def _topological_order(spec: GraphSpec, dag: nx.DiGraph) -> list[str]:
    rank = _declared_order(spec)
    return list(nx.lexicographical_topological_sort(dag, key=lambda v: rank[v]))


def _propagate_shapes(spec: GraphSpec, order: list[str], edge_index) -> tuple[dict, list[Problem]]:
    shapes: dict[str, tuple[int, ...]] = {x: tuple(s.shape) for x, s in spec.inputs.items()}
    problems: list[Problem] = []
    edges_into = _group_edges(spec, "target")
    for v in order:
        if v in spec.inputs:
            continue
        node = spec.nodes[v]
        incoming: dict[tuple[int, ...], list[str]] = {}
        for e in edges_into.get(v, ()):
            if e.source not in shapes:
                continue
            i = edge_index[(e.source, v)]
            try:
                out = op_info(e.op.type).out_shape(e.op, shapes[e.source], (node.width, node.channels))
            except ShapeError as exc:
                problems.append(Problem(("edges", i, "op"), str(exc)))
                continue
            incoming.setdefault(out, []).append(e.source)
        if len(incoming) > 1:
            desc = "; ".join(f"{'+'.join(src)} give {list(s)}" for s, src in incoming.items())
            problems.append(Problem(("nodes", v), f"node {v!r} sums edges of different shapes: {desc}"))
        elif incoming:
            shapes[v] = next(iter(incoming))
    return shapes, problems


def analyze(spec: GraphSpec) -> SpecGraph:
    """The :class:`SpecGraph` of a valid spec (call :func:`check_spec` first for a spec of unknown origin)."""
    dag = nx.DiGraph()
    dag.add_nodes_from(_declared_order(spec))
    dag.add_edges_from((e.source, e.target) for e in spec.edges)
    order = _topological_order(spec, dag)
    edge_index = {(e.source, e.target): i for i, e in enumerate(spec.edges)}
    shapes, problems = _propagate_shapes(spec, order, edge_index)
    if problems:
        raise ValueError("; ".join(p.message for p in problems))
    return SpecGraph(spec, dag, order, shapes)


def num_params(spec: GraphSpec) -> int:
    return analyze(spec).num_params()
