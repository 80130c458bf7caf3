"""The registry of node activations: what a node applies to its pre-activation ``a`` to give its
post-activation ``b = sigma(a)``. Each entry is a pydantic model of the spec language (``activation:
NAME`` or ``{name: NAME, ...}``) that builds its ``nn.Module``; :func:`slope_at_zero`,
:func:`value_at_zero` and :func:`one_sided_slopes` give what the growth formulas need of it.

An activation with a kink at 0 (relu, relu_grad1, leaky_relu, prelu, selu) declares its one-sided slopes
there (``one_sided``): new neurons enter at amplitude ``sqrt(gamma)`` on both sides, so what they add
to their targets is ``sqrt(gamma) omega sigma(sqrt(gamma) z)``, whose first-order term in gamma is
``omega D(z)`` with the one-sided directional derivative ``D(z) = d/dt sigma(t z)|_{t=0+} =
sigma'(0+) z`` for z > 0 and ``sigma'(0-) z`` for z < 0 (:func:`directional_derivative`). For a smooth
activation both slopes are sigma'(0) and ``D(z) = sigma'(0) z``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import nn

from .ops import Coefficient, SpecModel

OneSided = Callable[[nn.Module], tuple[float, float]]


@dataclass(frozen=True)
class ActivationInfo:
    """An activation: its pydantic model, a one-line summary, its module builder and, for an
    activation with a kink at 0, its one-sided slopes there ``(sigma'(0-), sigma'(0+))`` as a function
    of the built module (a learnable slope is read from it); None for a smooth activation."""

    name: str
    model: type[SpecModel]
    summary: str
    build: Callable[[SpecModel], nn.Module]
    one_sided: OneSided | None = None


ACTIVATIONS: dict[str, ActivationInfo] = {}


def register_activation(name: str, summary: str, one_sided: OneSided | None = None):
    def deco(model: type[SpecModel]) -> type[SpecModel]:
        ACTIVATIONS[name] = ActivationInfo(name, model, summary, lambda a: a.build(), one_sided)  # type: ignore[attr-defined]
        return model

    return deco


def list_activations() -> list[str]:
    return list(ACTIVATIONS)


def activation_info(name: str) -> ActivationInfo:
    return ACTIVATIONS[name]


def _simple_activation(
    name: str, summary: str, factory: Callable[[], nn.Module], one_sided: OneSided | None = None
) -> type[SpecModel]:
    model = type(
        f"{''.join(p.title() for p in name.split('_'))}Activation",
        (SpecModel,),
        {
            "__annotations__": {"name": Literal[name]},  # type: ignore[valid-type]
            "name": name,
            "build": lambda self: factory(),
            "__doc__": summary,
        },
    )
    return register_activation(name, summary, one_sided)(model)


class _ReluGrad1Fn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (x >= 0).to(grad.dtype)


class ReluGrad1(nn.Module):
    """ReLU whose derivative at 0 is 1 (as in the GradMax code), so zero fan-in neurons can learn."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _ReluGrad1Fn.apply(x)


