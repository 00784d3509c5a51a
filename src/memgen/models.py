"""Networks: the fully connected net of Geiger et al. (feature_lazy) and its flat form.

``FC(d, h, L)`` has ``L`` hidden layers of width ``h`` and a scalar output::

    z_1 = W_0 x / sqrt(d) + b_0,        a_1 = phi(z_1)
    z_l = W_{l-1} a_{l-1} / sqrt(h) + b_{l-1},   a_l = phi(z_l)      (l = 2..L)
    f(x) = W_L a_L / s + b_L,  s = h ("mean_field", upstream) or sqrt(h) ("ntk")

with all weights N(0, 1) and biases 0 at initialisation. ``phi`` is the plain function
named: relu = max(0, z), tanh, or softplus with sharpness ``beta``
(``log(1 + exp(beta z)) / beta``). With ``normalize=True`` (explicit; the time-scale
family's config sets it, as upstream does) it is multiplied by the constant c that
makes E[phi(z)^2] = 1 for z ~ N(0, 1) (upstream does this by sampling; memgen uses
Gauss-Hermite quadrature); the default ``normalize=False`` leaves phi unscaled.

Each activation is defined once (:mod:`memgen.activations`, re-exported here:
:data:`ACTIVATION_FUNCTIONS`: its value and its
derivative, written into a given tensor or, without one, as differentiable torch ops);
every path evaluates that definition: :class:`Activation` (autograd and in place),
:class:`FlatFC`'s folded fast path and :func:`activation_constant`.

The trainer and the structured NTK use :class:`FlatFC`: the same network as a pure
function of one flat parameter vector with a hand-written forward and backward.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from memgen import MemgenError, contracts
from memgen.activations import (ACTIVATION_FUNCTIONS, ACTIVATIONS, SOFTPLUS_THRESHOLD,  # noqa: F401 (re-exported)
                                Activation, ActivationFunction, activation_constant)

LAST_LAYERS = ("mean_field", "ntk")


@dataclass(frozen=True)
class FCSpec:
    """Contract: d, h, L integers >= 1 (not bools); last_layer mean_field or ntk; the
    activation as :class:`Activation`.
    """

    d: int
    h: int
    L: int
    activation: str = "softplus"
    beta: float = 5.0
    normalize: bool = False
    bias: bool = False
    last_layer: str = "mean_field"

    def __post_init__(self):
        for key in ("d", "h", "L"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
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
    """Fully connected scalar-output network (see module docstring): ``activation`` is
    the plain function (``"relu"`` = max(0, z)); ``normalize=True`` scales it so that
    E[phi(z)^2] = 1. Contract: d, h, L integers >= 1, ``dtype`` float32 or float64, ``seed``
    None or an integer; ``forward`` takes x (n, d), converted to the parameters' dtype."""

    def __init__(self, d: int, h: int, L: int, activation: str = "softplus", beta: float = 5.0,
                 normalize: bool = False, bias: bool = False, last_layer: str = "mean_field",
                 seed: int | None = None, dtype: torch.dtype = torch.float64):
        super().__init__()
        contracts.choice("FC", "dtype", dtype, contracts.FLOAT_DTYPES)
        self._set_spec(FCSpec(d, h, L, activation, contracts.number("FC", "beta", beta), normalize, bias, last_layer))
        gen = torch.Generator().manual_seed(contracts.integer("FC", "seed", seed)) if seed is not None else None
        for name, shape in self.spec.shapes():
            init = torch.randn(shape, generator=gen, dtype=dtype) if name[0] == "W" else torch.zeros(shape, dtype=dtype)
            self.register_parameter(name, nn.Parameter(init))

    def _set_spec(self, spec: FCSpec) -> None:
        self.spec = spec
        self._act = spec.act
        self._scales = spec.scales()

    @classmethod
    def from_flat(cls, spec: FCSpec, w: torch.Tensor) -> "FC":
        """The FC of ``spec`` whose parameters are views into the flat vector ``w`` (P,)
        (the order of :meth:`flat_parameters` and :class:`FlatFC`): no copy and no random
        draw, so it costs nothing next to the network's use; writing to the parameters
        writes into ``w``. Its dtype and device are w's.
        Contract: spec an FCSpec; w a float tensor (P,) of spec's P.
        """
        flat = FlatFC(spec)
        contracts.tensor("FC.from_flat", "w", w, nonempty=False)
        if w.dim() != 1 or w.numel() != flat.numel:
            raise MemgenError(f"FC.from_flat: w has shape {tuple(w.shape)}, the network {spec} needs ({flat.numel},)")
        net = cls.__new__(cls)
        nn.Module.__init__(net)
        net._set_spec(spec)
        w = w.detach()
        for name, part, shape in flat.slices:
            net.register_parameter(name, nn.Parameter(w[part].view(shape)))
        return net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """f(x) of shape (n,) for x of shape (n, d).
        Contract: x a float tensor (n, d), n >= 1, converted to the parameters' dtype
        (shapes only).
        """
        x = contracts.rows("FC.forward", "x", x, self.spec.d, dtype=self.W0.dtype, matrix=True)
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
        """Copy a flat (P,) vector (the order of :meth:`flat_parameters`) into the parameters.
        Contract: w finite (P,).
        """
        contracts.tensor("FC.load_flat", "w", w, shape=(sum(p.numel() for p in self.parameters()),), finite=True)
        with torch.no_grad():
            torch.nn.utils.vector_to_parameters(w, self.parameters())
        return self


