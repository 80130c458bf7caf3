"""Views of an architecture: Graphviz DOT text and a PNG drawn with matplotlib + networkx.

Neither needs a Graphviz binary. matplotlib is the optional extra ``dagrow[plot]``.
"""

from __future__ import annotations

from pathlib import Path

import networkx as nx

from .bundle import atomic_write
from .graph import analyze
from .spec import GraphSpec


def _label(spec: GraphSpec, v: str, shape) -> str:
    if v in spec.inputs:
        return f"{v}\\n{list(shape)}"
    node = spec.nodes[v]
    size = f"width {node.width}" if node.width is not None else f"{node.channels} ch {list(shape[1:])}"
    return f"{v}\\n{size}\\n{node.activation.name}"


def _op_label(op) -> str:
    """``linear``, or ``conv2d kernel=3 padding=1``: the op and the settings that differ from defaults."""
    settings = op.model_dump(exclude_defaults=True, exclude={"type"})
    return " ".join([op.type, *(f"{k}={v}" for k, v in settings.items())])


def to_dot(spec: GraphSpec) -> str:
    """DOT text: nodes show their size and activation, edges their op."""
    sg = analyze(spec)
    name = spec.name.replace("\\", "\\\\").replace('"', '\\"')
    lines = [f'digraph "{name}" {{', "  rankdir=LR;", '  node [shape=box, style="rounded,filled", '
             'fillcolor="#eef3fb", fontname="Helvetica"];']
    for v in sg.order:
        extra = ', fillcolor="#fdf1d8"' if v in spec.inputs else (
            ', fillcolor="#e3f4e1"' if v in spec.outputs else "")
        lines.append(f'  "{v}" [label="{_label(spec, v, sg.shapes[v])}"{extra}];')
    for e in spec.edges:
        lines.append(f'  "{e.source}" -> "{e.target}" [label="{_op_label(e.op)}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def _layers(spec: GraphSpec) -> dict[str, int]:
    sg = analyze(spec)
    depth: dict[str, int] = {}
    for v in sg.order:
        preds = list(sg.dag.predecessors(v))
        depth[v] = 1 + max((depth[p] for p in preds), default=-1)
    return depth


def write_png(spec: GraphSpec, path: str | Path) -> Path:
    """Draw the architecture left to right (layers by longest path from an input) into a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError("drawing a PNG needs matplotlib: pip install 'dagrow[plot]'") from exc
    sg = analyze(spec)
    g = nx.DiGraph(sg.dag)
    for v, d in _layers(spec).items():
        g.nodes[v]["layer"] = d
    pos = nx.multipartite_layout(g, subset_key="layer")
    fig, ax = plt.subplots(figsize=(2.2 + 1.8 * (max(_layers(spec).values()) + 1), 3 + 0.5 * len(g)))
    colors = ["#fdf1d8" if v in spec.inputs else "#e3f4e1" if v in spec.outputs else "#eef3fb" for v in g]
    labels = {v: _label(spec, v, sg.shapes[v]).replace("\\n", "\n") for v in g}
    nx.draw_networkx_nodes(g, pos, ax=ax, node_color=colors, node_size=2600, edgecolors="#555555")
    nx.draw_networkx_labels(g, pos, labels, ax=ax, font_size=8)
    nx.draw_networkx_edges(g, pos, ax=ax, arrows=True, arrowsize=14, node_size=2600,
                           connectionstyle="arc3,rad=0.08")
    nx.draw_networkx_edge_labels(g, pos, {(e.source, e.target): _op_label(e.op) for e in spec.edges}, ax=ax,
                                 font_size=7, label_pos=0.5)
    ax.set_title(f"{spec.name}: {sg.num_params():,} parameters")
    ax.axis("off")
    fig.tight_layout()
    out = atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return out
