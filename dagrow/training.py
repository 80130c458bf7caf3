"""The built-in training loop: a resumable stream of minibatches, the optimizers of ``dagrow grow``,
training steps (SGD, Adam, or the seeds' best update) and evaluation on a split.

Everything here is state that a checkpoint can save and restore exactly: :class:`BatchStream` knows
its epoch and its position in it, and the optimizers are plain ``torch.optim`` optimizers.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from .compile import DagModel
from .graph import analyze
from .growth.actions import update_action
from .growth.amplitude import line_search
from .growth.proposals import ProposalSettings, target_update
from .recorder import Recorder
from .stats import LossFn, loss_function, measure
from .tasks import Task

Batch = tuple[Tensor, Tensor]


def usable_device(name: str | torch.device) -> torch.device:
    """``name`` as a torch.device, or a ``ValueError`` saying why it cannot be used here."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"unknown device {str(name)!r}; expected cpu, cuda, cuda:N, mps, ...") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(name)!r} is not available: this torch has no usable CUDA device")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {str(name)!r} is not available: {torch.cuda.device_count()} CUDA device(s) here"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {str(name)!r} is not available here")
    return device


class BatchStream:
    """Endless shuffled minibatches of a task's training split: epoch ``e`` is the permutation drawn
    from ``seed * 100_003 + e``. ``state_dict()`` is (epoch, batches taken in it), so a stream restored
    from it yields exactly the batches the original would have yielded next."""

    def __init__(
        self,
        task: Task,
        batch_size: int,
        seed: int,
        device: torch.device | str,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.task, self.batch_size, self.seed, self.device = task, batch_size, seed, device
        self.dtype = dtype  # of the inputs (and of regression targets); None keeps the task's
        self.epoch, self.position = 0, 0
        self._it: Iterator[Batch] | None = None

    def _open(self) -> Iterator[Batch]:
        seed = self.seed * 100_003 + self.epoch
        it = self.task.batches(
            "train", self.batch_size, shuffle=True, seed=seed, device=self.device, dtype=self.dtype
        )
        for _ in range(self.position):
            next(it)
        return it

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> Batch:
        while True:
            if self._it is None:
                self._it = self._open()
            try:
                batch = next(self._it)
            except StopIteration:
                self.epoch, self.position, self._it = self.epoch + 1, 0, None
                continue
            self.position += 1
            return batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position, self._it = int(state["epoch"]), int(state["position"]), None


def make_optimizer(params, optimizer: str, lr: float, momentum: float = 0.9) -> torch.optim.Optimizer | None:
    """``adam``, ``sgd`` (with ``momentum``, 0.9 by default; 0 is plain SGD) over ``params`` (tensors, or
    param groups as dicts), or None for ``best_update`` (no optimizer)."""
    params = list(params)
    if not (params and isinstance(params[0], dict)):
        params = [p for p in params if p.requires_grad]
    if optimizer == "adam":
        return torch.optim.Adam(params, lr=lr)
    if optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum)
    if optimizer == "best_update":
        return None
    raise ValueError(f"unknown optimizer {optimizer!r}; expected adam, sgd or best_update")


@torch.no_grad()
def evaluate(model: nn.Module, task: Task, split: str, device) -> tuple[float, float]:
    """(loss, metric) of the model on a whole split, in eval mode."""
    loss_fn = loss_function(task.loss)
    x, y = next(task.batches(split, None, device=device, dtype=floating_dtype(model)))
    was_training = model.training
    model.eval()  # batch norms use their running statistics (nothing else depends on the mode)
    try:
        out = model(x)
    finally:
        model.train(was_training)
    return float(loss_fn(out, y)), float(task.metric(out, y))


def floating_dtype(model: nn.Module) -> torch.dtype | None:
    """The dtype of the model's first floating parameter (what its inputs are converted to)."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), None)


def best_update_step(model: DagModel, batch: Batch, loss: str | LossFn) -> DagModel:
    """The seeds' training phase: for each node in order, dW* with its own amplitude factor."""
    loss_fn = loss_function(loss)
    x, y = batch
    settings = ProposalSettings()
    for v in analyze(model.spec).hidden_and_outputs:
        stats = measure(model, [batch], loss, sites=[], output_factors=False)
        if v not in stats.g_sq_sums:
            continue
        action = update_action({v: target_update(stats, model.spec, v, settings)}, model.spec)
        if action is None:
            continue
        base = {k: t.detach() for k, t in model.state_dict().items()}
        deltas = {k: d.to(base[k]) for k, d in action.deltas.items()}

        def f(g: float, base=base, deltas=deltas) -> float:
            w = {k: (t - g * deltas[k]) if k in deltas else t for k, t in base.items()}
            with torch.no_grad():
                return float(loss_fn(functional_call(model, w, (x,)), y))

        gamma, _, _ = line_search(f)
        if gamma > 0:
            with torch.no_grad():
                for k, d in deltas.items():
                    model.get_parameter(k).sub_(gamma * d)
    return model


