"""Hessian-vector products of a function of a flat vector, the dense Hessian, the top eigenvalue.

Everything works on one flat parameter vector w of shape (P,) and on callables
``hvp_fn(u) -> H u`` with u, H u of shape (P,); H is never formed unless asked for
(:func:`hessian_matrix`).

- :func:`hvp`: exact H v of a scalar f(w) by double backward (Pearlmutter):
  H v = d/dw (grad f(w) . v), one gradient and one extra backward pass.
- :func:`finite_difference_hvp`: (g(w + r v) - g(w - r v)) / (2 r), the approximation
  the reference notebook had to use; kept only to measure its error
  (truncation O(r^2) against rounding O(eps / r)).
- :func:`top_eigenvalue`: power iteration on hvp_fn.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from memgen import MemgenError
from memgen.contracts import describe, fail, function, integer, number, operator, tensor
from memgen.progress import Progress

HVPFn = Callable[[torch.Tensor], torch.Tensor]


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum()


def _point(caller: str, fn, w) -> torch.Tensor:
    function(caller, "fn", fn)
    return tensor(caller, "w", w, ndim=1, finite=True).detach().requires_grad_(True)


def _scalar(caller: str, out) -> torch.Tensor:
    if not torch.is_tensor(out) or out.numel() != 1:
        raise fail(caller, "fn(w)", describe(out), "a scalar tensor (one entry)")
    return out.reshape(())


def gradient(fn: Callable[[torch.Tensor], torch.Tensor], w: torch.Tensor) -> torch.Tensor:
    """grad f(w), shape (P,), of a scalar function f of a flat tensor w of shape (P,).

    Contract: ``fn`` callable returning a one-entry tensor; ``w`` a finite float32/float64
    tensor of shape (P,), P >= 1; the gradient is in w's dtype."""
    w = _point("gradient", fn, w)
    out = _scalar("gradient", fn(w))
    (g,) = torch.autograd.grad(out, w, allow_unused=True)
    return torch.zeros_like(w) if g is None else g.detach()