class FlatFC:
    """FC as a pure function of a flat parameter vector ``w``.

    ``forward(w, x)`` returns f (n,) and a cache; ``vjp(cache, g)`` returns the flat
    gradient of ``sum_i g_i f(x_i)`` with respect to ``w`` (hand-written backward, one
    matrix product per layer, no autograd graph). Contract (shapes only: the training
    loop's path): w (P,), x (n, d) (converted to w's dtype), g (n,).
    """

    def __init__(self, spec: FCSpec):
        if not isinstance(spec, FCSpec):
            raise contracts.fail("FlatFC", "spec", contracts.describe(spec), "an FCSpec")
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
        """f(x) (n,), and a cache of inputs / activation derivatives for :meth:`vjp`.
        Contract: w (P,); x a float tensor (n, d), converted to w's dtype (shapes only: the
        training loop's path).
        """
        if not torch.is_tensor(w) or w.shape != (self.numel,):
            raise contracts.fail("FlatFC.forward", "w", contracts.describe(w), f"shape ({self.numel},) (the network's P)")
        return self._forward(w, contracts.rows("FlatFC.forward", "x", x, self.spec.d, dtype=w.dtype, matrix=True), keep, None)

    def vjp(self, cache, g: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Flat gradient of sum_i g_i f(x_i); written into ``out`` if given.
        Contract: the cache of forward(keep=True); g with n entries.
        """
        n = len(cache[1][0]) if cache[1] else None  # None: the cache of forward(keep=False)
        if n is None or not torch.is_tensor(g) or g.numel() != n:
            raise contracts.fail("FlatFC.vjp", "g", contracts.describe(g), f"{n} entries (a forward(keep=True) cache)")
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
        """(pre, m, c): u = pre * z is what the activation's definition sees (softplus with
        beta 1 on u = beta z, the same function); a = m * a~, phi' = c * phi'~."""
        c = self.act.c
        if self.act.function.prescaled:
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
        fn = self.act.function
        beta_u = 1.0 if fn.prescaled else self.act.beta
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
            value = fn.value(u, beta_u, out=self._buffer(work, ("a", i), shape, x))
            if keep:
                derivs.append(fn.derivative(u, value, beta_u, out=self._buffer(work, ("d", i), shape, x)))
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
