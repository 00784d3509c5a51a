"""Margin losses l(z) of z = F(x) * y (y in {-1, +1}) and their derivatives l'(z).

- ``soft_hinge`` (beta): l(z) = softplus(beta (1 - z)) / beta, l'(z) = -sigmoid(beta (1 - z))
- ``hinge``: l(z) = max(0, 1 - z), l'(z) = -1[z < 1]
- ``mse``: l(z) = (1 - z)^2 / 2 (= (F - y)^2 / 2 for y = +-1), l'(z) = z - 1
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from memgen import MemgenError

LOSSES = ("soft_hinge", "hinge", "mse")


@dataclass(frozen=True)
class Loss:
    """A margin loss by name (one of :data:`LOSSES`; soft_hinge: ``beta`` finite > 0,
    checked on construction). value/derivative take z unchecked (the training loop's).
    Contract: name one of LOSSES; soft_hinge: beta a finite number > 0.
    """

    name: str = "soft_hinge"
    beta: float = 20.0

    def __post_init__(self):
        if self.name not in LOSSES:
            raise MemgenError(f"loss.name: unknown '{self.name}'; allowed: {', '.join(LOSSES)}")
        if self.name == "soft_hinge" and not (isinstance(self.beta, (int, float)) and 0 < self.beta < float("inf")):
            raise MemgenError(f"loss.beta: must be a finite number > 0, got {self.beta}")

    def value(self, z: torch.Tensor) -> torch.Tensor:
        if self.name == "soft_hinge":
            u = self.beta * (1 - z)  # stable softplus(u) = max(u, 0) + log1p(exp(-|u|))
            return (u.clamp_min(0) + torch.log1p(torch.exp(-u.abs()))) / self.beta
        if self.name == "hinge":
            return (1 - z).clamp_min(0)
        return 0.5 * (1 - z) ** 2

    def derivative(self, z: torch.Tensor) -> torch.Tensor:
        if self.name == "soft_hinge":
            return -torch.sigmoid(self.beta * (1 - z))
        if self.name == "hinge":
            return -(z < 1).to(z.dtype)
        return z - 1

    def value_and_derivative(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.value(z), self.derivative(z)
