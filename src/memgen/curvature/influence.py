"""Influence functions (Koh & Liang 2017) and the leave-one-out retraining they predict."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import nn

from memgen.contracts import choice, fail, integer, number
from memgen.curvature.fitting import fit
from memgen.curvature.modules import (_batch_loss, _sizes, flat_params, make_module_hvp, module_gradient,
                                      per_example_gradients, set_flat_params)
from memgen.curvature.solvers import _damped, inverse_hvp
from memgen.progress import Progress


def leave_one_out(model: nn.Module, loss_fn, train_x: torch.Tensor, train_y: torch.Tensor,
                  test_x: torch.Tensor, test_y: torch.Tensor, indices: Sequence[int], l2: float = 0.0,
                  progress: str | None = None, resume=None, **fit_options) -> tuple[torch.Tensor, list[dict]]:
    """Actual L_test(w_{-i}) - L_test(w) for each i in ``indices``: retrain (:func:`fit`,
    warm-started from the model's parameters w, assumed optimal for all n points) on the
    n - 1 other points with the same mean-loss + (l2/2)||w||^2 objective.

    The model's parameters are restored afterwards. ``progress``: label of progress lines
    (one per retraining) on stderr; None: silent. ``resume``: a
    :class:`memgen.resume.ResumePoint`; the retrainings already done are taken from it
    and a resume point is saved after each (every retraining starts from w, so the rest
    does not depend on when the run was cut). Returns (changes (k,), fit infos).
    Contract: the module contract of :mod:`memgen.curvature.modules` for the training
    and the test set (n >= 2 training points), ``indices`` integers in [0, n), ``l2`` >= 0.
    """
    ((train_x, train_y),), _, n = _sizes("leave_one_out", model, loss_fn, [(train_x, train_y)], ("train_x", "train_y"))
    ((test_x, test_y),), _, _ = _sizes("leave_one_out", model, loss_fn, [(test_x, test_y)], ("test_x", "test_y"))
    if n < 2:
        raise fail("leave_one_out", "train_x", f"{n} training point", "n >= 2 (one is left out)")
    indices = [integer("leave_one_out", "indices", i, lo=0, hi=n - 1) for i in indices]
    l2 = number("leave_one_out", "l2", l2, lo=0)
    w = flat_params(model)
    with torch.no_grad():
        base = float(_batch_loss(model, loss_fn, test_x, test_y))
    keep = torch.ones(train_x.shape[0], dtype=torch.bool)
    saved = resume.load() if resume is not None else None
    out = [float(v) for v in saved["change"]] if saved else []
    infos = [{"grad_norm": float(g), "iterations": int(i), "loss": float(v)}
             for g, i, v in zip(saved["grad_norm"], saved["iterations"], saved["loss"])] if saved else []
    bar = Progress(progress, len(indices), unit="retrain", initial=len(out),
                   message=f"leave-one-out retrainings of {len(keep)} points")

    def state():
        return {"change": np.array(out), **{k: np.array([f[k] for f in infos]) for k in ("grad_norm", "iterations",
                                                                                       "loss")}}

    try:
        for k in range(len(out), len(indices)):
            i = int(indices[k])
            keep[:] = True
            keep[i] = False
            set_flat_params(model, w)
            infos.append(fit(model, loss_fn, train_x[keep], train_y[keep], l2=l2, **fit_options))
            with torch.no_grad():
                out.append(float(_batch_loss(model, loss_fn, test_x, test_y)) - base)
            bar.update(k + 1, f"point {i}: change {out[-1]:.4g}, ||grad R|| {infos[-1]['grad_norm']:.2g}")
            if resume is not None:
                resume.checkpoint(k + 1, state)
    finally:
        set_flat_params(model, w)
    bar.finish()
    return torch.tensor(out, dtype=torch.float64), infos


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

    Contract: the module contract of :mod:`memgen.curvature.modules` for the training
    and the test set; ``damping``, ``l2`` >= 0; ``method`` one of inverse_hvp's;
    ``batch_size`` None or >= 1.

    Returns:
      :class:`Influence`.
    """
    ((train_x, train_y),), _, n = _sizes("influence_on_test_loss", model, loss_fn, [(train_x, train_y)],
                                   ("train_x", "train_y"))
    ((test_x, test_y),), _, _ = _sizes("influence_on_test_loss", model, loss_fn, [(test_x, test_y)], ("test_x", "test_y"))
    damping, l2 = number("influence_on_test_loss", "damping", damping, lo=0), number("influence_on_test_loss", "l2", l2, lo=0)
    choice("influence_on_test_loss", "method", method, ("exact", "cg", "lissa"))
    bs = n if batch_size is None else integer("influence_on_test_loss", "batch_size", batch_size, lo=1)
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
