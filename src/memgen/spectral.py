"""Spectral radius of the gradient's Jacobian for :mod:`memgen.chebyshev`: nonlinear power
iteration on finite differences of the gradient, and the deflated radius of the rest
once the top eigenvalue is split off.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

RHO_TOL = 0.05  # relative change that stops the power iteration


def spectral_radius(w: torch.Tensor, g: torch.Tensor, gradient_at: Callable, vector: torch.Tensor,
                    iters: int, eps: float, deflate: tuple[float, torch.Tensor] | None = None
                    ) -> tuple[float, torch.Tensor, float]:
    """Largest |eigenvalue| of dG/dw at w (G(w) = g, ``gradient_at(x)`` = G(x) or None where
    not finite) by power iteration on differences over sqrt(eps) max(||w||, 1), eps the
    precision of the evaluations, from ``vector``, at most ``iters`` gradients (stops when
    the estimate changes by under RHO_TOL): (estimate, last iterate, Rayleigh quotient).
    ``deflate = (lam, u)``, u of unit norm: of dG/dw - lam u u^T instead."""
    dw = math.sqrt(eps) * max(float(w.norm()), 1.0)
    u, est, prev, rq = vector, 0.0, None, 0.0
    for _ in range(iters):
        n = float(u.norm())
        if not n > 0 or not math.isfinite(n):
            u, n = torch.ones_like(w), math.sqrt(w.numel())
        q = u / n
        g2 = gradient_at(w + q * dw)
        if g2 is None:  # not finite there: keep what we have
            break
        u = g2 - g
        if deflate is not None:
            u.sub_(deflate[1], alpha=deflate[0] * dw * float(deflate[1] @ q))
        est, rq = float(u.norm()) / dw, float(q @ u) / dw
        if prev is not None and abs(est - prev) <= RHO_TOL * est:
            break
        prev = est
    return est, u, rq


def estimate(memory, w: torch.Tensor, g: torch.Tensor, gradient_at: Callable, iters: int, eps: float,
             deflate: Callable[[float], bool] | None, safety: float, gap: float) -> None:
    """Re-estimate ``memory.rho`` (times ``safety``) from ``memory.vector``; when
    ``deflate(rho)`` is true (deflation could pay at that radius), also the radius rho_e of
    dG/dw - lam u u^T (lam the Rayleigh quotient of the top iterate u), kept with lam when
    lam is positive (at least half the radius) and rho_e at most rho / ``gap``; else
    lam = 0 (:class:`memgen.chebyshev.Memory`)."""
    rho, memory.vector, rq = spectral_radius(w, g, gradient_at, memory.vector, iters, eps)
    memory.rho, memory.lam, memory.rho_e, memory.since_rho = safety * rho, 0.0, 0.0, 0
    if deflate is None or not deflate(memory.rho) or not rq > 0.5 * rho:
        return
    u = memory.vector / memory.vector.norm()
    rho_e, memory.vector_e, _ = spectral_radius(w, g, gradient_at, memory.vector_e, iters, eps, deflate=(rq, u))
    if rho_e * gap <= rho:
        memory.lam, memory.rho_e = rq, safety * rho_e