class TrainingDiverged(ValueError):
    """The training loss became non-finite or exploded (:class:`DivergenceGuard`); the message says at
    which step and what to try."""


@dataclass
class DivergenceGuard:
    """The divergence rule: training stops when a step's loss is NaN or infinite, or exceeds
    ``factor * max(reference, 1)`` where ``reference`` is the loss of the first step it saw (the first
    step of the run). A healthy run's loss does not rise a million-fold above both its first value and
    1; a learning rate that is far too large does within a few steps (``--lr 1e6`` on sin50: 4e17)."""

    factor: float = 1e6
    reference: float | None = None

    def check(self, value: float, step: int, opt: torch.optim.Optimizer | None) -> None:
        if self.reference is None and math.isfinite(value):
            self.reference = value
        limit = self.factor * max(self.reference or 0.0, 1.0)
        if math.isfinite(value) and value <= limit:
            return
        what = (
            f"the training loss is {value}"
            if not math.isfinite(value)
            else f"the training loss {value:.3g} is more than {self.factor:.0e} times the first step's "
            f"({self.reference:.3g})"
        )
        if opt is None:
            hint = "the best update step diverged; try --optimizer adam or sgd"
        else:
            lr = opt.param_groups[0].get("lr")
            hint = f"try a smaller learning rate (--lr; this run's is {lr:g})"
        raise TrainingDiverged(f"training diverged at step {step}: {what}; {hint}")


def train_steps(
    model: nn.Module,
    opt: torch.optim.Optimizer | None,
    batches: Iterator[Batch],
    loss: str | LossFn,
    steps: int,
    *,
    recorder: Recorder | None = None,
    seen: list[Batch] | None = None,
    guard: DivergenceGuard | None = None,
    first_step: int = 1,
) -> float:
    """``steps`` optimizer steps on the next ``batches`` (the seeds' best update when ``opt`` is None);
    returns the mean training loss. With an entered ``recorder`` each step's backward also adds its
    batch to the statistics; ``seen`` collects the batches. With an optimizer ``model`` may be any
    module (the narrow preset trains its own net here); the best update needs a :class:`DagModel`.

    Every step's loss goes through ``guard`` (a fresh :class:`DivergenceGuard` when None), which raises
    :class:`TrainingDiverged` naming the step (counted from ``first_step``) before a diverged step's
    weights can be used further."""
    loss_fn = loss_function(loss)
    guard = guard if guard is not None else DivergenceGuard()
    total = 0.0
    for i in range(steps):
        x, y = next(batches)
        if seen is not None:
            seen.append((x, y))
        if opt is None:
            if not isinstance(model, DagModel):
                raise TypeError(f"the best update (opt=None) needs a DagModel, got {type(model).__name__}")
            best_update_step(model, (x, y), loss)
            with torch.no_grad():
                number = float(loss_fn(model(x), y))
            guard.check(number, first_step + i, opt)
        else:
            opt.zero_grad(set_to_none=True)
            value = loss_fn(model(x), y)
            number = float(value.detach())
            guard.check(number, first_step + i, opt)  # before the step: a diverged loss moves no weight
            recorder.backward(value) if recorder is not None else value.backward()
            opt.step()
        total += number
    return total / max(steps, 1)


def concat(batches: list[Batch]) -> Batch:
    """One batch of every sample of ``batches``."""
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


def rng_state() -> dict[str, Any]:
    """The global random states of python, numpy and torch (JSON plus one tensor)."""
    import random

    import numpy as np

    kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)  # type: ignore[misc]
    version, internal, gauss_py = random.getstate()
    return {
        "python": [version, list(internal), gauss_py],
        "numpy": [kind, np.asarray(keys).tolist(), int(pos), int(has_gauss), float(gauss)],
        "torch": torch.get_rng_state(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    import random

    import numpy as np

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, gauss_np = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss_np))
    torch.set_rng_state(state["torch"])
