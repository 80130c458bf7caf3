"""Validate + compile time of generated DAG specs of 10, 100 and 1000 nodes.

    python bench/compile.py [--sizes 10 100 1000] [--repeat 3] [--seed 0]

Each spec is a random DAG: every node reads the node before it and up to two earlier nodes or the
input (skip connections and merges), widths 4..32, activations drawn from the registry. The YAML text
is generated outside the timing; "validate" is ``load_spec(text)`` (YAML parsing with locations,
pydantic, graph checks, shapes) and "compile" is ``compile(spec)`` (modules, initialisation, fx graph,
code generation). The best of ``--repeat`` runs is reported; the target is under 2 s for 1000 nodes.
"""

from __future__ import annotations

import argparse
import random
import time

import yaml

from dagrow import compile, list_activations, load_spec, num_params

TARGET_SECONDS = {1000: 2.0}


def generate(n_nodes: int, seed: int = 0) -> str:
    """YAML text of a random valid DAG spec with ``n_nodes`` nodes."""
    rng = random.Random(seed)
    activations = list_activations()
    nodes: dict[str, dict] = {}
    edges: list[dict] = []
    names = ["x"]
    for i in range(n_nodes):
        v = f"n{i}"
        nodes[v] = {"width": rng.randint(4, 32), "activation": rng.choice(activations)}
        sources = {names[-1], *rng.sample(names, min(len(names), rng.randint(0, 2)))}
        edges += [{"from": u, "to": v} for u in sorted(sources, key=names.index)]
        names.append(v)
    read = {e["from"] for e in edges}
    data = {
        "version": 1,
        "name": f"bench-{n_nodes}",
        "inputs": {"x": {"shape": [16]}},
        "nodes": nodes,
        "edges": edges,
        "outputs": [v for v in nodes if v not in read],
    }
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)


def best_time(fn, repeat: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    compile(load_spec(generate(5, args.seed)))  # warm up imports and torch
    header = (
        f"{'nodes':>6} {'edges':>6} {'params':>9} {'validate s':>11} {'compile s':>10} {'total s':>8}  target"
    )
    print(header)
    print("-" * len(header))
    for n in args.sizes:
        text = generate(n, args.seed)
        t_validate, spec = best_time(lambda text=text: load_spec(text), args.repeat)
        t_compile, _ = best_time(lambda spec=spec: compile(spec), args.repeat)
        total = t_validate + t_compile
        target = TARGET_SECONDS.get(n)
        verdict = f"{total / target:.2f} of {target:g} s" if target else ""
        print(
            f"{n:>6} {len(spec.edges):>6} {num_params(spec):>9,} {t_validate:>11.3f} {t_compile:>10.3f} "
            f"{total:>8.3f}  {verdict}"
        )


if __name__ == "__main__":
    main()
