"""SENN's third experiment: on digits the network sizes itself to the data.

The same net (64 -> 2 tanh -> 10) is grown by the natural strategy on training subsets of
scikit-learn's 8x8 digits of increasing size; with more data the natural expansion score keeps
finding directions worth a neuron for longer, and the final width grows with the data.

    python examples/senn_digits.py  # writes runs/senn_digits.png (docs: --out docs/img/...)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import dagrow  # noqa: E402

SPEC = """
version: 1
name: senn-digits
inputs: {x: {shape: [64]}}
nodes:
  h: {width: 2, activation: tanh}
  out: {width: 10}
edges: [{from: x, to: h}, {from: h, to: out}]
outputs: [out]
growth: {widen: [h], new_nodes: none}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,300,900,1797", help="subset sizes (before the split)")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("runs/senn_digits.png"),
        help="the picture (the docs image: --out docs/img/senn_digits.png)",
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    for n in sizes:
        for seed in range(args.seeds):
            task = dagrow.make_task("digits", n=n, seed=seed)
            config = dagrow.GrowthConfig(
                strategy="natural", growths=None, every=100, lr=1e-2, batch_size=64, max_rounds=40, seed=seed
            )
            started = time.perf_counter()
            result = dagrow.grow(dagrow.load_spec(SPEC), task, config)
            end = result.history[-1]
            stop = next(h for h in result.history if h["event"] == "stop")
            rows.append(
                (
                    n,
                    len(task.train),
                    seed,
                    result.model.spec.nodes["h"].width,
                    end["test_accuracy"],
                    stop["step"],
                    time.perf_counter() - started,
                )
            )
            print(
                f"n={n:5d} (train {len(task.train):4d}) seed {seed}: width {rows[-1][3]:3d}, "
                f"test accuracy {end['test_accuracy']:.3f}, stopped growing at step {stop['step']} "
                f"({stop['reason']}), {rows[-1][-1]:.0f} s",
                flush=True,
            )
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    train = [r[1] for r in rows]
    axes[0].plot(train, [r[3] for r in rows], "o", color="C0")
    axes[0].set(xscale="log", title="final hidden width", xlabel="training samples", ylabel="neurons")
    axes[1].plot(train, [r[4] for r in rows], "o", color="C2")
    axes[1].set(xscale="log", title="test accuracy", xlabel="training samples")
    fig.suptitle("digits: the natural strategy sizes the network to the data (64 -> 2 -> 10 at the start)")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
