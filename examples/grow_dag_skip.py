"""Grow a DAG with a skip edge: specs/dag_skip.yaml (x -> a, b -> m -> out, and x -> out directly).

Every node and edge of the DAG is a growth site: widening a, b or m, a new node on any edge, a new
edge between any two nodes that are not yet joined. The task is a regression on a random ReLU
teacher with 8 inputs and 2 outputs (``teacher_student``), which the 4-3-4 hidden nodes cannot fit;
the amplitude-factor strategy chooses a site at each growth and the script prints what it chose.

    python examples/grow_dag_skip.py                    # writes runs/example_dag_skip/
    python examples/grow_dag_skip.py --growths 3 --every 20   # a quick look
"""

from __future__ import annotations

import argparse
from pathlib import Path

import dagrow
from dagrow.loop import train_static

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--growths", type=int, default=8, help="growth steps")
    parser.add_argument("--every", type=int, default=150, help="training steps between growths")
    parser.add_argument("--neurons", type=int, default=2, help="neurons per growth")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--baseline", action="store_true", help="also train the ungrown DAG as long")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "example_dag_skip", help="output folder")
    args = parser.parse_args()

    spec = dagrow.load_spec(ROOT / "specs" / "dag_skip.yaml")
    task = dagrow.make_task("teacher_student", seed=args.seed, n=2000, in_dim=8, hidden=16, out_dim=2)
    sites = dagrow.enumerate_sites(spec, include_unsupported=False)
    print(f"{spec.name}: {len(sites)} growth sites: {', '.join(s.id for s in sites)}")
    config = dagrow.GrowthConfig(
        strategy="amplitude_factor",
        init="tiny",
        growths=args.growths,
        every=args.every,
        neurons=args.neurons,
        seed=args.seed,
    )
    result = dagrow.grow(spec, task, config)

    for h in result.history:
        if h["event"] == "rollback" or (h["event"] == "growth" and "reason" in h):
            print(f"growth {h['growth']}: {h.get('site') or 'no site'}: {h['reason']}")
        elif h["event"] == "growth":
            print(
                f"growth {h['growth']} at step {h['step']}: {h['site']} ({h['kind']}), "
                f"gamma* {h['gamma']:.3g}, loss {h['loss_before']:.4g} -> {h['loss_after']:.4g}, "
                f"{h['params']} parameters"
            )
    end = result.history[-1]
    grown = [h["site"] for h in result.history if h["event"] == "growth" and "reason" not in h]
    print(f"parameters: {dagrow.num_params(spec)} -> {dagrow.num_params(result.model.spec)}")
    print(f"sites grown: {', '.join(grown) or 'none'}")
    print(f"test mse: {end['test_mse']:.4g}")
    if args.baseline:
        static = train_static(spec, task, config).history[-1]
        print(f"the ungrown DAG, trained as long: test mse {static['test_mse']:.4g}")
    path = dagrow.save(result.model, args.out / "model.safetensors", spec_yaml=True)
    print(f"wrote {path} and {args.out / 'spec.yaml'}")


if __name__ == "__main__":
    main()
