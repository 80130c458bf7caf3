"""The amplitude factor: apply a proposal as ``(W - gamma dW*, sqrt(gamma) alpha, sqrt(gamma) omega)``
and find ``gamma*`` minimising the real loss on a growth batch.

The line search (:func:`line_search`: a walk on a log grid of gamma, 2^-12 .. 2^6 by default, from
gamma = 1 to a bracket, then Brent's method; 10 to 15 evaluations) reads the loss from one shared
forward pass of the current model and the change the proposal makes to its targets' pre-activations
(:mod:`dagrow.growth.shared_forward`): no grown model is compiled to choose a site.
``Delta_l = L(0) - L(gamma*)``. :class:`GrownFamily` is the grown model itself as a function of
gamma (one architecture, the weights ``W0 + gamma (Wu - W0) + sqrt(gamma) (Wn - W0)``, where ``Wu``
applies only the best update and ``Wn`` only the new neurons), the reference the shortcut is tested
against.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..chunks import chunks_of, size_of, weighted_mean
from ..compile import DagModel, compile, spec_of
from ..rewrite import replay
from ..spec import GraphSpec
from ..stats import LossFn, loss_function
from .actions import proposal_actions
from .proposals import Proposal
from .shared_forward import SharedForward, proposal_outputs


@dataclass
class AmplitudeResult:
    """Outcome of the line search."""

    gamma: float
    loss_before: float
    loss_after: float
    evaluations: int
    predicted_decrease: float  # gamma* times the first-order improvement
    seconds: float

    @property
    def delta_l(self) -> float:
        return self.loss_before - self.loss_after


def line_search(
    f: Callable[[float], float],
    *,
    lo_exp: int = -12,
    hi_exp: int = 6,
    step: int = 2,
    rtol: float = 1e-2,
    f0: float | None = None,
) -> tuple[float, float, int]:
    """Minimise f on [0, 2^hi_exp]. On the grid 0, 2^lo_exp, 2^(lo_exp + step), ..., 2^hi_exp, walk
    from gamma = 1 (up while f falls, or down while it does not rise) to a grid point no worse than
    its neighbours, then refine in that bracket by Brent's method (scipy) to a relative tolerance of
    ``rtol`` (at the end of the grid, only when f rises into it). Returns (gamma*, f(gamma*),
    evaluations): about 10 to 15 when f is unimodal (the grid walk assumes it). ``f0`` is f(0) when
    already known. Non-finite values count as +inf; f is never evaluated twice at one gamma, and
    gamma* is the best point evaluated."""
    from scipy.optimize import minimize_scalar

    seen: dict[float, float] = {}
    calls = 0

    def value(g: float) -> float:
        nonlocal calls
        g = float(g)
        if g not in seen:
            v = f(g)
            calls += 1
            seen[g] = v if math.isfinite(v) else math.inf
        return seen[g]

    if f0 is not None:
        seen[0.0] = f0 if math.isfinite(f0) else math.inf

    grid = [0.0] + [2.0**k for k in range(lo_exp, hi_exp, step)] + [2.0**hi_exp]
    i = min(range(1, len(grid)), key=lambda j: abs(math.log2(grid[j])))  # the grid point nearest 1
    if value(grid[i]) < value(0.0):
        while i + 1 < len(grid) and value(grid[i + 1]) < value(grid[i]):
            i += 1
    else:
        while i > 0 and value(grid[i - 1]) <= value(grid[i]):
            i -= 1
    if i > 0 and math.isfinite(value(grid[i])):
        with np.errstate(invalid="ignore"):  # an infinite value makes a parabolic step NaN: Brent bisects
            if i == len(grid) - 1:  # the end of the grid: refine only when f rises into it
                if value(grid[i] * (1 - rtol)) < value(grid[i]):
                    minimize_scalar(
                        value,
                        bounds=(grid[i - 1], grid[i]),
                        method="bounded",
                        options={"xatol": rtol * grid[i]},
                    )
            elif value(grid[i - 1]) > value(grid[i]) < value(grid[i + 1]):  # strict, as Brent needs
                minimize_scalar(value, bracket=(grid[i - 1], grid[i], grid[i + 1]), method="brent", tol=rtol)
    best = min(seen, key=lambda g: (seen[g], g))  # ties: the smallest gamma (0 when nothing helps)
    return best, seen[best], calls


class GrownFamily:
    """The grown model of a proposal as a function of gamma (one architecture, weights interpolated).

    The weights are snapshot at construction; the replays and the compile happen on first use, so a
    strategy can hand every candidate's family around at no cost."""

    def __init__(self, model: nn.Module, proposal: Proposal, *, update: bool = True) -> None:
        self.base_spec = spec_of(model)
        self.base = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.proposal, self.update = proposal, update
        self.training = model.training  # the grown model takes the mode of the model (batch norms)
        self._model: DagModel | None = None
        # new neurons scale with sqrt(gamma) on both sides; a new edge is linear in gamma
        self.power = 1.0 if proposal.site.kind == "edge" else 0.5

    @cached_property
    def _grown(self) -> tuple[GraphSpec, dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
        spec, base, p, update = self.base_spec, self.base, self.proposal, self.update
        grown, w0 = replay(spec, base, proposal_actions(p, spec, 0.0, update=update))
        # without the update, W(gamma) does not depend on it: no replay needed for wu
        wu = replay(spec, base, proposal_actions(p, spec, 1.0, neuron_gamma=0.0))[1] if update else w0
        _, wn = replay(spec, base, proposal_actions(p, spec, 0.0, update=update, neuron_gamma=1.0))
        du = {k: wu[k] - w0[k] for k in w0}
        dn = {k: wn[k] - w0[k] for k in w0}
        return grown, w0, du, dn

    @property
    def spec(self) -> GraphSpec:
        """The grown architecture."""
        return self._grown[0]

    @property
    def w0(self) -> dict[str, Tensor]:
        return self._grown[1]

    @property
    def model(self) -> DagModel:
        """The grown architecture holding the gamma = 0 weights, compiled on first use."""
        if self._model is None:
            ref = next(iter(self.w0.values()))
            self._model = compile(self.spec, self.w0, dtype=ref.dtype, device=ref.device)
            self._model.train(self.training)
        return self._model

    def weights(self, gamma: float) -> dict[str, Tensor]:
        """``W0 + gamma dU + gamma^power dN`` (integer buffers, such as a batch norm's
        ``num_batches_tracked``, as they are)."""
        _, w0, du, dn = self._grown
        r = max(gamma, 0.0) ** self.power
        return {k: w0[k] + gamma * du[k] + r * dn[k] if w0[k].is_floating_point() else w0[k] for k in w0}

    def __call__(self, gamma: float, *inputs: Tensor):
        return functional_call(self.model, self.weights(gamma), inputs)

    def materialise(self, gamma: float) -> DagModel:
        ref = next(iter(self.w0.values()))
        # the dtype before the weights: compile() alone would round them through float32
        grown = compile(self.spec, self.weights(gamma), dtype=ref.dtype, device=ref.device)
        return grown.train(self.training)


def amplitude_factor(
    model: nn.Module,
    proposal: Proposal,
    batch,
    loss: str | LossFn = "mse",
    *,
    update: bool = True,
    forward: SharedForward | list[SharedForward] | None = None,
    lo_exp: int = -12,
    hi_exp: int = 6,
) -> tuple[AmplitudeResult, GrownFamily]:
    """gamma* for the proposal on ``batch = (inputs, target)`` (or :class:`~dagrow.chunks.Chunks` of
    them: the loss is then the mean over every chunk) and the grown family it belongs to.

    The loss at each gamma comes from one forward pass of ``model`` on the batch (``forward``, shared
    by the candidates of a decision, one per chunk; made here when not given) and the change the
    proposal makes to its targets' pre-activations (:mod:`dagrow.growth.shared_forward`)."""
    start = time.perf_counter()
    loss_fn = loss_function(loss)
    parts = chunks_of(batch)
    forwards = shared_forwards(model, batch) if forward is None else forward
    forwards = forwards if isinstance(forwards, list) else [forwards]
    if len(forwards) != len(parts):
        raise ValueError(f"{len(forwards)} shared forward passes for {len(parts)} chunks")
    outputs = [proposal_outputs(fw, proposal, update=update) for fw in forwards]
    sizes = [size_of(b) for b in parts]

    @torch.no_grad()
    def f(gamma: float) -> float:
        return weighted_mean(
            [float(loss_fn(o(gamma), y)) for o, (_, y) in zip(outputs, parts, strict=True)], sizes
        )

    with torch.no_grad():  # the model's own outputs, from the cache
        before = weighted_mean(
            [float(loss_fn(fw.outputs(), y)) for fw, (_, y) in zip(forwards, parts, strict=True)], sizes
        )
    gamma, after, evals = line_search(f, lo_exp=lo_exp, hi_exp=hi_exp, f0=before)
    if after > before:  # numerical noise at gamma = 0: keep the network as it is
        gamma, after = 0.0, before
    res = AmplitudeResult(
        gamma, before, after, evals, gamma * proposal.first_order_improvement, time.perf_counter() - start
    )
    return res, GrownFamily(model, proposal, update=update)


def shared_forwards(model: nn.Module, batch) -> list[SharedForward]:
    """One :class:`SharedForward` per chunk of ``batch`` (one for a plain (inputs, targets) pair)."""
    return [SharedForward(model, x) for x, _ in chunks_of(batch)]  # type: ignore[arg-type]
