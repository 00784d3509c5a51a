"""Networks: the fully connected net of Geiger et al. (feature_lazy) and its flat form.

``FC(d, h, L)`` has ``L`` hidden layers of width ``h`` and a scalar output::

    z_1 = W_0 x / sqrt(d) + b_0,        a_1 = phi(z_1)
    z_l = W_{l-1} a_{l-1} / sqrt(h) + b_{l-1},   a_l = phi(z_l)      (l = 2..L)
    f(x) = W_L a_L / s + b_L,  s = h ("mean_field", upstream) or sqrt(h) ("ntk")

with all weights N(0, 1) and biases 0 at initialisation. ``phi`` is relu, tanh or
softplus with sharpness ``beta`` (``log(1 + exp(beta z)) / beta``); with
``normalize=True`` it is multiplied by the constant c that makes E[phi(z)^2] = 1 for
z ~ N(0, 1) (upstream does this by sampling; memgen uses Gauss-Hermite quadrature).

The trainer and the structured NTK use :class:`FlatFC`: the same network as a pure
function of one flat parameter vector with a hand-written forward and backward.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from memgen import MemgenError

ACTIVATIONS = ("relu", "tanh", "softplus")
LAST_LAYERS = ("mean_field", "ntk")


@lru_cache(maxsize=None)
def activation_constant(name: str, beta: float = 5.0) -> float:
    """c such that E[(c * phi(z))^2] = 1, z ~ N(0, 1) (Gauss-Hermite, 200 nodes)."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(200)
    z = nodes
    phi = _numpy_act(name, beta)(z)
    second_moment = float(np.sum(weights * phi**2) / np.sqrt(2 * np.pi))
    return 1.0 / math.sqrt(second_moment)


def _numpy_act(name: str, beta: float):
    if name == "relu":
        return lambda z: np.maximum(z, 0.0)
    if name == "tanh":
        return np.tanh
    if name == "softplus":
        return lambda z: np.logaddexp(0.0, beta * z) / beta
    raise MemgenError(f"activation: unknown '{name}'; allowed: {', '.join(ACTIVATIONS)}")


