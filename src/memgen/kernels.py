"""Empirical neural tangent kernels.

Theta(x, x') = sum_p df(x)/dw_p df(x')/dw_p for a scalar-output network f.

- :func:`empirical_ntk` takes any scalar-output ``nn.Module``; memgen's :class:`FC`
  goes through the structured path :func:`fc_ntk`, anything else through per-example
  Jacobians from ``torch.func`` in blocks (:func:`generic_ntk`).
- :func:`fc_ntk` uses the layer structure: with a_l the input of layer l, s_l its
  scale and delta_l = df/dz_l the back-propagated signal (one batched backward pass,
  since example i's output depends only on row i),
  Theta(x, x') = sum_l s_l^2 (a_l(x) . a_l(x')) (delta_l(x) . delta_l(x'))
                 [+ sum_l delta_l(x) . delta_l(x') with biases],
  matrix products only.
"""

from __future__ import annotations

import torch
from torch import nn

from memgen.models import FC, FlatFC


def _layer_features(model: FlatFC, w: torch.Tensor, x: torch.Tensor):
    """Per layer: (s_l * a_l, delta_l) for every example in x."""
    _, (layers, inputs, derivs) = model.forward(w, x)
    delta = x.new_ones(x.shape[0], 1)
    out = []
    for i in range(model.spec.L, -1, -1):
        out.append((inputs[i] * model.scales[i], delta))
        if i > 0:
            delta = (delta @ layers[i][0]) * model.scales[i] * derivs[i - 1]
    return out[::-1]


def fc_ntk(model: FlatFC, w: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor | None = None) -> torch.Tensor:
    """NTK Gram matrix (n1, n2) of :class:`FlatFC` at parameters ``w`` (structured)."""
    with torch.no_grad():
        f1 = _layer_features(model, w, x1)
        return _gram(model, f1, f1 if x2 is None else _layer_features(model, w, x2))


def _gram(model: FlatFC, fa, fb) -> torch.Tensor:
    K = None
    for (a1, d1), (a2, d2) in zip(fa, fb):
        dd = d1 @ d2.t()
        term = (a1 @ a2.t()).mul_(dd)
        if model.spec.bias:
            term += dd
        K = term if K is None else K.add_(term)
    return K


def generic_ntk(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor | None = None,
                block: int = 256) -> torch.Tensor:
    """NTK Gram of any scalar-output module via per-example Jacobians (torch.func),
    ``block`` examples at a time."""
    from torch.func import functional_call, jacrev, vmap

    params = {k: v.detach() for k, v in model.named_parameters()}

    def f_single(p, x):
        return functional_call(model, p, (x.unsqueeze(0),)).reshape(())

    jac = vmap(jacrev(f_single), in_dims=(None, 0))

    def jacobian(x):
        return [torch.cat([g.reshape(g.shape[0], -1) for g in jac(params, x[i:i + block]).values()], dim=1)
                for i in range(0, len(x), block)]

    J1 = jacobian(x1)
    J2 = J1 if x2 is None else jacobian(x2)
    return torch.cat([torch.cat([a @ b.t() for b in J2], dim=1) for a in J1], dim=0)


def empirical_ntk(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor | None = None) -> torch.Tensor:
    """n1 x n2 NTK Gram matrix of a scalar-output module (x2=None: x1 with itself)."""
    if isinstance(model, FC):
        return fc_ntk(model.flat(), model.flat_parameters(), x1, x2)
    return generic_ntk(model, x1, x2)


def ntk_blocks(model: FlatFC, w: torch.Tensor, x_train: torch.Tensor, x_test: torch.Tensor):
    """(K_train_train, K_test_train, K_test_test), sharing one forward pass per set."""
    with torch.no_grad():
        ftr = _layer_features(model, w, x_train)
        fte = _layer_features(model, w, x_test)
        return _gram(model, ftr, ftr), _gram(model, fte, ftr), _gram(model, fte, fte)


def relative_change(K0: torch.Tensor, K1: torch.Tensor) -> float:
    """||K1 - K0||_F / ||K0||_F."""
    return float((K1 - K0).norm() / K0.norm())


def shape_change(K0: torch.Tensor, K1: torch.Tensor) -> float:
    """|| K1/||K1|| - K0/||K0|| ||_F, in [0, 2]: how much the kernel turned."""
    return float((K1 / K1.norm() - K0 / K0.norm()).norm())
