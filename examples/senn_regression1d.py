"""SENN's first experiment: 1-D regression from one hidden neuron; the network grows, then stops.

Seed 003 (Self-Expanding Neural Networks): after every round of training the natural expansion score
eta is measured; a neuron is added while the best candidate raises eta by more than tau (relative) and
more than alpha times E||dL/dy||^2 (absolute). No growth count is given: the run stops on its own.

    python examples/senn_regression1d.py  # writes runs/senn_regression1d.png (docs: --out docs/img/...)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import dagrow  # noqa: E402

SPEC = """
version: 1
name: senn-regression1d
inputs: {x: {shape: [1]}}
nodes:
  h: {width: 1, activation: tanh}     # one hidden neuron to start with
  out: {width: 1}
edges: [{from: x, to: h}, {from: h, to: out}]
outputs: [out]
growth: {widen: [h], new_nodes: none}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("runs/senn_regression1d.png"),
        help="the picture (the docs image: --out docs/img/senn_regression1d.png)",
    )
    args = parser.parse_args()
    task = dagrow.make_task("regression1d", n=50, seed=args.seed)
    config = dagrow.GrowthConfig(
        strategy="natural", growths=None, every=200, lr=1e-2, batch_size=64, max_rounds=60, seed=args.seed
    )
    started = time.perf_counter()
    result = dagrow.grow(dagrow.load_spec(SPEC), task, config)
    seconds = time.perf_counter() - started
    hist = result.history
    evals = [h for h in hist if h["event"] in ("growth", "evaluation")]
    stop, end = next(h for h in hist if h["event"] == "stop"), hist[-1]
    width = result.model.spec.nodes["h"].width
    print(
        f"width 1 -> {width} in {sum(h['event'] == 'growth' for h in hist)} additions; "
        f"stopped at step {stop['step']} (round {stop['round']}): {stop['reason']}"
    )
    print(
        f"val mse {end['val_mse']:.4g}, test mse {end['test_mse']:.4g}, {end['params']} parameters, "
        f"{seconds:.0f} s"
    )

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    x, y = task.train.x, task.train.y
    grid = torch.linspace(-5.5, 5.5, 400).reshape(-1, 1)
    with torch.no_grad():
        fit = result.model(grid)
    ax = axes[0]
    ax.scatter(x[:, 0], y[:, 0], s=12, color="k", label="training points")
    ax.plot(grid[:, 0], 2 * torch.sin(grid[:, 0]) + grid[:, 0], "--", color="gray", label="2 sin x + x")
    ax.plot(grid[:, 0], fit[:, 0], color="C3", label=f"grown net ({width} tanh neurons)")
    ax.set(title="fit after growth", xlabel="x")
    ax.legend(fontsize=8)
    ax = axes[1]
    steps = [h["step"] for h in evals]
    ax.step(steps, [h["widths_before"]["h"] for h in evals], where="post", color="C0")
    ax.set(title="hidden width (at each evaluation)", xlabel="training step", ylabel="neurons")
    ax = axes[2]
    ax.semilogy(steps, [h["abs_ratio"] for h in evals], "o", ms=3, label="best Delta eta / E||dL/dy||^2")
    ax.semilogy(steps, [h["ratio"] for h in evals], "x", ms=3, label="best Delta eta / eta")
    ax.axhline(config.alpha, color="C0", lw=0.8, ls="--", label=f"alpha = {config.alpha}")
    ax.axhline(config.tau, color="C1", lw=0.8, ls="--", label=f"tau = {config.tau}")
    ax.set(title="when to grow", xlabel="training step")
    ax.legend(fontsize=8)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
