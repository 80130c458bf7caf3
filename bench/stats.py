"""Cost of growth decisions in units of one training step, timed in the same run.

    python bench/stats.py [--batch 4096] [--repeat 15] [--warmup 3] [--threads N] [--device cpu]

1. The statistics of every supported site of an MLP 64 -> [64, 64, 64] -> 10 (float32 model, each
   batch's products in float32, sums in float64: the defaults) on one batch, in training steps on
   the same batch (forward, backward, SGD step):
   - ``recorded``: gathered during a training step by :class:`dagrow.stats.Recorder` (what
     ``GrowthConfig(statistics="training")`` does); the figure is the step's extra time,
     (recorded step - step) / step. Target <= 1.5x.
   - ``stats``: ``measure()``, a pass of its own (forward, backward to the pre-activations, the
     products), with and without the full output factors G (``output_factors=False`` keeps their
     traces, all that the proposals use), and with float64 products (``products=torch.float64``).
   ``floor`` is the ratio of multiply-adds (a separate pass: forward, input gradients and one product
   per block; recorded: the products a training step does not already make; a training step:
   forward, input and weight gradients), what a perfectly efficient implementation would reach.
2. ``proposals/train_step``: ``propose_all(..., "tiny")`` for every supported site (widen, node, edge)
   of a DAG with 6 hidden nodes (x[32], h1..h6 of width 16 with skip connections, out 10), from one
   statistics pass, divided by one training step of that DAG on the same batch. Target <= 5x. Also
   the statistics pass plus the proposals (no target).

Every figure is the median of ``--repeat`` rounds after ``--warmup`` calls; in each round the
functions run one after the other (each called twice, the second call timed), so that the ratios
survive a machine whose load changes.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import dagrow
from dagrow.graph import analyze
from dagrow.growth.proposals import propose_all
from dagrow.recorder import Recorder  # noqa: E402
from dagrow.sites import ONE, enumerate_sites
from dagrow.stats import measure, requirements

MLP = """
version: 1
name: bench_mlp
inputs: {x: {shape: [64]}}
nodes:
  h1: {width: 64, activation: relu}
  h2: {width: 64, activation: relu}
  h3: {width: 64, activation: relu}
  out: {width: 10}
edges:
  - {from: x, to: h1}
  - {from: h1, to: h2}
  - {from: h2, to: h3}
  - {from: h3, to: out}
outputs: [out]
"""

DAG = """
version: 1
name: bench_dag
inputs: {x: {shape: [32]}}
nodes:
  h1: {width: 16, activation: relu}
  h2: {width: 16, activation: tanh}
  h3: {width: 16, activation: relu}
  h4: {width: 16, activation: gelu}
  h5: {width: 16, activation: relu}
  h6: {width: 16, activation: tanh}
  out: {width: 10}
edges:
  - {from: x, to: h1}
  - {from: x, to: h2}
  - {from: h1, to: h3}
  - {from: h2, to: h3}
  - {from: h1, to: h4}
  - {from: h3, to: h4}
  - {from: h3, to: h5}
  - {from: x, to: h5}
  - {from: h4, to: h6}
  - {from: h5, to: h6}
  - {from: h2, to: h6}
  - {from: h6, to: out}
  - {from: h4, to: out}
outputs: [out]
growth: {widen: all, new_nodes: edges, new_edges: all}
"""

TARGETS = {"stats": 1.5, "proposals": 5.0}


def median_times(fns: dict, repeat: int, warmup: int, sync) -> dict[str, float]:
    """Median seconds of each function, the functions interleaved in every round so that a change in
    the machine's load (a shared CI box) hits numerator and denominator alike."""
    for f in fns.values():
        for _ in range(warmup):
            f()
    sync()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for k, f in fns.items():
            f()  # untimed: each timed call finds its own data in the caches, as in a loop of its own
            sync()
            start = time.perf_counter()
            f()
            sync()
            times[k].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def setting(text: str, batch: int, device: str):
    torch.manual_seed(0)
    spec = dagrow.load_spec(text)
    model = dagrow.compile(spec, seed=0, device=device)
    x = torch.randn(batch, *spec.inputs["x"].shape, device=device)
    y = torch.randint(0, spec.nodes["out"].size, (batch,), device=device)
    return spec, model, x, y


