"""SENN's second experiment: two moons from a linear model; the natural score inserts depth.

The network starts as a single linear map x -> out (no hidden node). Its growth sites are the
deepening of any edge (a new layer inserted so that the function is exactly unchanged: SENN's
basis construction with a rational activation at the identity) and the widening of hidden nodes; a
deepening's score is divided by ``depth_cost``. The natural strategy chooses between them.

    python examples/senn_moons.py  # writes runs/senn_moons.png (docs: --out docs/img/...)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import networkx as nx  # noqa: E402
import torch  # noqa: E402

import dagrow  # noqa: E402
from dagrow.graph import analyze  # noqa: E402
from dagrow.loop import train_static  # noqa: E402

SPEC = """
version: 1
name: senn-moons
inputs: {x: {shape: [2]}}
nodes:
  out: {width: 2}                     # a linear model: no hidden node
edges: [{from: x, to: out}]
outputs: [out]
growth: {widen: all, new_nodes: none, deepen: all}
"""


def depth(spec) -> int:
    """Edges on the longest input -> output path."""
    return max(len(p) - 1 for p in nx.all_simple_paths(analyze(spec).dag, "x", "out"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--depth-cost", type=float, default=2.0)
    parser.add_argument("--tau", type=float, default=0.05)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--final-steps", type=int, default=3000, help="training after growth stops")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("runs/senn_moons.png"),
        help="the picture (the docs image: --out docs/img/senn_moons.png)",
    )
    args = parser.parse_args()
    task = dagrow.make_task("moons", n=200, noise=0.3, seed=args.seed)
    config = dagrow.GrowthConfig(
        strategy="natural",
        growths=None,
        every=200,
        lr=1e-2,
        batch_size=64,
        max_rounds=30,
        depth_cost=args.depth_cost,
        construction="basis",  # SENN's new layers (dagrow's default is the identity construction)
        tau=args.tau,
        alpha=args.alpha,
        final_steps=args.final_steps,
        seed=args.seed,
    )
    started = time.perf_counter()
    result = dagrow.grow(dagrow.load_spec(SPEC), task, config)
    seconds = time.perf_counter() - started
    hist = result.history
    steps_done = hist[-1]["step"]
    static = dagrow.GrowthConfig(growths=0, every=steps_done, seed=args.seed)
    linear = train_static(dagrow.load_spec(SPEC), task, static)
    grown = [h for h in hist if h["event"] == "growth"]
    stop, end = next(h for h in hist if h["event"] == "stop"), hist[-1]
    spec = result.model.spec
    print(f"additions: {', '.join(h['site'] for h in grown)}")
    print(
        f"depth 1 -> {depth(spec)}, hidden widths {[n.size for v, n in spec.nodes.items() if v != 'out']}, "
        f"{end['params']} parameters; stopped at step {stop['step']}: {stop['reason']}"
    )
    fresh = dagrow.make_task("moons", n=5000, noise=0.3, seed=args.seed + 1000).train  # held out, large

    def accuracy(model) -> float:
        with torch.no_grad():
            return float((model(fresh.x).argmax(1) == fresh.y).double().mean())

    print(
        f"test accuracy {end['test_accuracy']:.3f} (linear model, same steps: "
        f"{linear.history[-1]['test_accuracy']:.3f}); on {len(fresh)} fresh points: "
        f"{accuracy(result.model):.3f} (linear {accuracy(linear.model):.3f}); {seconds:.0f} s"
    )

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    x, y = task.train.x, task.train.y
    g0, g1 = torch.meshgrid(torch.linspace(-2, 3, 200), torch.linspace(-1.5, 2, 200), indexing="xy")
    grid = torch.stack([g0.reshape(-1), g1.reshape(-1)], 1)
    with torch.no_grad():
        p = torch.softmax(result.model(grid), 1)[:, 1].reshape(g0.shape)
    ax = axes[0]
    ax.contourf(g0, g1, p, levels=20, cmap="RdBu_r", alpha=0.6)
    ax.contour(g0, g1, p, levels=[0.5], colors="k", linewidths=1)
    ax.scatter(x[:, 0], x[:, 1], c=y, cmap="RdBu_r", s=10, edgecolors="k", linewidths=0.3)
    ax.set(title=f"grown net: depth {depth(spec)}, accuracy {accuracy(result.model):.3f} on fresh points")
    ax = axes[1]
    steps = [h["step"] for h in grown]
    params = [3 * 2, *[h["params"] for h in grown]]
    ax.step([0, *steps, end["step"]], [*params, params[-1]], where="post", label="parameters")
    ax.axvline(stop["step"], color="k", lw=0.8, ls="--", label="growth stops")
    for h in grown:
        if h["kind"] == "deepen":
            ax.axvline(h["step"], color="C3", lw=0.8, ls=":")
    ax.plot([], [], color="C3", ls=":", label="a layer inserted")
    ax.set(title="growth", xlabel="training step", ylabel="parameters")
    ax.legend(fontsize=8)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
