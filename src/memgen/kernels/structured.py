"""Structured empirical NTK: chains of linear layers and elementwise activations.

For z_{l+1} = s_l a_l W_l^T + b_l and a_{l+1} = phi(z_{l+1}) -- memgen's :class:`FC`
(either last-layer scaling, with or without bias) and a plain ``nn.Sequential`` of
``nn.Linear`` and elementwise activation modules (s_l = 1: ``nn.Linear`` has no
1/sqrt(fan_in)) -- with a_l the input of layer l and delta_l = df/dz_{l+1} its
back-propagated signal (one batched backward pass; example i's output depends on row i
only),

    Theta(x, x') = sum_l s_l^2 (a_l(x) . a_l(x')) (delta_l(x) . delta_l(x'))   [trained W_l]
                 + sum_l delta_l(x) . delta_l(x')                             [trained b_l],

matrix products only, never per-example Jacobians (the Gram itself: :mod:`memgen.kernels.gram`).
Only parameters with ``requires_grad`` count: a frozen W_l or b_l drops its term (its
layer still passes the signals on).

A chain is a list of :class:`Layer` and, between consecutive layers, an activation
``act(z) -> (phi(z), phi'(z))``; the last layer has one output.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from memgen.kernels.gemm import _mm_nt
from memgen.kernels.gram import DEFAULT_MEMORY_BUDGET, Features, _gram, gram_entries
from memgen.models import FC, Activation
from memgen.progress import Progress


class Layer(NamedTuple):
    W: torch.Tensor  # (out, in), detached
    B: torch.Tensor | None  # (out,) or None, detached
    s: float  # z = s a W^T + B
    train_W: bool  # requires_grad of the weight
    train_B: bool  # requires_grad of the bias (False without one)


def _layer(W: torch.Tensor, B: torch.Tensor | None, s: float) -> Layer:
    return Layer(W.detach(), None if B is None else B.detach(), s, W.requires_grad,
                 B is not None and B.requires_grad)


def _consuming(act: Activation):
    """``act(z) -> (phi(z), phi'(z))``, phi' written over z (not needed after)."""
    return lambda z: act.value_and_derivative(z, consume=True)


def fc_chain(model: FC):
    """The chain of a memgen :class:`FC` from its parameters (no copy)."""
    spec = model.spec
    layers = [_layer(getattr(model, f"W{i}"), getattr(model, f"B{i}") if spec.bias else None, s)
              for i, s in enumerate(spec.scales())]
    return layers, [_consuming(spec.act)] * (len(layers) - 1)


def _autograd_act(module: nn.Module):
    """(phi(z), phi'(z)) of an elementwise module by one backward pass of sum(phi(z))."""

    def act(z):
        with torch.enable_grad():
            zz = z.detach().requires_grad_(True)
            a = module(zz)
            (da,) = torch.autograd.grad(a.sum(), zz)
        return a.detach(), da

    return act


ELEMENTWISE = (nn.ReLU, nn.Tanh, nn.Softplus, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU,
               nn.SiLU, nn.Mish, nn.Hardtanh, nn.ReLU6, nn.Softsign, nn.Tanhshrink, nn.Identity)


def _compose(acts):
    if not acts:
        return lambda z: (z, torch.ones_like(z))

    def act(z):
        a, d = acts[0](z)
        for f in acts[1:]:
            a, d2 = f(a)
            d = d * d2
        return a, d

    return act


def sequential_chain(model: nn.Module):
    """The chain of a plain ``nn.Sequential`` [Flatten] Linear (act* Linear)* with one
    output, or None when ``model`` has another structure (then use the generic path)."""
    if type(model) is not nn.Sequential:
        return None
    mods = list(model)
    if mods and isinstance(mods[0], nn.Flatten) and mods[0].start_dim == 1 and mods[0].end_dim == -1:
        mods = mods[1:]
    layers, acts, pending = [], [], None
    for m in mods:
        if type(m) is nn.Linear:
            if pending is not None:
                acts.append(_compose(pending))
            elif layers:
                acts.append(_compose([]))
            layers.append(_layer(m.weight, m.bias, 1.0))
            pending = None
        elif isinstance(m, ELEMENTWISE) and type(m) in ELEMENTWISE and layers:
            native = {nn.ReLU: "relu", nn.Tanh: "tanh"}.get(type(m))  # memgen's own (phi, phi') pass
            f = _consuming(Activation(native, normalize=False)) if native else _autograd_act(m)
            pending = (pending or []) + [f]
        else:
            return None
    if not layers or pending is not None or layers[-1].W.shape[0] != 1:
        return None
    return layers, acts


def structured_chain(model: nn.Module):
    """The chain of an :class:`FC` or of a matching plain Sequential, else None."""
    return fc_chain(model) if isinstance(model, FC) else sequential_chain(model)


def _forward(chain, x: torch.Tensor):
    """Inputs a_l of every layer (n, in_l), activation derivatives phi'(z_{l+1}) between
    layers, and the weights s_l W_l."""
    layers, acts = chain
    a = x.reshape(x.shape[0], -1).to(layers[0].W.dtype)
    inputs, derivs = [], []
    scaled = [L.W if L.s == 1.0 else L.W * L.s for L in layers]  # z = a (s W)^T + b: one small copy, no pass over a
    for i, L in enumerate(layers):
        inputs.append(a)
        if i == len(layers) - 1:
            break
        a, da = acts[i](_mm_nt(a, scaled[i], L.B))
        derivs.append(da)
    return inputs, derivs, scaled


def last_layer_input(chain, x: torch.Tensor) -> torch.Tensor:
    """Input of the last linear layer (n, h), times its scale s."""
    a, s = _forward(chain, x)[0][-1], chain[0][-1].s
    return a * s if s != 1.0 else a


def chain_features(chain, x: torch.Tensor) -> Features:
    """The Gram features (A_l or None, D_l, bias trained, s_l) of the layers with trained
    parameters, for every example in x (n, ...)."""
    layers = chain[0]
    inputs, derivs, scaled = _forward(chain, x)
    out = []
    delta = None  # None = ones (n, 1) at the output
    for i in range(len(layers) - 1, -1, -1):
        L = layers[i]
        if L.train_W or L.train_B:
            out.append((inputs[i] if L.train_W else None, delta, L.train_B, L.s))
        if i > 0:
            if delta is None:  # ones (n, 1) @ s W (1, h): every row is s W
                delta = derivs[i - 1].mul_(scaled[i])
            else:
                delta = _mm_nt(delta, scaled[i].t()).mul_(derivs[i - 1])
    return Features(len(inputs[0]), inputs[0], out[::-1])


def structured_gram(chain, x1: torch.Tensor, x2: torch.Tensor | None = None,
                    memory_budget: int = DEFAULT_MEMORY_BUDGET, progress: str | None = None) -> torch.Tensor:
    """Theta(x1, x2) (n1, n2) of a chain; x2 = None: x1 with itself, symmetric tiles."""
    n1, n2 = len(x1), len(x1 if x2 is None else x2)
    bar = Progress(progress, gram_entries(n1, n2, x2 is None), unit="entry", message=f"NTK Gram {n1} x {n2}")
    with torch.no_grad():
        f1 = chain_features(chain, x1)
        K = _gram(f1, f1, memory_budget, True, bar) if x2 is None else \
            _gram(f1, chain_features(chain, x2), memory_budget, bar=bar)
    bar.finish()
    return K


def structured_blocks(chain, x_train: torch.Tensor, x_test: torch.Tensor,
                      memory_budget: int = DEFAULT_MEMORY_BUDGET, progress: str | None = None):
    """The three Gram blocks (train/train, test/train, test/test) of a chain, one forward
    pass per set."""
    n, m = len(x_train), len(x_test)
    bar = Progress(progress, gram_entries(n, n, True) + m * n + gram_entries(m, m, True), unit="entry",
                   message=f"NTK Gram blocks of {n} train, {m} test points")
    with torch.no_grad():
        ftr, fte = chain_features(chain, x_train), chain_features(chain, x_test)
        out = (_gram(ftr, ftr, memory_budget, True, bar), _gram(fte, ftr, memory_budget, bar=bar),
               _gram(fte, fte, memory_budget, True, bar))
    bar.finish()
    return out
