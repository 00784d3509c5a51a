"""Dense output of an rkc step (:class:`memgen.chebyshev.Step`) and the crossing of a level
inside it: :func:`interpolate` is the cubic Hermite polynomial through (w, dw/dt) at both
ends of the step (dw/dt = v); :func:`crossing` locates where a scalar function of the
interpolated state crosses a level (Illinois regula falsi). :mod:`memgen.rkc_run` reads
checkpoints, t_fit and t_memorize from them.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from memgen import MemgenError


def interpolate(st, t: float) -> torch.Tensor:
    """w at time t in [st.t0, st.t] (cubic Hermite through both ends; exact at the ends)."""
    if t == st.t:
        return st.w
    if t == st.t0:
        return st.w0
    h = st.t - st.t0
    x = (t - st.t0) / h
    h00, h10 = (1 + 2 * x) * (1 - x) ** 2, x * (1 - x) ** 2
    h01, h11 = x * x * (3 - 2 * x), x * x * (x - 1)
    return torch.mul(st.w0, h00).add_(st.v0, alpha=h10 * h).add_(st.w, alpha=h01).add_(st.v, alpha=h11 * h)


def crossing(fn: Callable[[float], tuple[float, Any]], a: float, fa: float, b: float, fb: float,
             reached: Callable[[float], bool], *, rtol: float = 1e-10, max_iter: int = 60) -> tuple[float, Any]:
    """First time in [a, b] where ``reached(value)`` turns true (false at a, true at b):
    Illinois regula falsi on ``fn(t) -> (value, payload)``.

    Returns (t, payload) of the right end of the final bracket (``reached`` holds there;
    payload None when that is b itself), the bracket narrowed to rtol * |b|.
    """
    if reached(fa) or not reached(fb):
        raise MemgenError(f"crossing: need the event false at a and true at b, got values {fa!r}, {fb!r}")
    payload, side = None, 0
    for _ in range(max_iter):
        if b - a <= rtol * abs(b):
            break
        c = (a * fb - b * fa) / (fb - fa) if fb != fa else 0.5 * (a + b)
        if not a < c < b:
            c = 0.5 * (a + b)
        fc, pc = fn(c)
        if reached(fc):
            b, fb, payload = c, fc, pc
            if side == -1:
                fa /= 2
            side = -1
        else:
            a, fa = c, fc
            if side == 1:
                fb /= 2
            side = 1
    return b, payload
