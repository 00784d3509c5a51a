"""Curvature of a loss: Hessian-vector products, inverse HVPs and influence functions.

Everything works on one flat parameter vector w of shape (P,) and on callables
``hvp_fn(u) -> H u`` with u, H u of shape (P,); H is never formed unless asked for
(:func:`hessian_matrix`, method ``"exact"``).

- :func:`hvp`: exact H v of a scalar f(w) by double backward (Pearlmutter):
  H v = d/dw (grad f(w) . v), one gradient and one extra backward pass.
- :func:`make_module_hvp` / :func:`module_hvp`: H u for the Hessian of the mean loss
  of an ``nn.Module`` over all examples of a list of mini-batches,
  H = sum_b (n_b / N) H_b, accumulated batch by batch.
- :func:`finite_difference_hvp`: (g(w + r v) - g(w - r v)) / (2 r), the approximation
  the reference notebook had to use; kept only to measure its error
  (truncation O(r^2) against rounding O(eps / r)).
- :func:`top_eigenvalue`: power iteration on hvp_fn.
- :func:`inverse_hvp`: x = (H + damping I)^{-1} v by a dense solve, conjugate
  gradient, or LiSSA (Agarwal et al. 2017, as used by Koh & Liang 2017).
- :func:`influence_on_test_loss`: Koh & Liang's I_up,loss(z_i, z_test) for every
  training point and the predicted change of the test loss on removing it.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from memgen import MemgenError
from memgen.progress import Progress, format_duration

HVPFn = Callable[[torch.Tensor], torch.Tensor]


class LissaDiverged(MemgenError):
    """The LiSSA recursion diverges (scale too small, or H + damping I not positive definite)."""


class NotPositiveDefinite(MemgenError):
    """Conjugate gradient met a direction p with p^T (H + damping I) p <= 0."""


# --------------------------------------------------------------------------- basics


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum()


def gradient(fn: Callable[[torch.Tensor], torch.Tensor], w: torch.Tensor) -> torch.Tensor:
    """grad f(w), shape (P,), of a scalar function f of a flat tensor w of shape (P,)."""
    w = w.detach().requires_grad_(True)
    out = fn(w)
    (g,) = torch.autograd.grad(out, w, allow_unused=True)
    return torch.zeros_like(w) if g is None else g.detach()


def hvp(fn: Callable[[torch.Tensor], torch.Tensor], w: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Exact Hessian-vector product H(w) v of a scalar f, by double backward.

    H v = d/dw [grad f(w) . v]  (the gradient graph is kept with create_graph=True and
    differentiated once more), exact up to rounding, cost ~ 2 gradients.

    Args:
      fn: f(w) -> scalar tensor, w of shape (P,).
      w: point, shape (P,).
      v: direction, shape (P,).

    Returns:
      H v, shape (P,), detached.
    """
    w = w.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(fn(w), w, create_graph=True, allow_unused=True)
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
      w, v: shape (P,).
      r: step along v.
    """
    w = w.detach()
    return (grad_fn(w + r * v) - grad_fn(w - r * v)) / (2 * r)


def hessian_matrix(hvp_fn: HVPFn, like: torch.Tensor | int, progress: str | None = None) -> torch.Tensor:
    """Dense (P, P) matrix of the linear map hvp_fn, built column by column
    H[:, j] = hvp_fn(e_j) (P HVPs), then symmetrized (H + H^T) / 2.

    ``like``: a (P,) tensor giving size, dtype and device, or P (float64, CPU).
    ``progress``: label of progress lines (memgen.progress) on stderr; None: silent.
    """
    e = _like(like)
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


def _like(like: torch.Tensor | int) -> torch.Tensor:
    if isinstance(like, torch.Tensor):
        return torch.zeros(like.numel(), dtype=like.dtype, device=like.device)
    return torch.zeros(int(like), dtype=torch.float64)


# --------------------------------------------------------------------------- modules


def module_params(model: nn.Module) -> list[torch.Tensor]:
    """Parameters of ``model`` that require grad, in ``model.parameters()`` order."""
    return [p for p in model.parameters() if p.requires_grad]


def flat_params(model: nn.Module) -> torch.Tensor:
    """The trainable parameters flattened and concatenated, shape (P,), detached."""
    return torch.cat([p.detach().reshape(-1) for p in module_params(model)])


def set_flat_params(model: nn.Module, w: torch.Tensor) -> None:
    """Write a flat (P,) vector back into the trainable parameters (in place)."""
    with torch.no_grad():
        for p, chunk in zip(module_params(model), unflatten(w, module_params(model))):
            p.copy_(chunk)


def unflatten(vec: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Split a flat (P,) vector into views shaped like the tensors of ``like``."""
    sizes = [t.numel() for t in like]
    if vec.numel() != sum(sizes):
        raise MemgenError(f"vector has {vec.numel()} entries, the parameters {sum(sizes)}")
    return [c.view_as(t) for c, t in zip(vec.reshape(-1).split(sizes), like)]


