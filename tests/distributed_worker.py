"""One rank of tests/test_distributed.py's collective checks (started with torchrun's environment)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

import dagrow
from dagrow.distributed import Ranks, close, init


def main(out: Path) -> None:
    ranks: Ranks = init(timeout=30)
    torch.manual_seed(0)
    model = dagrow.compile(
        dagrow.load_spec(Path(__file__).parents[1] / "specs" / "dag_skip.yaml"), dtype=torch.float64
    )
    width = model.spec.inputs[next(iter(model.spec.inputs))].shape[0]
    x, y = torch.randn(37, width, dtype=torch.float64), None
    with torch.no_grad():
        y = model(x) + 0.1 * torch.randn_like(model(x))
    whole = dagrow.measure(model, [(x, y)], "mse")
    mine = dagrow.measure(model, [ranks.shard((x, y))], "mse")
    both = ranks.all_reduce(mine)
    assert both.n == whole.n == 37
    for a, b in (
        (whole.pair_sums, both.pair_sums),
        (whole.grad_sums, both.grad_sums),
        (whole.g_sums, both.g_sums),
    ):
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-12, atol=1e-12)
    assert abs(both.loss - whole.loss) < 1e-12
    loss = ranks.global_loss("mse")
    sx, sy = ranks.shard((x, y))
    with torch.no_grad():
        assert abs(float(loss(model(sx), sy)) - float(torch.nn.functional.mse_loss(model(x), y))) < 1e-12
    if ranks.rank == 0:
        (out / "ok").write_text("ok")
    close()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
