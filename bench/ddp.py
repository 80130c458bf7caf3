"""Extra cost of a growth decision on 2 processes (DDP, gloo on CPU) over 1 process, in one run.

    python bench/ddp.py [--batch 2048] [--repeat 5] [--nproc 2]

A decision is one ``Grower.step`` (amplitude_factor, tiny): statistics, proposals, line searches,
rewrite and rollback check, on an MLP 32 -> [64, 64] -> 10 (float32) with a global growth batch of
``--batch`` samples. With N processes each rank measures batch/N samples and adds the collectives
(all-reduce of the statistics, one all-reduce of [sum, n] per line-search loss, the broadcast of the
plan). Printed: the median seconds of a decision on 1 process, on N (the slowest rank), their ratio,
and the collectives alone timed on N processes (all-reduce of the statistics, broadcast of the plan).
On a machine with fewer cores than 2N the N processes share cores: the ratio then shows the overhead,
not the speed-up.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import dagrow  # noqa: E402
from dagrow.distributed import Ranks, close, free_port, init  # noqa: E402

SPEC = """
version: 1
name: bench-mlp
inputs: {x: {shape: [32]}}
nodes:
  h1: {width: 64, activation: relu}
  h2: {width: 64, activation: relu}
  out: {width: 10}
edges: [{from: x, to: h1}, {from: h1, to: h2}, {from: h2, to: out}]
outputs: [out]
"""


def decisions(ranks: Ranks | None, batch: int, repeat: int) -> tuple[list[float], list[float], list[float]]:
    """Seconds of each decision, of each all-reduce of the statistics and of each plan broadcast."""
    torch.manual_seed(0)
    base = dagrow.compile(dagrow.load_spec(SPEC), seed=0)
    x = torch.randn(batch, 32)
    y = torch.randint(0, 10, (batch,))
    share = (x, y) if ranks is None else ranks.shard((x, y))
    times, reduce_s, bcast_s = [], [], []
    for i in range(repeat + 1):
        model = copy.deepcopy(base)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        grower = dagrow.Grower(model, loss="cross_entropy", growths=100, distributed=ranks or False)
        if ranks is not None:
            ranks.barrier()
        start = time.perf_counter()
        step = grower.step(model, opt, [share])
        elapsed = time.perf_counter() - start
        if ranks is not None:  # the collectives alone, on the statistics and the plan of this step
            stats = dagrow.measure(model, [share], "cross_entropy", output_factors=False)
            ranks.barrier()
            t0 = time.perf_counter()
            ranks.all_reduce(stats)
            t1 = time.perf_counter()
            ranks.broadcast_plan(step.plans[0])
            t2 = time.perf_counter()
            if i:
                reduce_s.append(t1 - t0)
                bcast_s.append(t2 - t1)
        if i:  # the first call warms up
            times.append(elapsed)
    return times, reduce_s, bcast_s


def worker(rank: int, nproc: int, port: int, batch: int, repeat: int, out: dict) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(nproc))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    ranks = init(timeout=120)
    times, reduce_s, bcast_s = decisions(ranks, batch, repeat)
    out[rank] = (times, reduce_s, bcast_s)
    close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--nproc", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)  # each process one thread: the same compute per process in both runs
    one = statistics.median(decisions(None, args.batch, args.repeat)[0])
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(worker, (args.nproc, free_port(), args.batch, args.repeat, out), nprocs=args.nproc)
        results = dict(out)
    slowest = [max(results[r][0][i] for r in results) for i in range(args.repeat)]
    many = statistics.median(slowest)
    reduce_s = statistics.median(results[0][1])
    bcast_s = statistics.median(results[0][2])
    print(f"growth decision, global batch {args.batch}, 1 thread per process")
    print(f"  1 process:            {one * 1e3:8.1f} ms")
    print(f"  {args.nproc} processes (slowest): {many * 1e3:8.1f} ms")
    print(f"  ratio {args.nproc} / 1:            {many / one:8.2f}x")
    print(f"  all-reduce of the statistics: {reduce_s * 1e3:.2f} ms ({reduce_s / one:.1%} of 1 process)")
    print(f"  broadcast of the plan:        {bcast_s * 1e3:.2f} ms ({bcast_s / one:.1%} of 1 process)")


if __name__ == "__main__":
    main()
