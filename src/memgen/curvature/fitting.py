"""Training a module to the optimum of mean loss + (l2/2)||w||^2 (the point influence
functions assume)."""

from __future__ import annotations

import math

import torch
from torch import nn

from memgen.contracts import choice, integer, number
from memgen.curvature.hvp import _dot
from memgen.curvature.modules import (_batch_loss, _sizes, flat_params, make_module_hvp, module_gradient,
                                      module_params, set_flat_params)
from memgen.curvature.solvers import _damped, cg_solve
from memgen.progress import Progress


def regularized_loss(model: nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor, l2: float = 0.0) -> torch.Tensor:
    """R(w) = loss_fn(model(x), y) + (l2/2) ||w||^2 (all trainable parameters): the
    objective :func:`influence_on_test_loss` assumes. Contract: the module contract of
    :mod:`memgen.curvature.modules` for the batch (x, y); ``l2`` >= 0."""
    ((x, y),), _, _ = _sizes("regularized_loss", model, loss_fn, [(x, y)], ("x", "y"))
    l2 = number("regularized_loss", "l2", l2, lo=0)
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
    Contract: the module contract of :mod:`memgen.curvature.modules` for (x, y);
    ``l2`` >= 0, ``method`` "newton" or "lbfgs", ``tol`` >= 0, ``max_iter`` >= 1.
    Returns {"grad_norm", "iterations", "loss"}.
    """
    ((x, y),), _, _ = _sizes("fit", model, loss_fn, [(x, y)], ("x", "y"))
    l2, tol = number("fit", "l2", l2, lo=0), number("fit", "tol", tol, lo=0)
    choice("fit", "method", method, ("newton", "lbfgs"))
    max_iter = integer("fit", "max_iter", max_iter, lo=1)
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
    with torch.no_grad():
        loss = float(objective())
    info = {"grad_norm": grad_norm(), "iterations": int(it), "loss": loss}
    bar.finish(it, lambda: f"||grad R|| {info['grad_norm']:.3g}, R {loss:.10g}")
    return info
