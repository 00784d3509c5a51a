"""Inverse Hessian-vector products: x = (H + damping I)^{-1} v with H given by hvp_fn.

:func:`inverse_hvp` dispatches to a dense solve (:func:`exact_solve`), conjugate
gradient (:func:`cg_solve`) or LiSSA (:func:`lissa_solve`; Agarwal et al. 2017, as used
by Koh & Liang 2017), each guarded: a direction of non-positive curvature or a
diverging recursion raises (:class:`NotPositiveDefinite`, :class:`LissaDiverged`, both
MemgenError) instead of returning NaN.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, Sequence

import torch

from memgen import MemgenError
from memgen.contracts import choice, function, integer, number, operator, tensor
from memgen.curvature.hvp import HVPFn, _dot, hessian_matrix, top_eigenvalue
from memgen.progress import Progress, format_duration


class LissaDiverged(MemgenError):
    """The LiSSA recursion diverges (scale too small, or H + damping I not positive definite)."""


class NotPositiveDefinite(MemgenError):
    """Conjugate gradient met a direction p with p^T (H + damping I) p <= 0."""


def inverse_hvp(hvp_fn: HVPFn, v: torch.Tensor, method: str = "exact", damping: float = 0.0, **options):
    """Solve (H + damping I) x = v with H given only through hvp_fn.

    Methods (``options`` go to the solver):

    - ``"exact"``: H from P HVPs (:func:`hessian_matrix`), then torch.linalg.solve. For
      small P only (option ``max_dim``, default 4096).
    - ``"cg"``: conjugate gradient, :func:`cg_solve` (tol, max_iter).
    - ``"lissa"``: stochastic Neumann recursion, :func:`lissa_solve` (scale, depth,
      repeats, batch_hvps, seed, lambda_max, record, record_every, max_growth).

    Args:
      hvp_fn: u (P,) -> H u (P,), H symmetric; every output is checked (P entries,
        finite for a finite u: a NaN from hvp_fn is blamed on it, not on the solver)
        and converted to v's dtype.
      v: right-hand side, shape (P,), P >= 1, finite, float32 or float64: the reference
        dtype, so every method returns x in v's dtype.
      damping: lambda >= 0 (finite) added to the diagonal.

    Returns:
      (x, info): x of shape (P,); info a dict with at least ``"method"`` and ``"hvps"``.
    Contract: hvp_fn callable (each output checked: P entries, finite for a finite input,
    converted to v's dtype); v finite float32/float64 (P,), P >= 1 (the reference); damping
    >= 0; method exact, cg or lissa; an option the method does not take is refused.
    """
    _system("inverse_hvp", hvp_fn, v, damping)
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


def _system(caller: str, hvp_fn, v, damping):
    """The checked (hvp_fn, v, damping) of a solve (H + damping I) x = v (see inverse_hvp)."""
    v = tensor(caller, "v", v, ndim=1, finite=True)
    return operator(caller, "hvp_fn", hvp_fn, v), v, number(caller, "damping", damping, lo=0)


def exact_solve(hvp_fn: HVPFn, v: torch.Tensor, damping: float = 0.0, max_dim: int = 4096,
                progress: str | None = None):
    """x = (H + damping I)^{-1} v with H built from P HVPs; info: hvps, residual, matrix.
    Contract as :func:`inverse_hvp` (x in v's dtype); ``max_dim`` >= 1; a singular
    H + damping I raises. ``progress``: label of progress lines (memgen.progress); None: silent."""
    hvp_fn, v, damping = _system("exact_solve", hvp_fn, v, damping)
    max_dim = integer("exact_solve", "max_dim", max_dim, lo=1)
    if v.numel() > max_dim:
        raise MemgenError(f"method='exact' builds the {v.numel()}x{v.numel()} Hessian; "
                          f"P > max_dim={max_dim}: use method='cg' or raise max_dim")
    A = hessian_matrix(hvp_fn, v, progress=progress)
    A = A + damping * torch.eye(len(v), dtype=A.dtype, device=A.device)
    try:
        x = torch.linalg.solve(A, v)
    except torch.linalg.LinAlgError:
        raise MemgenError(f"exact_solve: H + {damping:g} I is singular (method='exact'); increase damping") from None
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

    Contract as :func:`inverse_hvp` (x in v's dtype); ``tol`` >= 0, ``max_iter`` >= 1.

    Returns:
      (x, info) with info: iterations, residual (recursive), true_residual, hvps,
      residual_history (relative, one per iterate incl. x_0), converged.
    """
    hvp_fn, v, damping = _system("cg_solve", hvp_fn, v, damping)
    tol = number("cg_solve", "tol", tol, lo=0)
    max_iter = None if max_iter is None else integer("cg_solve", "max_iter", max_iter, lo=1)
    function("cg_solve", "callback", callback, optional=True)
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
    ``lambda_max`` finite, ``damping`` >= 0.
    Contract: lambda_max finite; damping >= 0.
    """
    return 1.1 * (number("lissa_scale", "lambda_max", lambda_max) + number("lissa_scale", "damping", damping, lo=0))


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

    Guards (:class:`LissaDiverged`, a MemgenError, never a silent NaN or a silently
    huge answer):
      - before: s <= (lambda_max + damping) / 2, lambda_max estimated by
        :func:`top_eigenvalue` on hvp_fn unless given; also lambda_max + damping <= 0;
      - during: if every step matrix had norm <= 1, ||h_j|| <= (j + 1) ||v||; a
        non-finite h_j or ||h_j|| > max_growth (j + 1) ||v|| means it diverges;
      - during, deterministic runs (``batch_hvps`` None): the increments
        h_j - h_{j-1} = (I - A/s)^j v never grow in norm when A is positive definite and
        s > (lambda_max + damping)/2 (every eigenvalue of I - A/s lies in (-1, 1)); an
        eigenvalue of A <= 0 (an indefinite H at damping 0) or above 2 s makes them grow
        geometrically. An increment more than 0.1% above the smallest one so far, plus
        a rounding floor max(1000 eps, 1e-5) (||v|| + ||h_{j-1}||) (hvp_fn may round at
        float32), raises at once, before the iterates get large. (Mini-batch increments are noisy: only the growth guard applies there.)
    A NaN in v is refused on entry; a non-finite output of hvp_fn (or of a batch HVP)
    for a finite input is blamed on it (MemgenError), not on the recursion.

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
    Contract: as :func:`inverse_hvp`; scale None or > 0; depth, repeats, record_every
    integers >= 1; record norm or iterate; lambda_max None or finite; max_growth > 0;
    batch_hvps None or a non-empty sequence of callables (outputs checked as hvp_fn's).
    """
    hvp_fn, v, damping = _system("lissa_solve", hvp_fn, v, damping)
    choice("lissa_solve", "record", record, ("norm", "iterate"))
    depth, repeats = integer("lissa_solve", "depth", depth, lo=1), integer("lissa_solve", "repeats", repeats, lo=1)
    record_every = integer("lissa_solve", "record_every", record_every, lo=1)
    scale = None if scale is None else number("lissa_solve", "scale", scale, lo=0, lo_open=True)
    lambda_max = None if lambda_max is None else number("lissa_solve", "lambda_max", lambda_max)
    max_growth = number("lissa_solve", "max_growth", max_growth, lo=0, lo_open=True)
    function("lissa_solve", "callback", callback, optional=True)
    if batch_hvps is not None:
        if isinstance(batch_hvps, (str, bytes)) or not isinstance(batch_hvps, Sequence) or not batch_hvps:
            raise MemgenError(f"lissa_solve: batch_hvps is {type(batch_hvps).__name__}; expected a non-empty "
                              "sequence of callables (or None)")
        batch_hvps = [operator("lissa_solve", f"batch_hvps[{i}]", f, v) for i, f in enumerate(batch_hvps)]
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
    slack = max(1e3 * torch.finfo(v.dtype).eps, 1e-5)  # rounding of hvp_fn (float32 inside a float64 solve: ~1e-7)
    steps = list(range(record_every, depth + 1, record_every))
    if not steps or steps[-1] != depth:
        steps.append(depth)
    record_at = set(steps)
    estimates, paths, used = [], [], []
    bar = Progress(progress, depth * repeats, unit="step", message=f"LiSSA scale={scale:.4g}, depth={depth}, "
                   f"repeats={repeats}{', mini-batch' if batch_hvps is not None else ''}")
    for rep in range(repeats):
        h = v.clone()
        path, least = [], math.inf
        for j in range(1, depth + 1):
            h_prev = h
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
            if batch_hvps is None:  # deterministic: the increments (I - A/s)^j v never grow (docstring)
                step = float((h - h_prev).norm())
                if step > 1.001 * least + slack * (vnorm + float(h_prev.norm())):
                    raise LissaDiverged(
                        f"LiSSA diverges: the increment ||h_{j} - h_{j - 1}|| = {step:.3g} grew above its smallest "
                        f"value {least:.3g} at step {j} of repeat {rep} (scale={scale:.4g}, lambda_max ~ "
                        f"{lambda_max:.4g}, damping={damping}); it never grows when H + damping I is positive "
                        f"definite and scale > (lambda_max + damping)/2: H + {damping} I is not positive "
                        f"definite (an eigenvalue <= 0; increase damping) or scale is too small")
                least = min(least, step)
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
    (steps, P); use :func:`lissa_solve` for answers. Contract as :func:`inverse_hvp`;
    ``scale`` > 0, ``depth`` >= 1, ``bound`` > 0.
    """
    hvp_fn, v, damping = _system("lissa_unguarded_path", hvp_fn, v, damping)
    scale = number("lissa_unguarded_path", "scale", scale, lo=0, lo_open=True)
    depth = integer("lissa_unguarded_path", "depth", depth, lo=1)
    bound = number("lissa_unguarded_path", "bound", bound, lo=0, lo_open=True)
    h = v.clone()
    out = []
    for _ in range(depth):
        Ah = hvp_fn(h)
        if damping:
            Ah = Ah + damping * h
        h = v + h - Ah / scale
        x = h / scale
        out.append(x.clone())
        if not bool(torch.isfinite(x).all()) or float(x.abs().max()) > bound:
            break
    return torch.stack(out)