class Rational(nn.Module):
    """SENN's rational activation ``(2 v x + c) / (1 + x^2) + l x``; identity at v = c = 0, l = 1."""

    def __init__(self, v: float = 0.0, c: float = 0.0, l: float = 1.0) -> None:
        super().__init__()
        self.v = nn.Parameter(torch.tensor(float(v)))
        self.c = nn.Parameter(torch.tensor(float(c)))
        self.l = nn.Parameter(torch.tensor(float(l)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (2 * self.v * x + self.c) / (1 + x * x) + self.l * x


IdentityActivation = _simple_activation("identity", "sigma(a) = a", nn.Identity)
ReluActivation = _simple_activation(
    "relu", "max(a, 0) (PyTorch's gradient 0 at 0)", nn.ReLU, lambda m: (0.0, 1.0)
)
ReluGrad1Activation = _simple_activation(
    "relu_grad1",
    "max(a, 0) with derivative 1 at 0 (GradMax: zero fan-in neurons still learn)",
    ReluGrad1,
    lambda m: (0.0, 1.0),  # the function is relu's; only autograd's value at 0 differs
)
TanhActivation = _simple_activation("tanh", "tanh(a)", nn.Tanh)
SigmoidActivation = _simple_activation("sigmoid", "1 / (1 + exp(-a))", nn.Sigmoid)
GeluActivation = _simple_activation("gelu", "a Phi(a) (exact erf form)", nn.GELU)
_SELU_ALPHA, _SELU_SCALE = 1.6732632423543772, 1.0507009873554805
SeluActivation = _simple_activation(
    "selu", "scaled ELU (Klambauer et al.)", nn.SELU, lambda m: (_SELU_SCALE * _SELU_ALPHA, _SELU_SCALE)
)


@register_activation(
    "leaky_relu",
    "max(a, 0) + negative_slope min(a, 0)",
    lambda m: (float(m.negative_slope), 1.0),  # type: ignore[arg-type]
)
class LeakyReluActivation(SpecModel):
    name: Literal["leaky_relu"] = "leaky_relu"
    negative_slope: Coefficient = 0.01

    def build(self) -> nn.Module:
        return nn.LeakyReLU(self.negative_slope)


@register_activation("softplus", "log(1 + exp(beta a)) / beta")
class SoftplusActivation(SpecModel):
    name: Literal["softplus"] = "softplus"
    beta: Annotated[Coefficient, Field(ge=1e-3)] = 1.0

    def build(self) -> nn.Module:
        return nn.Softplus(beta=self.beta)


def _prelu_slopes(m: nn.Module) -> tuple[float, float]:
    w = m.weight.detach()  # type: ignore[union-attr, operator]
    if w.numel() != 1:
        raise ValueError("one-sided slopes of a prelu with one slope per channel are not defined")
    return float(w), 1.0


@register_activation("prelu", "max(a, 0) + w min(a, 0), learnable slope w (init 1 = identity)", _prelu_slopes)
class PreluActivation(SpecModel):
    name: Literal["prelu"] = "prelu"
    init: Coefficient = 0.25

    def build(self) -> nn.Module:
        return nn.PReLU(num_parameters=1, init=self.init)


@register_activation("rational", "SENN: (2 v a + c)/(1 + a^2) + l a, learnable v, c, l (identity at 0, 0, 1)")
class RationalActivation(SpecModel):
    name: Literal["rational"] = "rational"
    v: Coefficient = 0.0
    c: Coefficient = 0.0
    l: Coefficient = 1.0

    def build(self) -> nn.Module:
        return Rational(self.v, self.c, self.l)


def slope_at_zero(activation: SpecModel) -> float:
    """sigma'(0) of an activation as autograd computes it (ReLU gives 0, relu_grad1 gives 1)."""
    module = activation.build().to(torch.float64)  # type: ignore[attr-defined]
    x = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(module(x).sum(), x)
    return float(g)


def value_at_zero(activation: SpecModel) -> float:
    """sigma(0) of an activation."""
    module = activation.build().to(torch.float64)  # type: ignore[attr-defined]
    with torch.no_grad():
        return float(module(torch.zeros(1, dtype=torch.float64)))


def one_sided_slopes(activation: SpecModel, module: nn.Module | None = None) -> tuple[float, float]:
    """``(sigma'(0-), sigma'(0+))``: the registry's one-sided slopes for an activation with a kink at
    0, ``(sigma'(0), sigma'(0))`` by autograd for a smooth one. ``module``: the built activation with
    its learnable parameters as trained (default: built from the spec)."""
    info = ACTIVATIONS[activation.name]  # type: ignore[attr-defined]
    module = module if module is not None else activation.build()  # type: ignore[attr-defined]
    if info.one_sided is not None:
        return info.one_sided(module)
    module = copy.deepcopy(module).to(torch.float64)
    x = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(module(x).sum(), x)
    return float(g), float(g)


def directional_derivative(z: torch.Tensor, slopes: tuple[float, float]) -> torch.Tensor:
    """``d/dt sigma(t z)`` at ``t = 0+`` elementwise: ``sigma'(0+) z`` where z > 0, ``sigma'(0-) z``
    where z < 0, for ``slopes = (sigma'(0-), sigma'(0+))``."""
    left, right = slopes
    if left == right:
        return right * z
    return right * z.clamp_min(0) + left * z.clamp_max(0)
