"""The user's optimizer across a rewrite, updated in place.

After a growth the model is recompiled from the new spec. :func:`adopt_parameters` then makes the new
model and the user's optimizer agree, without building a new optimizer (so LR schedulers, GradScaler
and references held elsewhere stay valid):

- a parameter whose name and shape are unchanged keeps its ``nn.Parameter`` object (its values are
  copied in): its optimizer state is untouched;
- a grown parameter (same name, larger along some dimensions; the old entries are its leading slice,
  as every dagrow rewrite grows) gets a new ``nn.Parameter`` in the same param group; each state
  tensor shaped like the parameter is grown with zeros for the new entries, scalars are kept;
- a new parameter (a new node or edge) joins a param group chosen by ``group_of`` (default: the first
  group that holds the model's parameters), with no state (the optimizer starts it as on step 0);
- a removed parameter leaves its group and its state is dropped.

Supported: any ``torch.optim`` optimizer whose per-parameter state is tensors shaped like the parameter,
scalars (0-d tensors or numbers) or None: SGD (with or without momentum), Adam, AdamW, Adamax, NAdam,
RAdam, Adagrad, RMSprop, Rprop, ASGD, Adadelta. Others (LBFGS, whose state is not per parameter;
Adafactor, whose factored state is not shaped like the parameter) are refused before any rewrite by
:func:`check_optimizer`, with the name of the state that does not fit.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn


class OptimizerError(ValueError):
    """An optimizer whose state dagrow cannot carry across a rewrite."""


def check_optimizer(opt: torch.optim.Optimizer | None, model: nn.Module) -> None:
    """Refuse, before any rewrite, an optimizer whose state cannot be grown with the parameters."""
    if opt is None:
        return
    if isinstance(opt, torch.optim.LBFGS):
        raise OptimizerError("LBFGS keeps one history for all parameters: it cannot follow a growth")
    if type(opt).__name__ == "Adafactor":  # torch >= 2.5; its factored state is not shaped like a parameter
        raise OptimizerError("Adafactor keeps factored row and column statistics: dagrow cannot grow them")
    params = {id(p): name for name, p in model.named_parameters()}
    for p, state in opt.state.items():
        if not isinstance(p, Tensor) or id(p) not in params:
            continue
        for key, value in state.items():
            ok = value is None or isinstance(value, int | float | bool)
            ok = ok or (isinstance(value, Tensor) and (value.dim() == 0 or value.shape == p.shape))
            if not ok:
                shape = list(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise OptimizerError(
                    f"{type(opt).__name__}: state {key!r} of {params[id(p)]} is {shape}, not shaped like "
                    f"the parameter {list(p.shape)} nor a scalar: dagrow cannot grow it"
                )


def _grown(value: Tensor, new: Tensor) -> Tensor:
    out = torch.zeros_like(new, dtype=value.dtype)
    out[tuple(slice(0, s) for s in value.shape)] = value
    return out


def _is_leading_slice(old: Tensor, new: Tensor) -> bool:
    return old.dim() == new.dim() and all(a <= b for a, b in zip(old.shape, new.shape, strict=True))


def adopt_parameters(
    old_model: nn.Module,
    new_model: nn.Module,
    opt: torch.optim.Optimizer | None,
    *,
    group_of: Callable[[str], int] | None = None,
) -> None:
    """Make ``new_model`` reuse the unchanged parameters of ``old_model`` and update ``opt`` in place
    (module docstring). ``group_of(name)`` picks the param group of a new parameter."""
    old = dict(old_model.named_parameters())
    kept: dict[int, nn.Parameter | Tensor] = {}  # id(old param) -> the parameter that replaces it
    for name, p in list(new_model.named_parameters()):
        q = old.get(name)
        if q is None:
            continue
        if q.shape == p.shape and q.dtype == p.dtype and q.device == p.device:
            with torch.no_grad():
                q.copy_(p)
            module_name, _, leaf = name.rpartition(".")
            setattr(new_model.get_submodule(module_name), leaf, q)
            kept[id(q)] = q
        else:
            kept[id(q)] = p
    if opt is None:
        return
    names = {id(p): n for n, p in old.items()}
    first_group: int | None = None
    for index, group in enumerate(opt.param_groups):
        params = []
        for q in group["params"]:
            if id(q) not in names:
                params.append(q)  # not a parameter of the model: the user's business
                continue
            first_group = index if first_group is None else first_group
            replacement = kept.get(id(q))
            state = opt.state.pop(q, None)
            if replacement is None:
                continue  # removed by the rewrite: its state goes too
            params.append(replacement)
            if state is None:
                continue
            if replacement is q:
                opt.state[q] = state
            elif _is_leading_slice(q, replacement):
                opt.state[replacement] = {
                    k: _grown(v, replacement)
                    if isinstance(v, Tensor) and v.dim() > 0 and v.shape == q.shape
                    else v
                    for k, v in state.items()
                }
            # else: a parameter that changed shape another way starts afresh
        group["params"] = params
    fresh = [(n, p) for n, p in new_model.named_parameters() if n not in old and p.requires_grad]
    for name, p in fresh:
        index = group_of(name) if group_of is not None else (first_group or 0)
        opt.param_groups[index]["params"].append(p)
