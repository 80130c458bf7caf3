"""Drawings of an architecture: a layered layout, DOT text and a PNG drawn with matplotlib.

The layout (:func:`layout`) is a small Sugiyama layout, left to right:

1. layers are the topological generations of the DAG (a node sits one layer right of its furthest
   predecessor, so every edge points right);
2. an edge that spans several layers gets a waypoint in every layer it crosses; waypoints take a slot
   in their layer like nodes do, so a skip edge is routed around the nodes in between instead of
   through them;
3. the order inside each layer comes from a few barycentre sweeps (down, then up), which removes most
   crossings.

Nodes show their width (or channels and image size) and activation, edges their op (``linear`` edges
are left unlabelled in graphs of more than :data:`LABEL_LINEAR_UP_TO` edges, and the legend says so).
Given the starting spec (``base``), what growth added is highlighted: new nodes and edges in orange, and
widened nodes as ``width 4 -> 9``. :func:`to_dot` ranks its nodes by the same layers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import networkx as nx

from .bundle import atomic_write
from .graph import analyze
from .spec import GraphSpec

LABEL_LINEAR_UP_TO = 30
COLORS = {"input": "#fdf1d8", "output": "#e3f4e1", "hidden": "#eef3fb", "new": "#ffd9b3"}
GROWN = "#e4670c"


@dataclass
class Layout:
    """Positions of a layered drawing: ``pos[v] = (layer, slot)`` for nodes; ``routes[(u, w)]`` the
    waypoints (layer, slot) an edge passes through between its ends; ``slots[layer]`` how many slots the
    layer holds (nodes and waypoints)."""

    layers: list[list[str]]
    pos: dict[str, tuple[int, float]]
    routes: dict[tuple[str, str], list[tuple[int, float]]] = field(default_factory=dict)
    slots: list[int] = field(default_factory=list)


def generations(spec: GraphSpec) -> list[list[str]]:
    """The topological generations of the spec's DAG (inputs first), each in the spec's order."""
    sg = analyze(spec)
    rank = {v: i for i, v in enumerate(sg.order)}
    return [sorted(gen, key=rank.__getitem__) for gen in nx.topological_generations(sg.dag)]


def layout(spec: GraphSpec, sweeps: int = 4) -> Layout:
    """The layered layout of ``spec`` (see the module docstring)."""
    layers = generations(spec)
    layer_of = {v: i for i, gen in enumerate(layers) for v in gen}
    # every edge as a chain of units: the source, one waypoint per crossed layer, the target
    rows: list[list[object]] = [list(gen) for gen in layers]
    chains: dict[tuple[str, str], list[object]] = {}
    for e in spec.edges:
        u, w = e.source, e.target
        chain: list[object] = [u]
        for layer in range(layer_of[u] + 1, layer_of[w]):
            point = ("via", u, w, layer)
            rows[layer].append(point)
            chain.append(point)
        chains[(u, w)] = [*chain, w]
    preds: dict[object, list[object]] = {}
    succs: dict[object, list[object]] = {}
    for chain in chains.values():
        for a, b in zip(chain, chain[1:], strict=False):
            succs.setdefault(a, []).append(b)
            preds.setdefault(b, []).append(a)

    def place(row: list[object]) -> dict[object, float]:
        return {unit: i - (len(row) - 1) / 2 for i, unit in enumerate(row)}

    where: dict[object, float] = {}
    for row in rows:
        where.update(place(row))
    for sweep in range(sweeps):
        downward = sweep % 2 == 0
        order = range(1, len(rows)) if downward else range(len(rows) - 2, -1, -1)
        for i in order:
            near = preds if downward else succs

            def centre(unit: object, near=near) -> float:
                others = near.get(unit, [])
                return sum(where[o] for o in others) / len(others) if others else where[unit]

            rows[i].sort(key=centre)  # stable: ties keep the current order
            where.update(place(rows[i]))
    pos = {v: (layer_of[v], where[v]) for v in layer_of}
    routes = {
        key: [(p[3], where[p]) for p in chain[1:-1]]  # type: ignore[index]
        for key, chain in chains.items()
    }
    return Layout(
        [[u for u in row if isinstance(u, str)] for row in rows], pos, routes, [len(r) for r in rows]
    )


# --------------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------------


def op_label(op) -> str:
    """``linear``, or ``conv2d kernel=3 padding=1``: the op (or norm) and the settings that differ
    from defaults."""
    settings = op.model_dump(exclude_defaults=True, exclude={"type"})
    return " ".join([op.type, *(f"{k}={v}" for k, v in settings.items())])


def _size(spec: GraphSpec, v: str, shape) -> str:
    node = spec.nodes[v]
    if node.width is not None:
        return f"width {node.width}"
    return f"{node.channels} ch {'x'.join(str(s) for s in shape[1:])}"


def node_lines(spec: GraphSpec, v: str, shape, base: GraphSpec | None = None) -> list[str]:
    """The lines of a node's label: name, size (``width 4 -> 9`` when growth widened it), its norm
    (``batch_norm``, ``group_norm groups=4``) when it has one, activation."""
    if v in spec.inputs:
        return [v, "input " + "x".join(str(s) for s in shape)]
    node = spec.nodes[v]
    size = _size(spec, v, shape)
    if base is not None and v in base.nodes and base.nodes[v].size != node.size:
        size = size.replace(str(node.size), f"{base.nodes[v].size} -> {node.size}", 1)
    norm = [op_label(node.norm)] if node.norm is not None else []
    return [v, size, *norm, node.activation.name]


def grown_parts(spec: GraphSpec, base: GraphSpec | None) -> tuple[set[str], set[tuple[str, str]], set[str]]:
    """(new nodes, new edges, widened nodes) of ``spec`` against ``base`` (all empty without one)."""
    if base is None:
        return set(), set(), set()
    old_edges = {(e.source, e.target) for e in base.edges}
    new_nodes = {v for v in spec.nodes if v not in base.nodes}
    new_edges = {(e.source, e.target) for e in spec.edges if (e.source, e.target) not in old_edges}
    widened = {v for v in spec.nodes if v in base.nodes and base.nodes[v].size != spec.nodes[v].size}
    return new_nodes, new_edges, widened


def _dot_text(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def to_dot(spec: GraphSpec, base: GraphSpec | None = None) -> str:
    """DOT text, left to right, one rank per topological generation: nodes show their size and
    activation, edges their op; with ``base`` what growth added is orange (widened nodes: a bold
    border and ``width 4 -> 9``)."""
    sg = analyze(spec)
    new_nodes, new_edges, widened = grown_parts(spec, base)
    lines = [
        f'digraph "{_dot_text(spec.name)}" {{',
        "  rankdir=LR;",
        "  newrank=true;",
        '  node [shape=box, style="rounded,filled", fillcolor="#eef3fb", fontname="Helvetica"];',
        '  edge [fontname="Helvetica", fontsize=10];',
    ]
    for v in sg.order:
        label = "\\n".join(_dot_text(s) for s in node_lines(spec, v, sg.shapes[v], base))
        kind = "input" if v in spec.inputs else "output" if v in spec.outputs else "hidden"
        attrs = [f'label="{label}"']
        if v in new_nodes:
            attrs.append(f'fillcolor="{COLORS["new"]}", color="{GROWN}", penwidth=2')
        elif kind != "hidden":
            attrs.append(f'fillcolor="{COLORS[kind]}"')
        if v in widened:
            attrs.append(f'color="{GROWN}", penwidth=2')
        lines.append(f'  "{_dot_text(v)}" [{", ".join(attrs)}];')
    for gen in generations(spec):
        members = " ".join(f'"{_dot_text(v)}";' for v in gen)
        lines.append(f"  {{ rank=same; {members} }}")
    for e in spec.edges:
        edge_attrs = f'label="{_dot_text(op_label(e.op))}"'
        if (e.source, e.target) in new_edges:
            edge_attrs += f', color="{GROWN}", fontcolor="{GROWN}", penwidth=2'
        lines.append(f'  "{_dot_text(e.source)}" -> "{_dot_text(e.target)}" [{edge_attrs}];')
    lines.append("}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# PNG
# --------------------------------------------------------------------------------------------------

DX, DY = 2.6, 1.15  # layer spacing and slot spacing (data units: about inches at scale 1)
BOX_W, BOX_H = 1.45, 0.78


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError("drawing a PNG needs matplotlib: pip install 'dagrow[plot]'") from exc
    return plt


def write_png(
    spec: GraphSpec, path: str | Path, base: GraphSpec | None = None, *, title: str | None = None
) -> Path:
    """Draw the architecture into a PNG (atomically): the layered layout of :func:`layout`, left to right;
    with ``base`` (the starting spec) what growth added is highlighted and the title counts it."""
    plt = _pyplot()
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Patch
    from matplotlib.path import Path as MplPath

    sg = analyze(spec)
    lay = layout(spec)
    new_nodes, new_edges, widened = grown_parts(spec, base)
    n_layers, tallest = len(lay.layers), max(lay.slots)
    # one scale for the whole drawing keeps big graphs inside a 40 x 30 inch canvas
    scale = min(1.0, 40 / (n_layers * DX + 1), 30 / (tallest * DY + 1.6))
    width = max(n_layers * DX * scale + 0.6, 6.0)
    height = max(tallest * DY * scale + 1.6 * scale + 0.9, 2.8)
    fig, ax = plt.subplots(figsize=(width, height))
    font = max(8.5 * scale, 4.5)

    def xy(layer: float, slot: float) -> tuple[float, float]:
        return layer * DX, -slot * DY

    label_ops = len(spec.edges) <= LABEL_LINEAR_UP_TO
    for e in spec.edges:
        u, w = e.source, e.target
        points = [xy(*lay.pos[u]), *(xy(*p) for p in lay.routes[(u, w)]), xy(*lay.pos[w])]
        points[0] = (points[0][0] + BOX_W / 2, points[0][1])
        points[-1] = (points[-1][0] - BOX_W / 2, points[-1][1])
        verts, codes = [points[0]], [MplPath.MOVETO]
        for a, b in zip(points, points[1:], strict=False):  # horizontal tangents at every layer
            mid = (a[0] + b[0]) / 2
            verts += [(mid, a[1]), (mid, b[1]), b]
            codes += [MplPath.CURVE4] * 3
        grown = (u, w) in new_edges
        color = GROWN if grown else "#4a4a4a"
        ax.add_patch(
            FancyArrowPatch(
                path=MplPath(verts, codes),
                arrowstyle="-|>",
                mutation_scale=10 * scale + 4,
                color=color,
                lw=(1.8 if grown else 1.0) * max(scale, 0.5),
                zorder=1,
            )
        )
        text = op_label(e.op)
        if text != "linear" or label_ops:
            a, b = points[0], points[1]
            ax.text(
                (a[0] + b[0]) / 2,
                (a[1] + b[1]) / 2,
                text,
                fontsize=font * 0.8,
                color=color,
                ha="center",
                va="center",
                zorder=3,
                bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.85),
            )
    for v, (layer, slot) in lay.pos.items():
        x, y = xy(layer, slot)
        kind = "input" if v in spec.inputs else "output" if v in spec.outputs else "hidden"
        fill = COLORS["new"] if v in new_nodes else COLORS[kind]
        edge = GROWN if v in new_nodes or v in widened else "#555555"
        ax.add_patch(
            FancyBboxPatch(
                (x - BOX_W / 2, y - BOX_H / 2),
                BOX_W,
                BOX_H,
                boxstyle="round,pad=0.02,rounding_size=0.12",
                fc=fill,
                ec=edge,
                lw=2.2 if edge == GROWN else 1.0,
                zorder=2,
            )
        )
        lines = node_lines(spec, v, sg.shapes[v], base)
        ax.text(x, y + 0.17, lines[0], fontsize=font, weight="bold", ha="center", va="center", zorder=4)
        ax.text(x, y - 0.12, "\n".join(lines[1:]), fontsize=font * 0.85, ha="center", va="center", zorder=4)
    handles = [Patch(fc=COLORS[k], ec="#555555", label=k) for k in ("input", "hidden", "output")]
    if base is not None:
        handles.append(Patch(fc=COLORS["new"], ec=GROWN, lw=2, label="added by growth"))
    if not label_ops:
        handles.append(Patch(fc="white", ec="white", label="unlabelled edges: linear"))
    xs = [xy(*p)[0] for p in lay.pos.values()]
    ys = [-s * DY for n in lay.slots for s in (-(n - 1) / 2, (n - 1) / 2)]
    ax.set_xlim(min(xs) - BOX_W, max(xs) + BOX_W)
    ax.set_ylim(min(ys) - BOX_H, max(ys) + BOX_H * 1.3)
    ax.legend(
        handles=handles,
        loc="upper left",
        fontsize=font * 0.85,
        ncol=len(handles),
        frameon=False,
        bbox_to_anchor=(0, 1.0),
        borderaxespad=0,
    )
    params = sg.num_params()
    heading = title or f"{spec.name}: {params:,} parameters"
    if base is not None and title is None:
        grown_by = f"{len(new_nodes)} new nodes, {len(new_edges)} new edges, {len(widened)} widened"
        heading += f" (from {analyze(base).num_params():,}: {grown_by})"
    ax.set_title(heading, fontsize=max(10 * scale, 7), loc="left")
    ax.axis("off")
    ax.set_aspect("equal")
    fig.tight_layout()
    out = atomic_write(
        path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight", pad_inches=0.15)
    )
    plt.close(fig)
    return out
