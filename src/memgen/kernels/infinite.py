"""Infinite-width NNGP and NTK of memgen's FC (relu, "ntk" last layer, no bias)."""

from __future__ import annotations

import math

import torch

from memgen import MemgenError
from memgen.contracts import integer, rows

ANALYTIC_ACTIVATIONS = ("relu", "relu_normalized")


def analytic_kernels(x1: torch.Tensor, x2: torch.Tensor | None = None, depth: int = 1,
                     activation: str = "relu") -> tuple[torch.Tensor, torch.Tensor]:
    """(NNGP, NTK) of the infinite-width ``FC(d, h, L=depth, activation="relu",
    normalize=False, last_layer="ntk", bias=False)`` as h -> infinity.

    Conventions (memgen's FC): N(0, 1) weights, z_1 = W_0 x / sqrt(d), hidden layers
    divided by sqrt(h), output f = W_L a_L / sqrt(h), no biases. With
    Sigma_1 = Theta_1 = x.x'/d and, for l = 1..depth, the arc-cosine maps of
    (u, v) ~ N(0, [[Sigma_l(x,x), Sigma_l(x,x')], [., Sigma_l(x',x')]]):

        Sigma_{l+1} = c^2 E[relu(u) relu(v)] = c^2 sqrt(Sxx Sx'x') (sin t + (pi - t) cos t) / (2 pi)
        Sdot_{l+1}  = c^2 E[relu'(u) relu'(v)] = c^2 (pi - t) / (2 pi),  cos t = Sigma_l(x,x') / sqrt(Sxx Sx'x')
        Theta_{l+1} = Sigma_{l+1} + Sdot_{l+1} Theta_l

    NNGP = Sigma_{depth+1}, NTK = Theta_{depth+1} (so the NTK includes the x.x'/d of the
    first layer). ``activation="relu"`` is plain max(0, z) (c = 1: the variance halves
    at every layer); ``"relu_normalized"`` is sqrt(2) relu (c^2 = 2), memgen's relu
    with ``normalize=True``. Computed in x1's dtype; shapes (n1, n2).

    With x2 = None the diagonal is exact: cos t = 1 there (the angle of a point with
    itself), so t = 0 is used instead of arccos of a cosine rounded below 1 (which costs
    1e-8 relative error in float64, 1e-4 in float32); a zero input keeps cos t = 0.

    Contract: x1 (n1, ...) and x2 (n2, ...) finite float32/float64 tensors with examples
    in rows (at least 2 dimensions: a 1-D (d,) input is refused, not read as d points),
    n >= 1 examples and d >= 1 features each, the same d; x2 converted to x1's dtype (the
    reference); ``depth`` an integer >= 1.
    """
    if activation not in ANALYTIC_ACTIVATIONS:
        raise MemgenError(f"analytic_kernels: activation '{activation}' not supported; "
                          f"allowed: {', '.join(ANALYTIC_ACTIVATIONS)}")
    depth = integer("analytic_kernels", "depth", depth, lo=1)
    x1 = _points("x1", x1, None, None)
    x2 = x1 if x2 is None else _points("x2", x2, x1.dtype, x1.shape[1])
    c2 = 1.0 if activation == "relu" else 2.0
    d = x1.shape[1]
    same = x2 is x1
    s12 = x1 @ x2.t() / d
    s11 = (x1 * x1).sum(1) / d
    s22 = (x2 * x2).sum(1) / d
    theta = s12.clone()
    for _ in range(depth):
        norms = torch.sqrt(torch.outer(s11, s22))
        cos = torch.where(norms > 0, s12 / norms.clamp_min(torch.finfo(s12.dtype).tiny), torch.zeros_like(s12))
        if same:  # a point with itself: cos t = 1 exactly (unless it is zero)
            diag = cos.diagonal()
            diag.copy_(torch.where(norms.diagonal() > 0, torch.ones_like(diag), diag))
        t = torch.arccos(cos.clamp(-1.0, 1.0))
        s12 = c2 * norms * (torch.sin(t) + (math.pi - t) * torch.cos(t)) / (2 * math.pi)
        sdot = c2 * (math.pi - t) / (2 * math.pi)
        theta = s12 + sdot * theta
        s11, s22 = c2 * s11 / 2, c2 * s22 / 2  # E[relu(u)^2] = Var(u) / 2
    return s12, theta


def _points(name: str, x, dtype, width) -> torch.Tensor:
    """x (n, ...) as (n, d) rows, checked (see analytic_kernels)."""
    x = rows("analytic_kernels", name, x, width, dtype=dtype, finite=True)
    return x.reshape(len(x), -1)
