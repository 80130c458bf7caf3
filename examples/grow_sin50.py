"""The README's quick start through the Python API: grow the seeds' thin 50-4-4-10 MLP on sin50.

The same run as

    dagrow grow specs/mlp_sin50.yaml --task sin50 --strategy amplitude_factor --growths 10 --every 100 \\
        --neurons 2 --out runs/quickstart

done with ``dagrow.load_spec``, ``make_task``, ``GrowthConfig``, ``grow`` and ``save``:

    python examples/grow_sin50.py                       # writes runs/example_sin50/
    python examples/grow_sin50.py --growths 2 --every 20 --n 2000   # a quick look
"""

from __future__ import annotations

import argparse
from pathlib import Path

import dagrow

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--growths", type=int, default=10, help="growth steps")
    parser.add_argument("--every", type=int, default=100, help="training steps between growths")
    parser.add_argument("--neurons", type=int, default=2, help="neurons per growth")
    parser.add_argument("--n", type=int, default=None, help="samples of sin50 (default: the task's 20000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "example_sin50", help="output folder")
    args = parser.parse_args()

    spec = dagrow.load_spec(ROOT / "specs" / "mlp_sin50.yaml")
    task = dagrow.make_task("sin50", seed=args.seed, n=args.n)
    config = dagrow.GrowthConfig(
        strategy="amplitude_factor",
        init="tiny",
        growths=args.growths,
        every=args.every,
        neurons=args.neurons,
        seed=args.seed,
    )
    result = dagrow.grow(spec, task, config)

    end = result.history[-1]
    grown = [h["site"] for h in result.history if h["event"] == "growth" and "reason" not in h]
    print(f"task: {task.description}")
    print(f"parameters: {dagrow.num_params(spec)} -> {dagrow.num_params(result.model.spec)}")
    print(f"sites grown: {', '.join(grown) or 'none'}")
    print(f"test accuracy: {end['test_accuracy']:.4f}")
    path = dagrow.save(result.model, args.out / "model.safetensors", spec_yaml=True)
    print(f"wrote {path} and {args.out / 'spec.yaml'}")


if __name__ == "__main__":
    main()