def _flatten(tensors: Sequence[torch.Tensor | None], like: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([(torch.zeros_like(p) if t is None else t).reshape(-1) for t, p in zip(tensors, like)])


def _batch_loss(model: nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean loss of one batch: loss_fn(model(x), y); a non-scalar result is averaged."""
    out = loss_fn(model(x), y)
    return out if out.dim() == 0 else out.mean()


def _sizes(batches) -> tuple[list, list[int], int]:
    batches = list(batches)
    if not batches:
        raise MemgenError("no batches given")
    sizes = [int(x.shape[0]) for x, _ in batches]
    N = sum(sizes)
    if N == 0:
        raise MemgenError("the batches hold no examples")
    return batches, sizes, N


def module_gradient(model: nn.Module, loss_fn, batches: Iterable) -> torch.Tensor:
    """Gradient (P,) of the mean loss over all examples of all batches,
    grad L = sum_b (n_b / N) grad L_b, with L_b = loss_fn(model(x_b), y_b) the batch mean.
    """
    batches, sizes, N = _sizes(batches)
    params = module_params(model)
    total = None
    for (x, y), n in zip(batches, sizes):
        g = torch.autograd.grad(_batch_loss(model, loss_fn, x, y), params, allow_unused=True)
        g = _flatten(g, params).mul_(n / N)
        total = g if total is None else total.add_(g)
    return total


def make_module_hvp(model: nn.Module, loss_fn, batches: Iterable, cache_graph: bool = False) -> HVPFn:
    """u -> H u with H the Hessian of the mean loss over all examples of all batches.

    L(w) = (1/N) sum_i l(z_i, w) = sum_b (n_b / N) L_b(w), L_b the mean over batch b
    (``loss_fn(model(x_b), y_b)``, a scalar mean; a per-example vector is averaged), so
    H u = sum_b (n_b / N) H_b u, computed by double backward batch by batch: unequal
    batch sizes give the same H as one full batch.

    Args:
      model: the network at the parameters of interest (its trainable parameters, P).
      loss_fn: (outputs, targets) -> mean loss of the batch.
      batches: re-iterable of (x, y) with x of shape (n_b, ...) (a list, a DataLoader).
      cache_graph: build each batch's gradient graph grad L_b(w) once and keep it, so
        every call is a single backward pass of (grad L_b . u) per batch instead of
        forward + backward + backward. Costs the memory of all batches' graphs; the
        parameters must not change afterwards (autograd then raises on the stale graph).

    Returns:
      hvp_fn: u of shape (P,) -> H u of shape (P,), detached.
    """
    batches, sizes, N = _sizes(batches)
    params = module_params(model)

    def batch_grad(x, y):
        g = torch.autograd.grad(_batch_loss(model, loss_fn, x, y), params, create_graph=True, allow_unused=True)
        return [(gi, p) for gi, p in zip(g, params) if gi is not None and gi.requires_grad]

    cache = [batch_grad(x, y) for x, y in batches] if cache_graph else None

    def hvp_fn(u: torch.Tensor) -> torch.Tensor:
        us = dict(zip(map(id, params), unflatten(u.detach(), params)))
        total = None
        for b, ((x, y), n) in enumerate(zip(batches, sizes)):
            g = cache[b] if cache_graph else batch_grad(x, y)
            if not g:  # loss at most linear in the parameters
                hv = torch.zeros_like(u)
            else:
                gu = sum(_dot(gi, us[id(p)]) for gi, p in g)
                hv = _flatten(torch.autograd.grad(gu, params, allow_unused=True, retain_graph=cache_graph), params)
            hv = hv.detach().mul_(n / N)
            total = hv if total is None else total.add_(hv)
        return total

    return hvp_fn


def module_hvp(model: nn.Module, loss_fn, batches: Iterable, v: torch.Tensor) -> torch.Tensor:
    """H v, (P,), for the Hessian of the mean loss over all batches (see :func:`make_module_hvp`)."""
    return make_module_hvp(model, loss_fn, batches)(v)


def make_batch_hvps(model: nn.Module, loss_fn, batches: Iterable, cache_graph: bool = False) -> list[HVPFn]:
    """One unbiased Hessian estimate per batch, for LiSSA's ``batch_hvps``.

    Callable b returns (B n_b / N) H_b u; with b drawn uniformly from the B batches,
    E[(B n_b / N) H_b] = sum_b (n_b / N) H_b = H, so unequal batch sizes stay unbiased.
    ``cache_graph`` as in :func:`make_module_hvp`.
    """
    batches, sizes, N = _sizes(batches)
    B = len(batches)
    out = []
    for batch, n in zip(batches, sizes):
        f = make_module_hvp(model, loss_fn, [batch], cache_graph=cache_graph)
        out.append(lambda u, f=f, c=B * n / N: f(u).mul_(c))
    return out


def per_example_gradients(model: nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor,
                          vectorized: bool = True) -> torch.Tensor:
    """Gradients of l(z_i, w) = loss_fn(model(x_i[None]), y_i[None]), shape (n, P).

    Vectorized with torch.func (vmap of grad over functional_call); a model that
    torch.func cannot vmap (e.g. batch norm in training mode) falls back to a loop.
    ``vectorized=False`` uses the loop directly (torch.func's first call imports
    torch._dynamo, seconds per process: the loop is faster for small n).
    """
    if not vectorized:
        return torch.stack([module_gradient(model, loss_fn, [(x[i:i + 1], y[i:i + 1])]) for i in range(x.shape[0])])
    params = module_params(model)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    try:
        from torch.func import functional_call, grad, vmap

        fixed = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
        fixed.update(dict(model.named_buffers()))

        def loss_one(ps, xi, yi):
            out = loss_fn(functional_call(model, {**fixed, **ps}, (xi.unsqueeze(0),)), yi.unsqueeze(0))
            return out if out.dim() == 0 else out.mean()

        gs = vmap(grad(loss_one), in_dims=(None, 0, 0))({n: p.detach() for n, p in zip(names, params)}, x, y)
        return torch.cat([gs[n].reshape(x.shape[0], -1) for n in names], dim=1)
    except (RuntimeError, NotImplementedError):
        return torch.stack([module_gradient(model, loss_fn, [(x[i:i + 1], y[i:i + 1])]) for i in range(x.shape[0])])


# --------------------------------------------------------------------------- eigenvalue


def top_eigenvalue(hvp_fn: HVPFn, like: torch.Tensor | int, iters: int = 100, tol: float = 1e-6,
                   seed: int = 0, return_info: bool = False):
    """Largest-magnitude eigenvalue of a symmetric H by power iteration.

    u_{k+1} = H u_k / ||H u_k|| from a seeded Gaussian u_0; the estimate is the
    Rayleigh quotient lambda_k = u_k^T H u_k (signed), stopped when
    |lambda_k - lambda_{k-1}| <= tol |lambda_k| or after ``iters`` HVPs. For a PSD H the
    estimate approaches lambda_max from below.

    Args:
      hvp_fn: u (P,) -> H u (P,).
      like: a (P,) tensor (size, dtype, device) or P.
    Returns:
      lambda (float); with return_info, (lambda, {"iterations", "hvps", "history"}).
    """
    u = _like(like)
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


# --------------------------------------------------------------------------- inverse HVP


def inverse_hvp(hvp_fn: HVPFn, v: torch.Tensor, method: str = "exact", damping: float = 0.0, **options):
    """Solve (H + damping I) x = v with H given only through hvp_fn.

    Methods (``options`` go to the solver):

    - ``"exact"``: H from P HVPs (:func:`hessian_matrix`), then torch.linalg.solve. For
      small P only (option ``max_dim``, default 4096).
    - ``"cg"``: conjugate gradient, :func:`cg_solve` (tol, max_iter).
    - ``"lissa"``: stochastic Neumann recursion, :func:`lissa_solve` (scale, depth,
      repeats, batch_hvps, seed, lambda_max, record, record_every, max_growth).

    Args:
      hvp_fn: u (P,) -> H u (P,), H symmetric.
      v: right-hand side, shape (P,).
      damping: lambda >= 0 added to the diagonal.

    Returns:
      (x, info): x of shape (P,); info a dict with at least ``"method"`` and ``"hvps"``.
    """
    if not torch.is_tensor(v) or v.dim() != 1:
        raise MemgenError("inverse_hvp: v must be a flat tensor of shape (P,)")
    solvers = {"exact": exact_solve, "cg": cg_solve, "lissa": lissa_solve}
    if method not in solvers:
        raise MemgenError(f"inverse_hvp: unknown method {method!r} (choose from {', '.join(solvers)})")
    try:
        x, info = solvers[method](hvp_fn, v, damping=damping, **options)
    except TypeError as exc:
        if "unexpected keyword" in str(exc):
            raise MemgenError(f"inverse_hvp(method={method!r}): {exc}") from None
        raise
    info["method"] = method
    return x, info


def _damped(hvp_fn: HVPFn, damping: float) -> HVPFn:
    return hvp_fn if damping == 0 else (lambda u: hvp_fn(u) + damping * u)


def exact_solve(hvp_fn: HVPFn, v: torch.Tensor, damping: float = 0.0, max_dim: int = 4096,
                progress: str | None = None):
    """x = (H + damping I)^{-1} v with H built from P HVPs; info: hvps, residual, matrix.
    ``progress``: label of progress lines (memgen.progress); None: silent."""
    if v.numel() > max_dim:
        raise MemgenError(f"method='exact' builds the {v.numel()}x{v.numel()} Hessian; "
                          f"P > max_dim={max_dim}: use method='cg' or raise max_dim")
    A = hessian_matrix(hvp_fn, v, progress=progress)
    A = A + damping * torch.eye(len(v), dtype=A.dtype, device=A.device)
    x = torch.linalg.solve(A, v)
    res = float((A @ x - v).norm() / v.norm()) if v.norm() > 0 else 0.0
    return x, {"hvps": len(v), "residual": res, "matrix": A}


def cg_solve(hvp_fn: HVPFn, v: torch.Tensor, damping: float = 0.0, tol: float = 1e-10,
             max_iter: int | None = None, callback: Callable[[int, torch.Tensor], None] | None = None,
             progress: str | None = None):
    """Conjugate gradient for A x = v, A = H + damping I symmetric positive definite.

    x_0 = 0, r_0 = p_0 = v; alpha_k = r_k.r_k / p_k.A p_k; x += alpha p; r -= alpha A p;
    p = r + (r_{k+1}.r_{k+1} / r_k.r_k) p. Stops when ||r_k|| <= tol ||v|| (relative
    residual of the recursively updated r) or after ``max_iter`` (default
    min(max(10 P, 100), 10000)) iterations, one HVP each; a final HVP gives the true
    relative residual ||v - A x|| / ||v||. A direction with p.A p <= 0 raises
    :class:`NotPositiveDefinite` (increase ``damping``); not converging warns.

    ``callback(k, x_k)``, if given, is called after every iteration k >= 1 (x_k must
    not be modified; e.g. to record the error of every iterate against a reference).

    ``progress``: label of progress lines (memgen.progress) on stderr, None: silent. Their
    ETA is to ``max_iter``, an upper bound (``eta <= ...``); the message adds the time to
    ``tol`` extrapolated from the decades of residual gained so far (CG's residual falls
    roughly geometrically), an estimate.

    Returns:
      (x, info) with info: iterations, residual (recursive), true_residual, hvps,
      residual_history (relative, one per iterate incl. x_0), converged.
    """
    A = _damped(hvp_fn, damping)
    P = v.numel()
    max_iter = min(max(10 * P, 100), 10000) if max_iter is None else int(max_iter)
    vnorm = float(v.norm())
    x = torch.zeros_like(v)
    if vnorm == 0:
        return x, {"iterations": 0, "residual": 0.0, "true_residual": 0.0, "hvps": 0,
                   "residual_history": [0.0], "converged": True}
    r = v.clone()
    p = r.clone()
    rho = _dot(r, r)
    hist = [1.0]
    k = 0
    bar = Progress(progress, max_iter, unit="iter", bound=True, message=f"conjugate gradient, P={P}, tol={tol:g}")
    while hist[-1] > tol and k < max_iter:
        Ap = A(p)
        pAp = _dot(p, Ap)
        if not torch.isfinite(pAp) or pAp <= 0:
            raise NotPositiveDefinite(
                f"conjugate gradient: p^T (H + damping I) p = {float(pAp):.3g} <= 0 at iteration {k + 1}; "
                f"H + {damping} I is not positive definite (increase damping)")
        alpha = rho / pAp
        x.add_(p, alpha=float(alpha))
        r.sub_(Ap, alpha=float(alpha))
        new_rho = _dot(r, r)
        p.mul_(float(new_rho / rho)).add_(r)
        rho = new_rho
        k += 1
        hist.append(float(rho.sqrt()) / vnorm)
        if callback is not None:
            callback(k, x)
        if bar.due():
            bar.update(k, _residual_message(hist[-1], tol, bar.elapsed()))
    true_res = float((v - A(x)).norm()) / vnorm
    converged = hist[-1] <= tol
    bar.finish(k, lambda: f"relative residual {hist[-1]:.3g}{'' if converged else ' (not converged)'}")
    if not converged:
        warnings.warn(f"conjugate gradient stopped after {k} iterations at relative residual "
                      f"{hist[-1]:.3g} > tol={tol:g}", RuntimeWarning, stacklevel=3)
    return x, {"iterations": k, "residual": hist[-1], "true_residual": true_res, "hvps": k + 1,
               "residual_history": hist, "converged": converged}


def _residual_message(res: float, tol: float, elapsed: float) -> str:
    """Residual, and the time to ``tol`` at the mean rate in decades per second so far."""
    gained = -math.log10(res) if res > 0 else math.inf
    if not 0 < gained < math.inf or elapsed <= 0:
        return f"residual {res:.3g} (tol {tol:g})"
    left = max(math.log10(res / tol), 0.0) * elapsed / gained
    return f"residual {res:.3g} (tol {tol:g}, ~{format_duration(left)} at this rate)"


def lissa_scale(lambda_max: float, damping: float = 0.0) -> float:
    """Default LiSSA scale s = 1.1 (lambda_max + damping).

    The deterministic recursion converges iff every eigenvalue mu of H + damping I
    satisfies |1 - mu / s| < 1, i.e. 0 < mu < 2 s. With s >= lambda_max + damping all
    mu / s lie in (0, 1], the step matrix I - (H + damping I)/s is PSD with norm < 1 and
    the iterates converge monotonically, at rate 1 - (lambda_min + damping) / s; the
    factor 1.1 covers the power-iteration estimate being below lambda_max (it converges
    from below), and is still safe for an estimate as low as lambda_max / 2.2.
    """
    return 1.1 * (lambda_max + damping)


def lissa_solve(hvp_fn: HVPFn, v: torch.Tensor, damping: float = 0.0, scale: float | None = None,
                depth: int = 1000, repeats: int = 1, batch_hvps: Sequence[HVPFn] | None = None,
                seed: int = 0, lambda_max: float | None = None, record: str = "norm",
                record_every: int = 1, max_growth: float = 1e3,
                callback: Callable[[int, torch.Tensor], bool] | None = None, progress: str | None = None):
    """LiSSA: x = (H + damping I)^{-1} v by the scaled Neumann recursion.

    With scale s and (mini-batch) Hessian estimates H_j (E[H_j] = H),

        h_0 = v,   h_j = v + h_{j-1} - (H_j + damping I) h_{j-1} / s,   x = h_depth / s,

    averaged over ``repeats`` independent runs. With A = H + damping I and H_j = H,
    h_j = sum_{i=0}^{j} (I - A/s)^i v, the truncated Neumann series of (A/s)^{-1} v =
    s A^{-1} v, so x = h/s -> A^{-1} v for every valid s: the damping enters through A/s
    (not as the seed's (1 - damping) h, which solves (H + s damping I) x = v instead),
    hence the answer does not depend on the scale.

    Convergence (deterministic H_j = H): iff |1 - mu/s| < 1 for all eigenvalues mu of A,
    i.e. A positive definite and s > (lambda_max + damping) / 2; error after j steps
    ~ max(|1 - mu/s|)^j. With scale=None, s = :func:`lissa_scale` (1.1 (lambda_max +
    damping)), which converges provably (monotonically). With ``batch_hvps``, each H_j
    is one of them drawn uniformly with a seeded generator (they must average to H, see
    :func:`make_batch_hvps`); then s must also exceed half of every batch's top
    eigenvalue, and the answer carries noise of order 1/s.

    Guards (:class:`LissaDiverged`, a MemgenError, never a silent NaN):
      - before: s <= (lambda_max + damping) / 2, lambda_max estimated by
        :func:`top_eigenvalue` on hvp_fn unless given; also lambda_max + damping <= 0;
      - during: if every step matrix had norm <= 1, ||h_j|| <= (j + 1) ||v||; a
        non-finite h_j or ||h_j|| > max_growth (j + 1) ||v|| means it diverges.

    Args:
      hvp_fn: u (P,) -> H u (P,) (the full Hessian; used for lambda_max and when
        batch_hvps is None).
      v: (P,).
      record: "norm" (||x_j||) or "iterate" (x_j itself) every ``record_every`` steps.
      callback: called as callback(j, x_j) at the recorded steps; returning True ends
        the current repeat there (its estimate is that x_j).
      progress: label of progress lines (memgen.progress) on stderr, over the
        depth * repeats steps; None: silent.

    Returns:
      (x, info) with info: scale, lambda_max, depth, repeats, hvps (incl. the power
      iteration), path_steps (list of j), path (list over repeats of tensors
      (len(path_steps),) of norms or (len(path_steps), P) of iterates; shorter if a
      callback stopped the repeat), steps (list over repeats of steps run),
      estimates (repeats, P).
    """
    if record not in ("norm", "iterate"):
        raise MemgenError(f"lissa: record must be 'norm' or 'iterate', not {record!r}")
    if depth < 1 or repeats < 1:
        raise MemgenError("lissa: depth and repeats must be >= 1")
    hvps = 0
    if lambda_max is None:
        lambda_max, pinfo = top_eigenvalue(hvp_fn, v, iters=200, tol=1e-6, seed=seed, return_info=True)
        hvps += pinfo["hvps"]
    top = lambda_max + damping
    if top <= 0:
        raise LissaDiverged(f"LiSSA diverges for every scale: the top eigenvalue of H + damping I is "
                            f"{top:.4g} <= 0 (H + {damping} I is not positive definite; increase damping)")
    if scale is None:
        scale = lissa_scale(lambda_max, damping)
    if scale <= top / 2:
        raise LissaDiverged(
            f"LiSSA diverges: scale={scale:.4g} <= (lambda_max + damping)/2 = {top / 2:.4g} "
            f"(lambda_max ~ {lambda_max:.4g}); the recursion needs scale > {top / 2:.4g}, "
            f"e.g. scale={lissa_scale(lambda_max, damping):.4g}")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    vnorm = float(v.norm())
    steps = list(range(record_every, depth + 1, record_every))
    if not steps or steps[-1] != depth:
        steps.append(depth)
    record_at = set(steps)
    estimates, paths, used = [], [], []
    bar = Progress(progress, depth * repeats, unit="step", message=f"LiSSA scale={scale:.4g}, depth={depth}, "
                   f"repeats={repeats}{', mini-batch' if batch_hvps is not None else ''}")
    for rep in range(repeats):
        h = v.clone()
        path = []
        for j in range(1, depth + 1):
            H = hvp_fn if batch_hvps is None else batch_hvps[int(torch.randint(len(batch_hvps), (1,), generator=gen))]
            Ah = H(h)
            if damping:
                Ah = Ah + damping * h
            h = v + h - Ah / scale
            hvps += 1
            hn = float(h.norm())
            if not math.isfinite(hn) or hn > max_growth * (j + 1) * vnorm:
                raise LissaDiverged(
                    f"LiSSA diverges: ||h_{j}|| = {hn:.3g} > {max_growth:g} (j+1) ||v|| at step {j} of repeat "
                    f"{rep} with scale={scale:.4g} (lambda_max ~ {lambda_max:.4g}, damping={damping}); "
                    f"H + damping I may not be positive definite (increase damping) or a mini-batch "
                    f"Hessian exceeds 2 scale (try scale={2 * lissa_scale(lambda_max, damping):.4g})")
            if bar.due():
                bar.update(rep * depth + j, f"repeat {rep + 1}/{repeats} ||x_j|| {hn / scale:.4g}")
            if j in record_at:
                path.append(hn / scale if record == "norm" else (h / scale).clone())
                if callback is not None and callback(j, h / scale):
                    break
        used.append(j)
        estimates.append(h / scale)
        paths.append(torch.tensor(path, dtype=torch.float64) if record == "norm" else torch.stack(path))
    bar.finish(sum(used))
    est = torch.stack(estimates)
    info = {"scale": float(scale), "lambda_max": float(lambda_max), "damping": damping, "depth": depth,
            "repeats": repeats, "hvps": hvps, "path_steps": steps, "path": paths, "steps": used,
            "estimates": est}
    return est.mean(0), info


def lissa_unguarded_path(hvp_fn: HVPFn, v: torch.Tensor, scale: float, damping: float = 0.0,
                         depth: int = 100, bound: float = 10.0) -> torch.Tensor:
    """The deterministic LiSSA iterates x_j = h_j / s, j = 1..depth, WITHOUT the guards
    of :func:`lissa_solve` (h_0 = v, h_j = v + h_{j-1} - (H + damping I) h_{j-1} / s),
    stopped at the first step with a non-finite x_j or max |x_j| > ``bound``.

    Only for drawing how a divergent scale (s <= (lambda_max + damping) / 2) leaves:
    returns the iterates up to and including the first one past ``bound``, shape
    (steps, P); use :func:`lissa_solve` for answers.
    """
    h = v.clone()
    out = []
    for _ in range(int(depth)):
        Ah = hvp_fn(h)
        if damping:
            Ah = Ah + damping * h
        h = v + h - Ah / scale
        x = h / scale
        out.append(x.clone())
        if not bool(torch.isfinite(x).all()) or float(x.abs().max()) > bound:
            break
    return torch.stack(out)


# --------------------------------------------------------------------------- training to the optimum


def regularized_loss(model: nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor, l2: float = 0.0) -> torch.Tensor:
    """R(w) = loss_fn(model(x), y) + (l2/2) ||w||^2 (all trainable parameters): the
    objective :func:`influence_on_test_loss` assumes."""
    out = _batch_loss(model, loss_fn, x, y)
    if l2:
        out = out + 0.5 * l2 * sum((p * p).sum() for p in module_params(model))
    return out


def fit(model: nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor, l2: float = 0.0,
        method: str = "lbfgs", tol: float = 1e-10, max_iter: int = 5000, progress: str | None = None) -> dict:
    """Minimize R(w) = mean loss + (l2/2)||w||^2 full batch, in place, from the model's
    current parameters, until ||grad R|| <= tol or ``max_iter`` iterations.

    ``"newton"``: Newton-CG (steps solve H p = grad R by :func:`cg_solve` to relative
    residual 1e-12, backtracking on R; for convex R, quadratic convergence).
    ``"lbfgs"``: scipy's L-BFGS-B (history 20) on float64 copies of w, restarted when it
    stops at the rounding level before the tolerance.
    ``progress``: label of progress lines (memgen.progress) on stderr, their ETA to
    ``max_iter`` an upper bound; None: silent.
    Returns {"grad_norm", "iterations", "loss"}.
    """
    params = module_params(model)
    bar = Progress(progress, max_iter, unit="iter", bound=True,
                   message=f"{method} to ||grad R|| <= {tol:g}, {x.shape[0]} points")

    def objective():
        return regularized_loss(model, loss_fn, x, y, l2)

    def grad_norm():
        g = torch.autograd.grad(objective(), params)
        return float(torch.cat([t.reshape(-1) for t in g]).norm())

    it = 0
    if method == "newton":
        batches = [(x, y)]
        while it < max_iter:
            g = module_gradient(model, loss_fn, batches)
            w = flat_params(model)
            if l2:
                g = g + l2 * w
            if float(g.norm()) <= tol:
                break
            if bar.due():
                bar.update(it, f"||grad R|| {float(g.norm()):.3g}")
            hvp_fn = _damped(make_module_hvp(model, loss_fn, batches, cache_graph=True), l2)
            p, _ = cg_solve(hvp_fn, g, tol=1e-12, max_iter=10 * g.numel())
            with torch.no_grad():
                f0 = float(objective())
            t, decrease = 1.0, float(_dot(g, p))
            while True:
                set_flat_params(model, w - t * p)
                if decrease <= 1e-12 * max(abs(f0), 1e-300):  # below the resolution of R: full step
                    break
                with torch.no_grad():
                    f1 = float(objective())
                if f1 <= f0 - 1e-4 * t * decrease or t < 1e-10:
                    break
                t /= 2
            it += 1
    elif method == "lbfgs":  # scipy's L-BFGS-B (torch.optim would import torch._dynamo: seconds per process)
        from scipy.optimize import minimize

        w0 = flat_params(model)

        def fun(wn):
            set_flat_params(model, torch.from_numpy(wn).to(w0))
            out = objective()
            g = torch.autograd.grad(out, params)
            return float(out.detach()), torch.cat([t.reshape(-1) for t in g]).detach().cpu().double().numpy()

        wn = w0.detach().cpu().double().numpy()
        done = [0]  # L-BFGS-B iterations of this minimize call, for the progress lines only

        def on_iteration(intermediate_result):
            done[0] += 1
            if bar.due():
                bar.update(it + done[0], f"R {intermediate_result.fun:.10g}")

        for _ in range(5):  # L-BFGS-B may stop early on a line search at rounding level: restart
            done[0] = 0
            res = minimize(fun, wn, jac=True, method="L-BFGS-B", callback=on_iteration if bar.active else None,
                           options={"maxiter": max_iter - it, "maxfun": 2 * max_iter, "gtol": tol / math.sqrt(len(wn)),
                                    "ftol": 0.0, "maxcor": 20})
            wn, it = res.x, it + int(res.nit)
            set_flat_params(model, torch.from_numpy(wn).to(w0))
            if grad_norm() <= tol or it >= max_iter or res.nit == 0:
                break
    else:
        raise MemgenError(f"fit: unknown method {method!r} (newton, lbfgs)")
    with torch.no_grad():
        loss = float(objective())
    info = {"grad_norm": grad_norm(), "iterations": int(it), "loss": loss}
    bar.finish(it, lambda: f"||grad R|| {info['grad_norm']:.3g}, R {loss:.10g}")
    return info


def leave_one_out(model: nn.Module, loss_fn, train_x: torch.Tensor, train_y: torch.Tensor,
                  test_x: torch.Tensor, test_y: torch.Tensor, indices: Sequence[int], l2: float = 0.0,
                  **fit_options) -> tuple[torch.Tensor, list[dict]]:
    """Actual L_test(w_{-i}) - L_test(w) for each i in ``indices``: retrain (:func:`fit`,
    warm-started from the model's parameters w, assumed optimal for all n points) on the
    n - 1 other points with the same mean-loss + (l2/2)||w||^2 objective.

    The model's parameters are restored afterwards. Returns (changes (k,), fit infos).
    """
    w = flat_params(model)
    with torch.no_grad():
        base = float(_batch_loss(model, loss_fn, test_x, test_y))
    keep = torch.ones(train_x.shape[0], dtype=torch.bool)
    out, infos = [], []
    try:
        for i in indices:
            keep[:] = True
            keep[int(i)] = False
            set_flat_params(model, w)
            infos.append(fit(model, loss_fn, train_x[keep], train_y[keep], l2=l2, **fit_options))
            with torch.no_grad():
                out.append(float(_batch_loss(model, loss_fn, test_x, test_y)) - base)
    finally:
        set_flat_params(model, w)
    return torch.tensor(out, dtype=torch.float64), infos


# --------------------------------------------------------------------------- influence


@dataclass
class Influence:
    """Influence of every training point on the test loss (shapes: n training points, P params).

    up_loss: (n,) I_up,loss(z_i, z_test) = -g_test^T A^{-1} g_i.
    removal_change: (n,) predicted L_test(w_{-i}) - L_test(w) = +(1/n) g_test^T A^{-1} g_i.
    s_test: (P,) A^{-1} g_test.
    test_grad: (P,) g_test.
    train_grads: (n, P) g_i.
    info: the inverse-HVP solver's info.
    """

    up_loss: torch.Tensor
    removal_change: torch.Tensor
    s_test: torch.Tensor
    test_grad: torch.Tensor
    train_grads: torch.Tensor
    info: dict = field(default_factory=dict)


def influence_on_test_loss(model: nn.Module, loss_fn, train_x: torch.Tensor, train_y: torch.Tensor,
                           test_x: torch.Tensor, test_y: torch.Tensor, damping: float = 0.0,
                           method: str = "cg", l2: float = 0.0, batch_size: int | None = None,
                           cache_graph: bool = False, vectorized: bool = True, **options) -> Influence:
    """Koh & Liang influence functions on the test loss, for every training point.

    Setting: w minimizes R(w) = (1/n) sum_i L(z_i, w), per-point loss
    L(z, w) = l(z, w) + (l2/2) ||w||^2 with l(z, w) = loss_fn(model(x), y) (the
    regularizer is shared by the points, Koh & Liang's convention, so R is the mean
    data loss plus (l2/2)||w||^2). Let g_i = grad L(z_i, w) = grad l(z_i, w) + l2 w,
    g_test = grad of the mean test loss l over (test_x, test_y) (no regularizer), and
    A = H + damping I with H = hess R = H_data + l2 I.

    Up-weighting z_i by eps, w_eps = argmin R + eps L(z_i): 0 = grad R(w_eps) +
    eps g_i(w_eps), so dw/deps = -H^{-1} g_i and

        I_up,loss(z_i, z_test) = d L_test / d eps = -g_test^T H^{-1} g_i.

    Removing z_i is eps = -1/n (the minimizer of (1/n) sum_{j != i} L(z_j), which is the
    mean over the n - 1 remaining points with the same l2), so to first order

        L_test(w_{-i}) - L_test(w) = -(1/n) I_up,loss = +(1/n) g_test^T H^{-1} g_i.

    Positive removal_change: removing z_i raises the test loss (z_i was helpful).
    H is replaced by A (``damping`` > 0 for a non-convex loss); one inverse HVP
    s_test = A^{-1} g_test serves all points (A symmetric): I_up,loss = -G s_test.

    Args:
      model: trained network (P trainable parameters), at w.
      loss_fn: (outputs, targets) -> batch-mean loss.
      train_x, train_y: (n, ...) training set the Hessian averages over.
      test_x, test_y: (m, ...) test point(s); the test loss is their mean.
      damping: added to H in the solve.
      method: inverse_hvp method ("cg", "exact", "lissa"), options passed on.
      l2: coefficient of the (l2/2)||w||^2 regularizer of the training objective.
      batch_size: accumulate the Hessian over training mini-batches of this size.
      cache_graph: keep the gradient graphs between HVPs (:func:`make_module_hvp`).
      vectorized: per-example gradients by torch.func (:func:`per_example_gradients`).

    Returns:
      :class:`Influence`.
    """
    n = train_x.shape[0]
    bs = n if batch_size is None else int(batch_size)
    batches = [(train_x[i:i + bs], train_y[i:i + bs]) for i in range(0, n, bs)]
    data_hvp = make_module_hvp(model, loss_fn, batches, cache_graph=cache_graph)
    hvp_fn = _damped(data_hvp, l2)
    w = flat_params(model)
    g_test = module_gradient(model, loss_fn, [(test_x, test_y)])
    G = per_example_gradients(model, loss_fn, train_x, train_y, vectorized=vectorized)
    if l2:
        G = G + l2 * w
    s_test, info = inverse_hvp(hvp_fn, g_test, method=method, damping=damping, **options)
    up = -(G @ s_test)
    return Influence(up_loss=up, removal_change=-up / n, s_test=s_test, test_grad=g_test,
                     train_grads=G, info=info)