def hvp(fn: Callable[[torch.Tensor], torch.Tensor], w: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Exact Hessian-vector product H(w) v of a scalar f, by double backward.

    H v = d/dw [grad f(w) . v]  (the gradient graph is kept with create_graph=True and
    differentiated once more), exact up to rounding, cost ~ 2 gradients.

    Args:
      fn: f(w) -> scalar tensor (one entry), w of shape (P,).
      w: point, shape (P,), P >= 1, finite, float32 or float64 (the reference dtype).
      v: direction, exactly w's shape (P,) (not (P, 1), not a scalar: refused), finite;
        converted to w's dtype.

    Returns:
      H v, shape (P,), detached, in w's dtype.
    Contract: fn callable returning one entry; w finite float32/float64 (P,), P >= 1 (the
    reference dtype); v finite, exactly w's shape (converted to w's dtype).
    """
    w = _point("hvp", fn, w)
    v = tensor("hvp", "v", v, shape=tuple(w.shape), finite=True, dtype=w.dtype)
    (g,) = torch.autograd.grad(_scalar("hvp", fn(w)), w, create_graph=True, allow_unused=True)
    if g is None or not g.requires_grad:  # f at most linear in w: H = 0
        return torch.zeros_like(w)
    (hv,) = torch.autograd.grad(_dot(g, v), w, allow_unused=True)
    return torch.zeros_like(w) if hv is None else hv.detach()


def finite_difference_hvp(grad_fn: Callable[[torch.Tensor], torch.Tensor], w: torch.Tensor,
                          v: torch.Tensor, r: float = 1e-4) -> torch.Tensor:
    """Central-difference H v = (g(w + r v) - g(w - r v)) / (2 r) + O(r^2 ||v||^3 f''').

    The truncation error falls as r^2 while the rounding error grows as eps ||g|| / r,
    so the error is minimal near r ~ eps^(1/3) and never zero. Exists to show that error
    next to :func:`hvp`; do not use it for real work.

    Args:
      grad_fn: g(w) -> gradient, shape (P,) -> (P,).
      w, v: shape (P,), finite (v in w's dtype).
      r: step along v, > 0.
    Contract: grad_fn callable; w finite (P,), P >= 1; v finite, w's shape (converted to w's
    dtype); r > 0.
    """
    function("finite_difference_hvp", "grad_fn", grad_fn)
    w = tensor("finite_difference_hvp", "w", w, ndim=1, finite=True).detach()
    v = tensor("finite_difference_hvp", "v", v, shape=tuple(w.shape), finite=True, dtype=w.dtype)
    r = number("finite_difference_hvp", "r", r, lo=0, lo_open=True)
    return (grad_fn(w + r * v) - grad_fn(w - r * v)) / (2 * r)


def hessian_matrix(hvp_fn: HVPFn, like: torch.Tensor | int, progress: str | None = None) -> torch.Tensor:
    """Dense (P, P) matrix of the linear map hvp_fn, built column by column
    H[:, j] = hvp_fn(e_j) (P HVPs), then symmetrized (H + H^T) / 2.

    ``like``: a (P,) tensor giving size, dtype and device, or P >= 1 (float64, CPU).
    ``hvp_fn`` must return P entries, finite, for each e_j (converted to like's dtype).
    ``progress``: label of progress lines (memgen.progress) on stderr; None: silent.
    Contract: hvp_fn callable, P finite entries per call (converted to like's dtype); like a
    float tensor of P >= 1 entries or an integer P >= 1.
    """
    e = _like("hessian_matrix", like)
    hvp_fn = operator("hessian_matrix", "hvp_fn", hvp_fn, e)
    P = e.numel()
    cols = []
    bar = Progress(progress, P, unit="HVP", message=f"dense {P}x{P} Hessian")
    for j in range(P):
        e.zero_()
        e[j] = 1
        cols.append(hvp_fn(e.clone()).reshape(-1))
        bar.update(j + 1)
    bar.finish()
    H = torch.stack(cols, dim=1)
    return (H + H.T) / 2


def _like(caller: str, like: torch.Tensor | int) -> torch.Tensor:
    if isinstance(like, torch.Tensor):
        like = tensor(caller, "like", like)
        return torch.zeros(like.numel(), dtype=like.dtype, device=like.device)
    return torch.zeros(integer(caller, "like", like, lo=1), dtype=torch.float64)


def top_eigenvalue(hvp_fn: HVPFn, like: torch.Tensor | int, iters: int = 100, tol: float = 1e-6,
                   seed: int = 0, return_info: bool = False):
    """Largest-magnitude eigenvalue of a symmetric H by power iteration.

    u_{k+1} = H u_k / ||H u_k|| from a seeded Gaussian u_0; the estimate is the
    Rayleigh quotient lambda_k = u_k^T H u_k (signed), stopped when
    |lambda_k - lambda_{k-1}| <= tol |lambda_k| or after ``iters`` HVPs. For a PSD H the
    estimate approaches lambda_max from below.

    Args:
      hvp_fn: u (P,) -> H u (P,) (outputs checked: P entries; non-finite raises).
      like: a (P,) tensor (size, dtype, device) or P >= 1.
      iters: >= 1; tol: >= 0.
    Returns:
      lambda (float); with return_info, (lambda, {"iterations", "hvps", "history"}).
    Contract: hvp_fn and like as for :func:`hessian_matrix`; iters an integer >= 1; tol >=
    0.
    """
    u = _like("top_eigenvalue", like)
    iters = integer("top_eigenvalue", "iters", iters, lo=1)
    tol = number("top_eigenvalue", "tol", tol, lo=0)
    hvp_fn = operator("top_eigenvalue", "hvp_fn", hvp_fn, u)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    u = torch.randn(u.shape, generator=gen, dtype=u.dtype).to(u.device)
    u /= u.norm()
    lam, hist, k = float("nan"), [], 0
    for k in range(1, iters + 1):
        hu = hvp_fn(u)
        new = float(_dot(u, hu))
        hist.append(new)
        norm = hu.norm()
        if not math.isfinite(new) or not torch.isfinite(norm):
            raise MemgenError("top_eigenvalue: the Hessian-vector product is not finite")
        converged = k > 1 and abs(new - lam) <= tol * abs(new)
        lam = new
        if converged or norm == 0:
            break
        u = hu / norm
    return (lam, {"iterations": k, "hvps": k, "history": hist}) if return_info else lam
