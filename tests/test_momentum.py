"""SGD's momentum (GrowthConfig.momentum): 0 is plain gradient descent, the default 0.9 is unchanged,
and the setting reaches the optimizer of a run and the `grow` command."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from typer.testing import CliRunner

import dagrow
from dagrow.cli import app
from dagrow.config import GrowthConfig
from dagrow.loop import Run
from dagrow.training import make_optimizer, train_steps

ROOT = Path(__file__).resolve().parents[1]
MLP = ROOT / "specs" / "mlp_sin50.yaml"  # 50 -> 4 -> 4 -> 10
MOONS = """
version: 1
inputs:
  x: {shape: [2]}
nodes:
  h: {width: 5, activation: tanh}
  out: {width: 2}
edges:
  - {from: x, to: h}
  - {from: h, to: out}
  - {from: x, to: out}
outputs: [out]
"""


def _two_steps(momentum: float | None):
    """A run's optimizer after two SGD steps on fixed batches, with the weights and gradients by hand."""
    extra = {} if momentum is None else {"momentum": momentum}
    config = GrowthConfig(optimizer="sgd", lr=0.1, dtype="float64", seed=3, **extra)
    task = dagrow.make_task("moons", seed=0)
    run = Run.start(dagrow.load_spec(MOONS), task, config, directory=None)
    model = run.grower.model
    gen = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(16, 2, generator=gen, dtype=torch.float64), torch.randint(0, 2, (16,), generator=gen))
        for _ in range(2)
    ]
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = []
    for x, y in batches:  # record the gradient at each step's weights, then take the optimizer's step
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        grads.append({n: p.grad.detach().clone() for n, p in model.named_parameters()})
        train_steps(model, run.opt, iter([(x, y)]), task.loss, 1)
    return run, w0, grads, {n: p.detach().clone() for n, p in model.named_parameters()}


def test_momentum_zero_is_plain_gradient_descent():
    run, w0, (g1, g2), w2 = _two_steps(0.0)
    assert isinstance(run.opt, torch.optim.SGD) and run.opt.param_groups[0]["momentum"] == 0.0
    for n in w0:  # w2 = w0 - lr g1 - lr g2
        torch.testing.assert_close(w2[n], w0[n] - 0.1 * g1[n] - 0.1 * g2[n], rtol=0, atol=1e-14)


def test_default_momentum_is_the_former_0_9():
    assert GrowthConfig().momentum == 0.9
    run, w0, (g1, g2), w2 = _two_steps(None)
    assert run.opt.param_groups[0]["momentum"] == 0.9
    for n in w0:  # heavy ball: b1 = g1, b2 = 0.9 g1 + g2
        expected = w0[n] - 0.1 * g1[n] - 0.1 * (0.9 * g1[n] + g2[n])
        torch.testing.assert_close(w2[n], expected, rtol=0, atol=1e-14)
    assert make_optimizer([torch.zeros(1, requires_grad=True)], "sgd", 0.1).param_groups[0]["momentum"] == 0.9


@pytest.mark.parametrize("bad", [1.0, -0.1, math.nan, math.inf])
def test_momentum_outside_0_1_is_refused(bad):
    with pytest.raises(ValidationError, match="momentum"):
        GrowthConfig(momentum=bad)


def test_grow_command_takes_momentum(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((100, 50)).astype(np.float32)
    data = tmp_path / "train.npz"
    np.savez(data, x=x, y=np.abs(x[:, :10]).argmax(1).astype(np.int64))
    args = ["grow", str(MLP), "--data", str(data), "--growths", "0", "--every", "2", "--batch-size", "16"]
    args += ["--optimizer", "sgd", "--momentum", "0", "-q"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "run" / "history.jsonl").read_text()
    configs = [json.loads(line).get("config", {}) for line in text.splitlines()]
    assert any(c.get("momentum") == 0.0 for c in configs), text[:500]
    bad = CliRunner().invoke(app, [*args[:-3], "--momentum", "1", "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 1 and "momentum" in bad.output
