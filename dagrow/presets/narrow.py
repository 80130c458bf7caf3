"""narrow: fewer than n neurons memorise n random labels (seed 004). Not a growth run: its runner
trains a hand-written one-hidden-layer net by full-batch (projected) gradient descent with
:func:`dagrow.training.train_steps`."""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..compare import Experiment, RunKey, TaskSource, make_row
from ..config import GrowthConfig
from ..training import train_steps
from .common import Rows, compare_claim, final, mean, seed_count, verdict
from .core import register_preset

NARROW_METHODS = ("pgd", "gd")
NARROW_INITS = ("mirrored", "lecun")


@dataclass(frozen=True)
class NarrowSettings:
    n: int = 500
    d: int = 50
    steps: int = 3000
    every: int = 100
    lr: float = 1.0
    eps: float = 5.0
    activation: str = "tanh"

    @property
    def width(self) -> int:
        return 2 * math.ceil(self.n / self.d)  # m >= 2n/d, even for the pairs


def narrow_data(s: NarrowSettings) -> tuple[Tensor, ...]:
    """n training points and n test points on the unit sphere of R^d with random +-1 labels."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2 * s.n, s.d, generator=g, dtype=torch.float64)
    x = x / x.norm(dim=1, keepdim=True)
    y = torch.randint(0, 2, (2 * s.n,), generator=g).double() * 2 - 1
    return x[: s.n], y[: s.n], x[s.n :], y[s.n :]


class NarrowNet(nn.Module):
    """A one-hidden-layer net of width m on ``[n, d]`` inputs, output ``[n]`` (float64).

    ``mirrored``: mirrored LeCun initialisation (w_{j+m/2} = w_j) and the pairwise output layer
    f(x) = sum_j v_j (sigma(w_j x) - sigma(w_{j+m/2} x)), so f = 0 at initialisation (v has m/2
    entries); ``lecun``: plain LeCun initialisation and f(x) = sum_j v_j sigma(w_j x).
    """

    def __init__(self, s: NarrowSettings, init: str, seed: int) -> None:
        super().__init__()
        m = s.width
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(m, s.d, generator=g, dtype=torch.float64) / math.sqrt(s.d)
        if init == "mirrored":
            w[m // 2 :] = w[: m // 2]
            v = torch.randn(m // 2, generator=g, dtype=torch.float64) / math.sqrt(m)
        else:
            v = torch.randn(m, generator=g, dtype=torch.float64) / math.sqrt(m)
        self.w, self.v = nn.Parameter(w), nn.Parameter(v)
        self.pairwise = init == "mirrored"
        self.act = getattr(torch, s.activation)

    def forward(self, x: Tensor) -> Tensor:
        h = self.act(x @ self.w.T)
        half = self.w.shape[0] // 2
        return (h[:, :half] - h[:, half:]) @ self.v if self.pairwise else h @ self.v


class ProjectedSGD(torch.optim.SGD):
    """Plain gradient descent (no momentum) on ``[w, v]`` that projects ``w`` back onto the ball
    ||w - w0||_F <= eps after every step (``v`` is free)."""

    def __init__(self, w: nn.Parameter, v: nn.Parameter, lr: float, eps: float) -> None:
        super().__init__([w, v], lr=lr)
        self.w, self.w0, self.eps = w, w.detach().clone(), eps

    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        loss = super().step(closure)
        with torch.no_grad():
            delta = self.w - self.w0
            norm = float(delta.norm())
            if norm > self.eps:
                self.w.copy_(self.w0 + delta * (self.eps / norm))
        return loss


def half_mse(out: Tensor, y: Tensor) -> Tensor:
    """1/2 mean (y - f)^2."""
    return 0.5 * (out - y).square().mean()


def narrow_run(exp: Experiment, key: RunKey) -> Rows:
    """Full-batch gradient descent on 1/2 mean (y - f)^2 for :class:`NarrowNet` (``key.init``):
    ``pgd`` (:class:`ProjectedSGD`) projects w onto ||w - w0||_F <= eps after every step, ``gd``
    (``torch.optim.SGD``) does not. A row every ``every`` steps. (SGD's update ``w.add_(g, alpha=-lr)``
    may round once where ``w -= lr * g`` rounds twice; at the presets' lr = 1 both give the same bits.)"""
    s: NarrowSettings = exp.settings
    started = time.perf_counter()
    x, y, xt, yt = narrow_data(s)
    net = NarrowNet(s, key.init, key.seed)
    w0 = net.w.detach().clone()
    opt = (
        ProjectedSGD(net.w, net.v, s.lr, s.eps)
        if key.strategy == "pgd"
        else torch.optim.SGD(net.parameters(), lr=s.lr)
    )

    def row(step: int) -> dict[str, Any]:
        with torch.no_grad():
            out, out_t = net(x), net(xt)
            scores = {
                "train_loss": float(half_mse(out, y)),
                "train_metric": float((out.sign() == y).double().mean()),
                "test_loss": float(half_mse(out_t, yt)),
                "test_metric": float((out_t.sign() == yt).double().mean()),
            }
            distance = float((net.w - w0).norm())
        return make_row(
            key,
            "accuracy",
            started,
            growth=0,
            step=step,
            event="start" if step == 0 else "end" if step == s.steps else "train",
            parameters=sum(p.numel() for p in net.parameters()),
            site=f"||w - w0|| = {distance:.3g}",
            val_loss=scores["train_loss"],
            val_metric=scores["train_metric"],
            **scores,
        )

    rows = [row(0)]
    batches = itertools.repeat((x, y))  # full batch
    for done in range(0, s.steps, s.every):
        steps = min(s.every, s.steps - done)
        train_steps(net, opt, batches, half_mse, steps)
        if (done + steps) % s.every == 0:
            rows.append(row(done + steps))
    return rows


@register_preset(
    "narrow",
    "Fewer than n neurons: a one-hidden-layer tanh net of width m = 2n/d (m < n) memorises "
    "n random +-1 labels with mirrored LeCun initialisation, the pairwise output layer and "
    "projected gradient descent (||w - w0|| <= eps); ablations: no constraint, plain init. "
    "The 'val' columns repeat the training set (what is memorised); test is chance by design.",
    "seed 004 (NeurIPS 2021 slides), Theorems 1-2 and the ablation on synthetic data.",
)
def build(quick: bool) -> Experiment:
    settings = NarrowSettings(n=60, d=10, steps=600, every=50, eps=2.0) if quick else NarrowSettings()
    return Experiment(
        "narrow",
        None,
        TaskSource(name="narrow (random labels)"),
        GrowthConfig(growths=0, every=settings.every),
        ["pgd", "gd"],
        list(NARROW_INITS),
        seeds=seed_count(quick),
        runner=narrow_run,
        strategy_choices=NARROW_METHODS,
        init_choices=NARROW_INITS,
        metric_name="accuracy",
        claims=claims,
        plot_split="train",
        settings=settings,
    )


def claims(rows: Rows) -> list[str]:
    starts = [r for r in rows if r["event"] == "start" and r["init"] == "mirrored"]
    zero = all(abs(float(r["train_loss"]) - 0.5) < 1e-12 for r in starts)  # f = 0 and y = +-1: loss 1/2
    pgd = final(rows, "train_metric", strategy="pgd", init="mirrored")
    gd = final(rows, "train_metric", strategy="gd", init="mirrored")
    lines = [
        f"mirrored initialisation outputs 0 (start loss 1/2): {verdict(bool(starts) and zero)}",
        f"mirrored init + pairwise output + PGD memorises the random labels: "
        f"{verdict(bool(pgd) and mean(pgd) >= 0.99)} (train accuracy {mean(pgd):.4g})",
        f"unconstrained GD fails to memorise with this narrow width: "
        f"{verdict(bool(gd) and mean(gd) < 0.99)} (train accuracy {mean(gd):.4g})",
    ]
    for method, init in (("gd", "mirrored"), ("pgd", "lecun")):
        other = final(rows, "train_loss", strategy=method, init=init)
        if other:
            lines.append(
                compare_claim(
                    f"PGD + mirrored ends below {method} + {init} in training loss",
                    final(rows, "train_loss", strategy="pgd", init="mirrored"),
                    other,
                    lower=True,
                    what="train loss",
                )
            )
    return lines
