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
# softplus(u) = u for u = beta z > 30: log1p(exp(-30)) ~ 1e-13 is below float64 rounding of
# u, and exp(beta z) can no longer overflow (it does past beta z ~ 709 without a cutoff).
SOFTPLUS_THRESHOLD = 30.0
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
        """phi(z) alone (differentiable; the same numbers as ``value_and_derivative(z)[0]``)."""
        c = self.c
        if self.name == "relu":
            return c * z.clamp_min(0)
        if self.name == "tanh":
            return c * torch.tanh(z)
        value = F.softplus(z, beta=self.beta, threshold=SOFTPLUS_THRESHOLD)
        if c != 1.0:
            value.mul_(c)
        return value

    def value_and_derivative(self, z: torch.Tensor, consume: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(phi(z), phi'(z)); ``consume`` (outside autograd): phi'(z) is written over z."""
        if z.requires_grad and torch.is_grad_enabled():  # differentiable path
            c = self.c
            if self.name == "relu":
                pos = z > 0
                return c * z.clamp_min(0), c * pos.to(z.dtype)
            if self.name == "tanh":
                t = torch.tanh(z)
                return c * t, c * (1 - t * t)
            value = F.softplus(z, beta=self.beta, threshold=SOFTPLUS_THRESHOLD)
            sig = torch.sigmoid(z * self.beta)
            if c != 1.0:
                value.mul_(c)
                sig.mul_(c)
            return value, sig
        return self._into(z, torch.empty_like(z), z if consume else torch.empty_like(z))

    def _into(self, z: torch.Tensor, value: torch.Tensor, deriv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """phi(z) and phi'(z) written into ``value`` and ``deriv`` (no autograd, no allocation).

        Same operations, hence the same numbers, as the differentiable path.
        """
        c = self.c
        if self.name == "relu":
            torch.clamp_min(z, 0, out=value)
            torch.gt(z, 0, out=deriv)
        elif self.name == "tanh":
            torch.tanh(z, out=value)
            torch.mul(value, value, out=deriv)
            deriv.neg_().add_(1)  # 1 - t*t
        else:
            # softplus_beta(z) = log1p(exp(beta z)) / beta, derivative sigmoid(beta z)
            torch.ops.aten.softplus.out(z, self.beta, SOFTPLUS_THRESHOLD, out=value)
            torch.mul(z, self.beta, out=deriv).sigmoid_()
        if c != 1.0:
            value.mul_(c)
            deriv.mul_(c)
        return value, deriv


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

    def layers(self) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """Weight matrix and bias (or None) of each layer, detached (as FlatFC.views)."""
        return [(getattr(self, f"W{i}").detach(), getattr(self, f"B{i}").detach() if self.spec.bias else None)
                for i in range(self.spec.L + 1)]

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
        return self._forward(w, x, keep, None)

    def vjp(self, cache, g: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Flat gradient of sum_i g_i f(x_i); written into ``out`` if given."""
        return self._vjp(cache, g, out, None)

    # Internals. ``work`` None: the plain computation above. ``work`` a dict: the trainer's
    # fast path, scratch buffers kept in ``work`` and reused from one call to the next, so
    # the cache is valid only until the next call with the same ``work`` (prepare: forward
    # then vjp at once). In that path the constants are folded into the matrix products
    # (``alpha`` of addmm) instead of extra passes over the (n, h) arrays: the cache holds
    # a_l / m and phi'_l / c with m = c / beta (softplus) or c, and softplus is evaluated
    # on u = beta z with beta 1 (the same function); results agree to rounding. The output
    # f and the gradient are always fresh tensors.

    @staticmethod
    def _buffer(work, key, shape, like: torch.Tensor) -> torch.Tensor:
        buf = work.get(key)
        if buf is None or buf.shape != shape or buf.dtype != like.dtype or buf.device != like.device:
            buf = work[key] = like.new_empty(shape)
        return buf

    def _folding(self):
        """(pre, m, c): u = pre * z is what the activation kernels see; a = m * a~, phi' = c * phi'~."""
        c = self.act.c
        if self.act.name == "softplus":
            return self.act.beta, c / self.act.beta, c
        return 1.0, c, c

    def _forward(self, w: torch.Tensor, x: torch.Tensor, keep: bool, work):
        layers = self.views(w)
        inputs, derivs = [], []
        a = x
        L = self.spec.L
        if work is None:
            for i, (W, B) in enumerate(layers):
                if keep:
                    inputs.append(a)
                scale = self.scales[i]
                z = torch.addmm(B, a, W.t(), alpha=scale) if B is not None else (a @ W.t()).mul_(scale)
                if i == L:
                    a = z
                elif keep:
                    a, da = self.act.value_and_derivative(z)
                    derivs.append(da)
                else:
                    a = self.act(z)
            return a.reshape(-1), (layers, inputs, derivs)
        pre, m, _ = self._folding()
        name = self.act.name
        n = x.shape[0]
        for i, (W, B) in enumerate(layers):
            if keep:
                inputs.append(a)
            k = self.scales[i] * (m if i > 0 else 1.0)  # z = k W a~ + B
            if i == L:
                a = torch.addmm(B, a, W.t(), alpha=k) if B is not None else (a @ W.t()).mul_(k)
                break
            shape = (n, W.shape[0])
            u = self._buffer(work, "u", shape, x)
            bias = u if B is None else (B if pre == 1.0 else B * pre)
            torch.addmm(bias, a, W.t(), beta=0.0 if B is None else 1.0, alpha=k * pre, out=u)  # u = pre z
            value = self._buffer(work, ("a", i), shape, x)
            if name == "softplus":  # log1p(exp(beta z)) = beta softplus_beta(z)
                torch.ops.aten.softplus.out(u, 1.0, SOFTPLUS_THRESHOLD, out=value)
            elif name == "relu":
                torch.clamp_min(u, 0, out=value)
            else:
                torch.tanh(u, out=value)
            if keep:
                deriv = self._buffer(work, ("d", i), shape, x)
                if name == "softplus":
                    torch.sigmoid(u, out=deriv)
                elif name == "relu":
                    torch.gt(u, 0, out=deriv)
                else:
                    torch.mul(value, value, out=deriv).neg_().add_(1)
                derivs.append(deriv)
            a = value
        return a.reshape(-1), (layers, inputs, derivs)

    def _vjp(self, cache, g: torch.Tensor, out: torch.Tensor | None, work) -> torch.Tensor:
        layers, inputs, derivs = cache
        if out is None:
            out = inputs[0].new_empty(self.numel)
        grads = self.views(out)
        delta = g.reshape(-1, 1)  # d(sum g f)/dz at the output layer
        if work is None:
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
        _, m, c = self._folding()
        for i in range(self.spec.L, -1, -1):
            W, B = layers[i]
            gW, gB = grads[i]
            scale = self.scales[i]
            torch.addmm(gW, delta.t(), inputs[i], beta=0.0, alpha=scale * (m if i > 0 else 1.0), out=gW)
            if gB is not None:
                torch.sum(delta, dim=0, out=gB)
            if i > 0:
                nxt = self._buffer(work, ("delta", i % 2), (delta.shape[0], W.shape[1]), g)
                delta = torch.addmm(nxt, delta, W, beta=0.0, alpha=scale * c, out=nxt).mul_(derivs[i - 1])
        return out