@dataclass(frozen=True)
class Activation:
    """phi(z) = c * act(z) and its derivative, on torch tensors."""

    name: str = "softplus"
    beta: float = 5.0
    normalize: bool = True

    def __post_init__(self):
        if self.name not in ACTIVATIONS:
            raise MemgenError(f"activation: unknown '{self.name}'; allowed: {', '.join(ACTIVATIONS)}")
        if self.name == "softplus" and not self.beta > 0:
            raise MemgenError(f"activation.beta: must be > 0, got {self.beta}")

    @property
    def c(self) -> float:
        return activation_constant(self.name, self.beta) if self.normalize else 1.0

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        return self.value_and_derivative(z)[0]

    def value_and_derivative(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.c
        if self.name == "relu":
            pos = z > 0
            return c * z.clamp_min(0), c * pos.to(z.dtype)
        if self.name == "tanh":
            t = torch.tanh(z)
            return c * t, c * (1 - t * t)
        # softplus_beta(z) = log1p(exp(beta z)) / beta, derivative sigmoid(beta z)
        value = F.softplus(z, beta=self.beta, threshold=1e9)
        sig = torch.sigmoid(z * self.beta)
        if c != 1.0:
            value.mul_(c)
            sig.mul_(c)
        return value, sig


@dataclass(frozen=True)
class FCSpec:
    d: int
    h: int
    L: int
    activation: str = "softplus"
    beta: float = 5.0
    normalize: bool = True
    bias: bool = False
    last_layer: str = "mean_field"

    def __post_init__(self):
        for key in ("d", "h", "L"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise MemgenError(f"model.{key}: must be a positive integer, got {getattr(self, key)!r}")
        if self.last_layer not in LAST_LAYERS:
            raise MemgenError(f"model.last_layer: unknown '{self.last_layer}'; allowed: {', '.join(LAST_LAYERS)}")
        Activation(self.activation, self.beta, self.normalize)  # validates

    @property
    def act(self) -> Activation:
        return Activation(self.activation, self.beta, self.normalize)

    def fan_ins(self) -> list[int]:
        return [self.d] + [self.h] * self.L

    def shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        """Parameter names and shapes, in the flat-vector order."""
        out = []
        for i, fan_in in enumerate(self.fan_ins()):
            rows = self.h if i < self.L else 1
            out.append((f"W{i}", (rows, fan_in)))
            if self.bias:
                out.append((f"B{i}", (rows,)))
        return out

    def scales(self) -> list[float]:
        """Multiplier of each weight matrix: 1/sqrt(fan_in), last 1/h or 1/sqrt(h)."""
        s = [1 / math.sqrt(f) for f in self.fan_ins()[:-1]]
        s.append(1 / self.h if self.last_layer == "mean_field" else 1 / math.sqrt(self.h))
        return s

    def to_dict(self) -> dict:
        return asdict(self)


class FC(nn.Module):
    """Fully connected scalar-output network (see module docstring)."""

    def __init__(self, d: int, h: int, L: int, activation: str = "softplus", beta: float = 5.0,
                 normalize: bool = True, bias: bool = False, last_layer: str = "mean_field",
                 seed: int | None = None, dtype: torch.dtype = torch.float64):
        super().__init__()
        self.spec = FCSpec(d, h, L, activation, float(beta), normalize, bias, last_layer)
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        for name, shape in self.spec.shapes():
            init = torch.randn(shape, generator=gen, dtype=dtype) if name[0] == "W" else torch.zeros(shape, dtype=dtype)
            self.register_parameter(name, nn.Parameter(init))
        self._act = self.spec.act
        self._scales = self.spec.scales()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """f(x) of shape (n,) for x of shape (n, d)."""
        L = self.spec.L
        for i in range(L + 1):
            x = x @ getattr(self, f"W{i}").t() * self._scales[i]
            if self.spec.bias:
                x = x + getattr(self, f"B{i}")
            if i < L:
                x = self._act(x)
        return x.reshape(-1)

    def flat(self) -> "FlatFC":
        return FlatFC(self.spec)

    def flat_parameters(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self.parameters()])

    def load_flat(self, w: torch.Tensor) -> "FC":
        with torch.no_grad():
            torch.nn.utils.vector_to_parameters(w, self.parameters())
        return self


class FlatFC:
    """FC as a pure function of a flat parameter vector ``w``.

    ``forward(w, x)`` returns f (n,) and a cache; ``vjp(cache, g)`` returns the flat
    gradient of ``sum_i g_i f(x_i)`` with respect to ``w`` (hand-written backward, one
    matrix product per layer, no autograd graph).
    """

    def __init__(self, spec: FCSpec):
        self.spec = spec
        self.act = spec.act
        self.scales = spec.scales()
        self.slices = []
        offset = 0
        for name, shape in spec.shapes():
            n = int(np.prod(shape))
            self.slices.append((name, slice(offset, offset + n), shape))
            offset += n
        self.numel = offset

    def views(self, w: torch.Tensor):
        """Weight matrices and biases (or None) of each layer, as views into ``w``."""
        by_name = {name: w[s].view(shape) for name, s, shape in self.slices}
        return [(by_name[f"W{i}"], by_name.get(f"B{i}")) for i in range(self.spec.L + 1)]

    def forward(self, w: torch.Tensor, x: torch.Tensor, keep: bool = True):
        """f(x) (n,), and a cache of inputs / activation derivatives for :meth:`vjp`."""
        layers = self.views(w)
        inputs, derivs = [], []
        a = x
        for i, (W, B) in enumerate(layers):
            if keep:
                inputs.append(a)
            z = torch.addmm(B, a, W.t(), alpha=self.scales[i]) if B is not None else (a @ W.t()).mul_(self.scales[i])
            if i < self.spec.L:
                a, da = self.act.value_and_derivative(z)
                if keep:
                    derivs.append(da)
            else:
                a = z
        return a.reshape(-1), (layers, inputs, derivs)

    def vjp(self, cache, g: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Flat gradient of sum_i g_i f(x_i); written into ``out`` if given."""
        layers, inputs, derivs = cache
        if out is None:
            out = inputs[0].new_empty(self.numel)
        grads = self.views(out)
        delta = g.reshape(-1, 1)  # d(sum g f)/dz at the output layer
        for i in range(self.spec.L, -1, -1):
            W, B = layers[i]
            gW, gB = grads[i]
            torch.mm(delta.t(), inputs[i], out=gW)
            gW.mul_(self.scales[i])
            if gB is not None:
                torch.sum(delta, dim=0, out=gB)
            if i > 0:
                delta = (delta @ W).mul_(self.scales[i]).mul_(derivs[i - 1])
        return out