def train_step_fn(model, x, y, optimizer=torch.optim.SGD):
    opt = optimizer(model.parameters(), lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def line(name: str, cost: float, step: float, what: str, target: float | None = None) -> str:
    ratio = cost / step
    verdict = "" if target is None else f"  target <= {target:g}x: {'ok' if ratio <= target else 'MISSED'}"
    return f"{name}: {ratio:.2f}x ({what} {cost * 1e3:.1f} ms, step {step * 1e3:.1f} ms){verdict}"


def arithmetic_floor(spec, sites, output_factors: bool, recorded: bool = False) -> float:
    """Multiply-adds per sample of the statistics pass (``recorded``: of the products a training step
    does not already make) over those of a training step (linear edges)."""
    sg = analyze(spec)
    width = {v: 1 if v == ONE else int(torch.tensor(s).prod()) for v, s in sg.shapes.items()}
    width[ONE] = 1
    layers = sum(width[e.source] * width[e.target] for e in spec.edges)
    # the statistics need no weight gradients and no input gradient of the first layer
    backward = sum(width[e.source] * width[e.target] for e in spec.edges if e.source not in spec.inputs)
    req = requirements(spec, sites, output_factors=output_factors)
    canonical = {tuple(sorted(p)) for p in req.pairs}
    blocks = sum(width[a] * width[b] for a, b in canonical if ONE not in (a, b))
    edges = {(e.source, e.target) for e in spec.edges}
    free = edges if recorded else set()  # a recording step's weight gradients are these M blocks
    blocks += sum(width[s] * width[w] for s, w in req.grads if s != ONE and (s, w) not in free)
    if output_factors:
        blocks += sum(width[w] ** 2 for w in req.targets)
    if recorded:
        return blocks / (3 * layers)
    return (layers + backward + blocks) / (3 * layers)


def recorded_step_fn(model, x, y, sites, optimizer=torch.optim.SGD, **options):
    """A training step that also records the statistics (the recorder entered for this one step)."""
    opt = optimizer(model.parameters(), lr=1e-3)
    recorder = Recorder(model, sites=sites, **options)

    def step():
        with recorder:
            opt.zero_grad(set_to_none=True)
            recorder.backward(F.cross_entropy(model(x), y))
            opt.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, device {args.device}, threads {threads}, batch {args.batch}")

    spec, model, x, y = setting(MLP, args.batch, args.device)
    sites = enumerate_sites(spec, include_unsupported=False)
    batches = [(x, y)]
    t = median_times(
        {
            "step": train_step_fn(model, x, y),
            "recorded": recorded_step_fn(model, x, y, sites),
            "recorded_lean": recorded_step_fn(model, x, y, sites, output_factors=False),
            "stats": lambda: measure(model, batches, "cross_entropy", sites=sites),
            "lean": lambda: measure(model, batches, "cross_entropy", sites=sites, output_factors=False),
            "lean64": lambda: measure(
                model, batches, "cross_entropy", sites=sites, output_factors=False, products=torch.float64
            ),
        },
        args.repeat,
        args.warmup,
        sync,
    )
    print(f"MLP 64 -> [64, 64, 64] -> 10, {len(sites)} sites: {', '.join(s.id for s in sites)}")
    for key, label in (("recorded", "recorded"), ("recorded_lean", "recorded(output_factors=False)")):
        extra = t[key] - t["step"]
        print(
            line(f"{label}/train_step", extra, t["step"], "extra time of a recording step", TARGETS["stats"])
        )
    print(line("stats/train_step", t["stats"], t["step"], "stats"))
    print(line("stats(output_factors=False)/train_step", t["lean"], t["step"], "stats"))
    print(line("stats(output_factors=False, products=float64)/train_step", t["lean64"], t["step"], "stats"))
    for factors in (True, False):
        separate, recorded = (arithmetic_floor(spec, sites, factors, r) for r in (False, True))
        print(
            f"floor(output_factors={factors}) = {separate:.2f}x separate pass, {recorded:.2f}x recorded "
            "(multiply-adds of the statistics / of a training step)"
        )

    spec, model, x, y = setting(DAG, args.batch, args.device)
    sites = enumerate_sites(spec, include_unsupported=False)
    weights = model.state_dict()
    batches = [(x, y)]
    stats = measure(model, batches, "cross_entropy", sites=sites)
    t = median_times(
        {
            "step": train_step_fn(model, x, y),
            "stats": lambda: measure(model, batches, "cross_entropy", sites=sites),
            "proposals": lambda: propose_all(stats, sites, "tiny", 1, weights=weights),
        },
        args.repeat,
        args.warmup,
        sync,
    )
    kinds = sorted({s.kind for s in sites})
    print(f"DAG 32 -> 6 x 16 (skips) -> 10, {len(sites)} sites ({', '.join(kinds)})")
    print(line("proposals/train_step", t["proposals"], t["step"], "proposals", TARGETS["proposals"]))
    total = t["stats"] + t["proposals"]
    print(line("stats+proposals/train_step", total, t["step"], "stats + proposals"))


if __name__ == "__main__":
    main()
