"""The activations of memgen's networks, each defined once (:data:`ACTIVATION_FUNCTIONS`):
relu, tanh and softplus with sharpness ``beta``, their derivatives, the normalizing
constant (:func:`activation_constant`) and :class:`Activation`, phi = c * act. Re-exported
by :mod:`memgen.models`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, NamedTuple

import numpy as np
import torch

from memgen import MemgenError, contracts

# softplus(u) = u for u = beta z > 30: log1p(exp(-30)) ~ 1e-13 is below float64 rounding of
# u, and exp(beta z) can no longer overflow (it does past beta z ~ 709 without a cutoff).
SOFTPLUS_THRESHOLD = 30.0

# ---------------------------------------------------------------- the activations, once
#
# value(z, beta, out=None) -> act(z); derivative(z, value, beta, out=None) -> act'(z), where
# ``value`` is act(z) (tanh's derivative is 1 - value^2). With ``out`` the result is written
# there (no allocation; out may be z itself for the derivative, after the value is taken);
# without, the ops are out-of-place and differentiable. ``beta`` is softplus's sharpness
# (ignored by relu and tanh).


def _relu(z: torch.Tensor, beta: float, out: torch.Tensor | None = None) -> torch.Tensor:
    return torch.clamp_min(z, 0, out=out)


def _relu_derivative(z, value, beta, out=None):
    return torch.gt(z, 0).to(z.dtype) if out is None else torch.gt(z, 0, out=out)


def _tanh(z, beta, out=None):
    return torch.tanh(z, out=out)


def _tanh_derivative(z, value, beta, out=None):
    return torch.mul(value, value, out=out).neg_().add_(1)  # 1 - tanh(z)^2


def _softplus(z, beta, out=None):  # log1p(exp(beta z)) / beta, z where beta z > SOFTPLUS_THRESHOLD
    op = torch.ops.aten.softplus
    return op(z, beta, SOFTPLUS_THRESHOLD) if out is None else op.out(z, beta, SOFTPLUS_THRESHOLD, out=out)


def _softplus_derivative(z, value, beta, out=None):  # sigmoid(beta z)
    return torch.sigmoid(z if beta == 1.0 else torch.mul(z, beta, out=out), out=out)


class ActivationFunction(NamedTuple):
    value: Callable
    derivative: Callable
    prescaled: bool  # the fast path evaluates it on u = beta z with beta 1 (softplus)


ACTIVATION_FUNCTIONS = {
    "relu": ActivationFunction(_relu, _relu_derivative, False),
    "tanh": ActivationFunction(_tanh, _tanh_derivative, False),
    "softplus": ActivationFunction(_softplus, _softplus_derivative, True),
}
ACTIVATIONS = tuple(ACTIVATION_FUNCTIONS)


def _function(name: str) -> ActivationFunction:
    if name not in ACTIVATION_FUNCTIONS:
        raise MemgenError(f"activation: unknown '{name}'; allowed: {', '.join(ACTIVATIONS)}")
    return ACTIVATION_FUNCTIONS[name]


@lru_cache(maxsize=None)
def activation_constant(name: str, beta: float = 5.0) -> float:
    """c such that E[(c * act(z))^2] = 1, z ~ N(0, 1) (Gauss-Hermite, 200 nodes; act
    evaluated by its torch definition in float64).
    Contract: name relu, tanh or softplus; beta finite > 0.
    """
    contracts.number("activation_constant", "beta", beta, lo=0, lo_open=True)
    nodes, weights = np.polynomial.hermite_e.hermegauss(200)
    phi = _function(name).value(torch.from_numpy(nodes), float(beta)).numpy()
    second_moment = float(np.sum(weights * phi**2) / np.sqrt(2 * np.pi))
    return 1.0 / math.sqrt(second_moment)


@dataclass(frozen=True)
class Activation:
    """phi(z) = c * act(z) and its derivative, on torch tensors; c = 1 unless ``normalize``
    (then E[phi(z)^2] = 1 for z ~ N(0, 1), :func:`activation_constant`).
    Contract: name relu, tanh or softplus; softplus: beta a finite number > 0.
    """

    name: str = "softplus"
    beta: float = 5.0
    normalize: bool = False

    def __post_init__(self):
        _function(self.name)
        if self.name == "softplus" and not (isinstance(self.beta, (int, float)) and 0 < self.beta < math.inf):
            raise MemgenError(f"activation.beta: must be a finite number > 0, got {self.beta}")

    @property
    def c(self) -> float:
        return activation_constant(self.name, self.beta) if self.normalize else 1.0

    @property
    def function(self) -> ActivationFunction:
        return ACTIVATION_FUNCTIONS[self.name]

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        """phi(z) alone (differentiable; the same numbers as ``value_and_derivative(z)[0]``)."""
        c = self.c
        value = self.function.value(z, self.beta)
        return value if c == 1.0 else value * c

    def value_and_derivative(self, z: torch.Tensor, consume: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(phi(z), phi'(z)); ``consume`` (outside autograd): phi'(z) is written over z."""
        if z.requires_grad and torch.is_grad_enabled():  # differentiable path
            c, fn = self.c, self.function
            value = fn.value(z, self.beta)
            deriv = fn.derivative(z, value, self.beta)
            return (value, deriv) if c == 1.0 else (value * c, deriv * c)
        return self.into(z, torch.empty_like(z), z if consume else torch.empty_like(z))

    def into(self, z: torch.Tensor, value: torch.Tensor, deriv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """phi(z) and phi'(z) written into ``value`` and ``deriv`` (no autograd, no
        allocation; ``deriv`` may be z). The same numbers as the differentiable path."""
        fn, c = self.function, self.c
        fn.value(z, self.beta, out=value)
        fn.derivative(z, value, self.beta, out=deriv)
        if c != 1.0:
            value.mul_(c)
            deriv.mul_(c)
        return value, deriv
