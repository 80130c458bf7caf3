"""Cost of one growth decision in units of one training step, timed in the same run.

    python bench/grow.py [--batch 4096] [--repeat 7] [--warmup 2] [--threads N] [--device cpu]

A decision is the strategy's plan, what ``Grower.step`` asks for before it rewrites the network: the
statistics pass over every supported site, the proposals of every site, the ``amplitude_factor``
strategy's line searches (one per candidate, at most ``max_candidates``) and the plan's actions, with
the settings of ``dagrow grow``'s defaults
(``GrowthConfig()``: init tiny, one neuron, no joint update). A training step is a forward, a
backward and an Adam step on the same batch.

1. ``grow/mlp``: MLP 64 -> [64, 64, 64] -> 10 at batch 4096. Target <= 10x.
2. ``grow/dag``: a DAG x[32] -> 6 hidden nodes of width 16 -> 10 with skip edges (generated below)
   at the same batch, every site kind (widen, new node, new edge). Target <= 20x.

Every figure is the median of ``--repeat`` rounds; the decision and the step alternate in each round
(see ``median_times`` in bench/stats.py) so that the ratios survive a machine whose load changes.
Also printed: the parts of a decision (statistics, proposals, line searches) in training steps, and
the decision with the statistics recorded during a training step (``GrowthConfig(statistics=
"training")``): the recording step's extra time plus the proposals and the searches.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stats import MLP, median_times, recorded_step_fn, setting, train_step_fn  # noqa: E402  (bench/stats.py)

from dagrow.config import GrowthConfig  # noqa: E402
from dagrow.growth.proposals import ProposalSettings, propose_all  # noqa: E402
from dagrow.sites import enumerate_sites  # noqa: E402
from dagrow.stats import measure  # noqa: E402

TARGETS = {"mlp": 10.0, "dag": 20.0}


def dag_spec(hidden: int = 6, width: int = 16, inputs: int = 32, outputs: int = 10) -> str:
    """A chain x -> h1 -> ... -> h<hidden> -> out with skip edges: x -> every odd h_i, h_i -> h_{i+2},
    and h_{hidden-1} -> out; every site kind is enabled."""
    acts = ["relu", "tanh", "gelu"]
    nodes = [f"  h{i}: {{width: {width}, activation: {acts[i % 3]}}}" for i in range(1, hidden + 1)]
    chain = ["x", *(f"h{i}" for i in range(1, hidden + 1)), "out"]
    edges = list(zip(chain, chain[1:], strict=False))
    edges += [("x", f"h{i}") for i in range(3, hidden + 1, 2)]
    edges += [(f"h{i}", f"h{i + 2}") for i in range(1, hidden - 1)]
    edges += [(f"h{hidden - 1}", "out")]
    return "\n".join(
        [
            "version: 1",
            f"name: bench_dag_{hidden}",
            f"inputs: {{x: {{shape: [{inputs}]}}}}",
            "nodes:",
            *nodes,
            f"  out: {{width: {outputs}}}",
            "edges:",
            *(f"  - {{from: {u}, to: {v}}}" for u, v in edges),
            "outputs: [out]",
            "growth: {widen: all, new_nodes: edges, new_edges: all}",
            "",
        ]
    )


def decision_parts(model, x, y, config: GrowthConfig):
    """Functions for the three parts of a decision, and the whole, as the grow loop calls them."""
    sites = enumerate_sites(model.spec, include_unsupported=False)
    strategy = config.make_strategy()
    batch = (x, y)
    settings = ProposalSettings(seed=config.seed)

    def stats():
        return measure(model, [batch], "cross_entropy", sites=sites, output_factors=False)  # as the loop

    def proposals(s):
        weights = model.state_dict()
        return propose_all(s, sites, config.init, config.neurons, weights=weights, settings=settings)

    def search(ps):
        return strategy.choose(model, ps, batch, "cross_entropy", 0)

    def decide():  # the whole plan, as Grower.step asks for it (statistics, proposals, searches, actions)
        return strategy.plan(model, batch, "cross_entropy", sites)

    s = stats()
    ps = proposals(s)
    return sites, decide, {"stats": stats, "proposals": lambda: proposals(s), "searches": lambda: search(ps)}


def run(name: str, text: str, args, sync) -> None:
    spec, model, x, y = setting(text, args.batch, args.device)
    config = GrowthConfig()
    sites, decide, parts = decision_parts(model, x, y, config)
    decision = decide()
    fns = {"step": train_step_fn(model, x, y, torch.optim.Adam), "decision": decide}
    if args.parts:
        fns |= parts
        fns["recorded_step"] = recorded_step_fn(
            model, x, y, sites, output_factors=False, optimizer=torch.optim.Adam
        )
    t = median_times(fns, args.repeat, args.warmup, sync)
    kinds = sorted({s.kind for s in sites})
    print(
        f"{name}: {spec.name}, {len(sites)} sites ({', '.join(kinds)}), "
        f"{decision.figures['candidates']} line searches, chose {decision.site}; "
        f"step {t['step'] * 1e3:.1f} ms, decision {t['decision'] * 1e3:.1f} ms"
    )
    if args.parts:
        print("  parts: " + ", ".join(f"{k} {t[k] / t['step']:.2f}x" for k in parts))
        recorded = t["recorded_step"] - t["step"] + t["proposals"] + t["searches"]
        print(
            f"  with statistics recorded during a training step: {recorded / t['step']:.1f}x "
            f"(extra time of the recording step {(t['recorded_step'] - t['step']) / t['step']:.2f}x)"
        )
    ratio = t["decision"] / t["step"]
    target = TARGETS[name.split("/")[1]]
    verdict = "OK" if ratio <= target else "MISSED"
    print(f"{name} decision/train_step = {ratio:.1f}x (target <= {target:g}x) {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--no-parts", dest="parts", action="store_false", help="time only the whole decision, not its parts"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    print(
        f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, "
        f"batch {args.batch}"
    )
    run("grow/mlp", MLP, args, sync)
    run("grow/dag", dag_spec(), args, sync)


if __name__ == "__main__":
    main()
