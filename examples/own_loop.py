"""Grow a network from your own PyTorch training loop with ``dagrow.Grower``.

A plain loop (a DataLoader, AdamW, a cosine learning-rate schedule) trains the seeds' thin 50-4-4-10
MLP on sin50; after each epoch ``grower.step`` measures the statistics on a growth loader, plans a
growth with the amplitude-factor strategy, applies it, and updates the AdamW optimizer in place (the
scheduler keeps working, old moments are kept, new entries start at zero). Five growths in all:

    python examples/own_loop.py                     # writes runs/own_loop/
    python examples/own_loop.py --epochs 3 --n 2000 # a quick look
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import dagrow

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=6, help="training epochs (a growth after each)")
    parser.add_argument("--growths", type=int, default=5, help="growths at most")
    parser.add_argument("--n", type=int, default=None, help="samples of sin50 (default: the task's 20000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "own_loop")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    task = dagrow.make_task("sin50", seed=args.seed, **({"n": args.n} if args.n else {}))
    train = DataLoader(TensorDataset(task.train.x, task.train.y), batch_size=128, shuffle=True)
    growth = DataLoader(TensorDataset(task.train.x[:1024], task.train.y[:1024]), batch_size=256)

    grower = dagrow.Grower(
        ROOT / "specs" / "mlp_sin50.yaml",
        strategy="amplitude_factor",
        init="tiny",
        loss="cross_entropy",
        growths=args.growths,
        neurons=2,
        seed=args.seed,
    )
    model = grower.model
    print(f"parameters: {dagrow.num_params(model.spec)}", end="")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs * len(train))
    for epoch in range(args.epochs):
        for x, y in train:  # the user's own loop
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            sched.step()
        if grower.finished:
            continue
        step = grower.step(model, opt, growth)  # measure, plan, apply; opt is updated in place
        model = step.model
        for line in step.events:
            print(f" -> {line.get('params', dagrow.num_params(model.spec))}", end="")
            print(
                f"\nepoch {epoch}: {line['event']} {line.get('site')} ({line.get('reason') or 'grown'})",
                end="",
            )
        print(f", lr {sched.get_last_lr()[0]:.4g}", end="")
    print()
    with torch.no_grad():
        accuracy = float((model(task.test.x).argmax(1) == task.test.y).double().mean())
    grown = [a.describe() for a in grower.actions]
    print(f"actions: {', '.join(grown) or 'none'}")
    print(f"test accuracy: {accuracy:.4f}")
    dagrow.save(model, args.out / "model.safetensors", spec_yaml=True)
    print(f"wrote {args.out}/model.safetensors and spec.yaml")


if __name__ == "__main__":
    main()
