"""The Grower inside your own DistributedDataParallel loop.

    torchrun --nproc-per-node 2 examples/ddp_loop.py      # two CPU processes (gloo)
    python examples/ddp_loop.py                           # the same loop as one process

Every rank draws the same global minibatch (same seed) and trains on its share of it, so the run is
the one-process run up to float rounding. ``grower.step`` is called on every rank with that rank's share
of the growth batch: the statistics are all-reduced, the line search's losses are global, rank 0's plan
is broadcast and replayed everywhere. After a growth the new model gets a new DDP wrapper (DDP only
synchronises the parameters it was built with); the optimizer was already updated in place.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.nn.functional as F

import dagrow
from dagrow.distributed import close, free_port, init, wrap

SPEC = """
version: 1
name: moons-mlp
inputs: {x: {shape: [2]}}
nodes:
  h1: {width: 2, activation: tanh}
  out: {width: 2}
edges: [{from: x, to: h1}, {from: h1, to: out}]
outputs: [out]
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=50, help="training steps per round")
    parser.add_argument("--batch", type=int, default=32, help="global minibatch")
    args = parser.parse_args()
    if "WORLD_SIZE" not in os.environ:  # plain python: a process group of one
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
        os.environ["MASTER_PORT"] = str(free_port())
    ranks = init(timeout=60)  # gloo on CPU; a dead rank fails the others within 60 s
    torch.manual_seed(0)
    task = dagrow.make_task("moons", seed=0)
    grower = dagrow.Grower(SPEC, loss="cross_entropy", growths=args.rounds, distributed=ranks)
    model = grower.model
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    ddp = wrap(model)
    x, y = task.train.x, task.train.y
    data = torch.Generator().manual_seed(1)  # the same global batches on every rank
    for round_ in range(args.rounds):
        for _ in range(args.steps):
            idx = torch.randint(len(x), (args.batch,), generator=data)
            xb, yb = ranks.shard((x[idx], y[idx]))  # this rank's share of the global batch
            opt.zero_grad()
            F.cross_entropy(ddp(xb), yb).backward()
            opt.step()
        step = grower.step(ddp, opt, [ranks.shard((x[:512], y[:512]))])
        if step.grew:
            ddp = wrap(step.model)  # new parameters: a new DDP around the grown model
        if ranks.rank == 0:
            for line in step.events:
                what = f"params={line['params']}" if "params" in line else line.get("reason")
                print(f"round {round_}: {line['event']} {line.get('site')} {what}")
    if ranks.rank == 0:
        loss, acc = dagrow.loop.evaluate(grower.model, task, "test", "cpu")
        params = dagrow.num_params(grower.model.spec)
        print(f"ranks: {ranks.world_size}  parameters: {params}  test accuracy: {acc:.4f}")
    close()


if __name__ == "__main__":
    main()
