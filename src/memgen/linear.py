"""Linear teacher, gradient descent on linear models and two-layer linear networks.

The family of Heckel & Yilmaz, "Early stopping in deep networks: double descent and how
to eliminate it" (ICLR 2021), and Advani & Saxe, "High-dimensional dynamics of
generalization error in neural networks" (2017/2020), as explored in the
MLI-lab/early_stopping_double_descent fork (seed 004). memgen's own code.

Data model (used by every function here and by :mod:`memgen.theory`)
---------------------------------------------------------------------
- Features ``x in R^d`` with independent coordinates ``x_i ~ N(0, s_i^2)``: the
  *feature scales* ``s`` are standard deviations, the population covariance is
  ``Sigma = diag(s^2)`` (its eigenvalues are ``s_i^2``).
- Labels ``y = <theta, x> + eps`` with ``eps ~ N(0, noise_std^2)`` independent of x.
- Population (test) risk of a linear predictor w:
  ``R(w) = E (y - <w, x>)^2 = sum_i s_i^2 (w_i - theta_i)^2 + noise_std^2``
  (:func:`population_risk`; no test set is ever needed).
- Training loss (the *mean* convention, for every optimiser here):
  ``L(w) = 1/(2n) ||X w - y||^2``; one full-batch GD step of step size ``lr`` is
  ``w <- w - lr * X^T (X w - y) / n``. (The seed's torch code uses
  ``MSELoss(reduction='sum')`` = ``||Xw - y||^2`` without the 1/2: its step size
  ``lr_seed`` equals ``lr / (2n)`` here.)

Two-group spectra (:func:`two_group_scales`): ``kappa`` is the ratio of the two
covariance *eigenvalues*, ``s_fast^2 / s_slow^2 = kappa`` (scales 1 and
``1/sqrt(kappa)``). Caution: the seed's ``get_modulation_matrix`` multiplies the
*singular values* by kappa, so the seed's ``--kappa 10`` is ``kappa = 100`` here.

``decoupled=True`` (the seed's ``transform_data``): the training design is drawn so that
its empirical covariance is exactly the population one, ``X^T X / n = diag(s^2)``
(``X = sqrt(n) Q diag(s)``, Q an n x d Haar-random matrix with orthonormal columns; each
row is then still mean zero with covariance diag(s^2)). GD then decouples exactly
feature by feature and :func:`memgen.theory.linear_gd_risk` is exact.

All tensors are torch float64 (as in :mod:`memgen.data`); numpy input is accepted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from memgen import MemgenError
from memgen.progress import Progress

DTYPE = torch.float64


def _t(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a) if not torch.is_tensor(a) else a, dtype=DTYPE)


def two_group_scales(d: int, kappa: float, frac: float = 0.5, sizes: Sequence[int] | None = None,
                     s_fast: float = 1.0) -> torch.Tensor:
    """Feature scales of two groups: ``d1`` features of scale ``s_fast``, then ``d2`` of
    scale ``s_fast / sqrt(kappa)`` (eigenvalue ratio ``kappa``).

    ``sizes=(d1, d2)`` wins over ``frac`` (``d1 = round(frac * d)``).
    """
    if kappa <= 0:
        raise MemgenError(f"two_group_scales: kappa must be > 0, got {kappa}")
    if sizes is not None:
        d1, d2 = (int(v) for v in sizes)
        if d1 + d2 != d or d1 < 0 or d2 < 0:
            raise MemgenError(f"two_group_scales: sizes {tuple(sizes)} do not split d={d}")
    else:
        if not 0 <= frac <= 1:
            raise MemgenError(f"two_group_scales: frac must lie in [0, 1], got {frac}")
        d1 = int(round(frac * d))
        d2 = d - d1
    return torch.cat([torch.full((d1,), float(s_fast), dtype=DTYPE),
                      torch.full((d2,), float(s_fast) / float(np.sqrt(kappa)), dtype=DTYPE)])


def linear_teacher(n: int, d: int, s=None, theta=None, noise_std: float = 0.0, seed: int = 0,
                   decoupled: bool = False, batch: int | None = None):
    """Training set ``(X, y)`` of the linear teacher (see the module docstring).

    ``s``: feature scales (length d; default all ones; a scalar broadcasts).
    ``theta``: teacher (default all ones). ``batch``: draw that many independent data sets
    at once, shapes (batch, n, d) and (batch, n) (used for Monte-Carlo averages).
    ``decoupled=True`` needs ``n >= d`` and gives ``X^T X / n = diag(s^2)`` exactly.
    """
    s = torch.ones(d, dtype=DTYPE) if s is None else _t(s).expand(d).clone()
    theta = torch.ones(d, dtype=DTYPE) if theta is None else _t(theta).expand(d).clone()
    gen = torch.Generator().manual_seed(int(seed))
    shape = (n, d) if batch is None else (batch, n, d)
    g = torch.randn(shape, generator=gen, dtype=DTYPE)
    if decoupled:
        if n < d:
            raise MemgenError(f"linear_teacher: decoupled data needs n >= d, got n={n}, d={d}")
        q, r = torch.linalg.qr(g)  # (…, n, d) orthonormal columns
        # sign fix makes Q Haar distributed
        q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)
        X = q * (float(np.sqrt(n)) * s)
    else:
        X = g * s
    eps = torch.randn(shape[:-1], generator=gen, dtype=DTYPE) * float(noise_std)
    y = X @ theta + eps
    return X, y


def population_risk(w, s, theta, noise_std: float = 0.0) -> torch.Tensor:
    """``sum_i s_i^2 (w_i - theta_i)^2 + noise_std^2`` over the last axis of w."""
    w = _t(w)
    return ((w - _t(theta)) ** 2 * _t(s) ** 2).sum(-1) + float(noise_std) ** 2


def _normal_equations(X, y):
    X, y = _t(X), _t(y)
    n = X.shape[-2]
    A = X.transpose(-1, -2) @ X / n
    b = (X.transpose(-1, -2) @ y.unsqueeze(-1)).squeeze(-1) / n
    return A, b


def linear_gd(X, y, steps: int, lr, w0=None, record: Sequence[int] | None = None,
              progress: str | None = None) -> torch.Tensor:
    """Full-batch GD on ``L(w) = 1/(2n) ||X w - y||^2``:
    ``w_{k+1} = w_k - lr * X^T (X w_k - y) / n``.

    ``lr``: scalar or one step size per feature (a diagonal preconditioner).
    ``X`` may carry leading batch axes (…, n, d) with y (…, n): independent runs.
    Returns the weights at steps ``0..steps`` (shape (steps+1, …, d)), or only at the
    steps listed in ``record`` (shape (len(record), …, d)). ``w0`` defaults to zero.
    ``progress``: label of progress lines (memgen.progress) on stderr; None: silent.
    """
    A, b = _normal_equations(X, y)
    d = A.shape[-1]
    lr = _t(lr)
    if lr.ndim and lr.shape[-1] != d:
        raise MemgenError(f"linear_gd: lr has {lr.shape[-1]} entries for d={d} features")
    w = torch.zeros(b.shape, dtype=DTYPE) if w0 is None else _t(w0).expand(b.shape).clone()
    want = range(steps + 1) if record is None else sorted({int(k) for k in record})
    if want and (min(want) < 0 or max(want) > steps):
        raise MemgenError(f"linear_gd: record steps must lie in [0, {steps}]")
    wanted = set(want)
    # numpy inside: batched small mat-vecs are several times faster than torch.bmm on CPU
    A_, b_, w_, lr_ = A.numpy(), b.numpy(), w.numpy().copy(), lr.numpy()
    out = []
    runs = int(np.prod(b.shape[:-1]))
    bar = Progress(progress, steps, unit="step", message=f"{runs} run(s), d={d}")
    for k in range(steps + 1):
        if k in wanted:
            out.append(w_.copy())
        if k == steps:
            break
        grad = np.einsum("...ij,...j->...i", A_, w_) - b_
        w_ -= lr_ * grad
        bar.update(k + 1)
    bar.finish(steps)
    return torch.from_numpy(np.stack(out))


def per_group_step_sizes(s, rate: float = 0.5, groups: Sequence[int] | None = None) -> torch.Tensor:
    """Per-feature step sizes ``lr_i = rate / s_i^2`` that give every feature the same
    contraction factor ``1 - lr_i s_i^2 = 1 - rate`` per GD step.

    With all features on one time scale the bias-variance trade-offs of the groups
    happen at the same time, which removes epoch-wise double descent (Heckel & Yilmaz
    2021, Sec. 3). ``groups`` (one label per feature): use the group's mean ``s^2``
    instead of each feature's own (identical for exact two-group spectra).
    ``rate`` must lie in (0, 2) for convergence; 1 solves the decoupled problem in a step.
    """
    s2 = _t(s) ** 2
    if groups is not None:
        labels = np.asarray(groups)
        if labels.shape != (s2.shape[0],):
            raise MemgenError("per_group_step_sizes: need one group label per feature")
        for g in np.unique(labels):
            m = torch.as_tensor(labels == g)
            s2[m] = s2[m].mean()
    if not 0 < rate < 2:
        raise MemgenError(f"per_group_step_sizes: rate must lie in (0, 2), got {rate}")
    return rate / s2


# ---------------------------------------------------------------------------------------
# two-layer linear network f(x) = v^T W x
# ---------------------------------------------------------------------------------------


@dataclass
class TwoLayerRun:
    """Per step 0..steps: population risk, training loss 1/(2n)||Xw-y||^2, and the
    end-to-end weights ``w = W^T v``; final layers ``W`` (p, d) and ``v`` (p,)."""

    risk: torch.Tensor
    loss: torch.Tensor
    w: torch.Tensor
    W: torch.Tensor
    v: torch.Tensor
    W0: torch.Tensor
    v0: torch.Tensor


def two_layer_init(d: int, p: int, init: str = "gaussian", scale=0.1, seed: int = 0):
    """Initial layers ``(W, v)`` of f(x) = v^T W x, W of shape (p, d), v of shape (p,).

    ``scale``: one number or (scale_W, scale_v).
    - ``"gaussian"``: i.i.d. ``W_ij ~ N(0, scale_W^2)``, ``v_j ~ N(0, scale_v^2)``.
    - ``"fixed"``: every entry equal, ``W = scale_W``, ``v = scale_v`` (the seed's
      ``fixed_init``); rank one and aligned: end-to-end ``w = p scale_W scale_v 1``.
    - ``"rank_one"``: the seed's ``rank_one_init``: ``a`` a uniform unit vector in R^p,
      ``q ~ N(0, scale_W^2 I_d)``, ``u ~ N(0, scale_v^2)``; ``W = a q^T``, ``v = u a``;
      end-to-end ``w = u q``.
    The last two are exactly rank-one aligned, so GD keeps them so and
    :func:`memgen.theory.two_layer_ode_risk` is the exact (continuous-time) reduction.
    """
    sw, sv = (float(scale), float(scale)) if np.ndim(scale) == 0 else (float(scale[0]), float(scale[1]))
    gen = torch.Generator().manual_seed(int(seed))
    if init == "gaussian":
        W = torch.randn(p, d, generator=gen, dtype=DTYPE) * sw
        v = torch.randn(p, generator=gen, dtype=DTYPE) * sv
    elif init == "fixed":
        W = torch.full((p, d), sw, dtype=DTYPE)
        v = torch.full((p,), sv, dtype=DTYPE)
    elif init == "rank_one":
        a = torch.randn(p, generator=gen, dtype=DTYPE)
        a = a / a.norm()
        q = torch.randn(d, generator=gen, dtype=DTYPE) * sw
        u = torch.randn((), generator=gen, dtype=DTYPE) * sv
        W = torch.outer(a, q)
        v = u * a
    else:
        raise MemgenError(f"two_layer_init: unknown init {init!r} (gaussian, fixed, rank_one)")
    return W, v


def train_two_layer(X, y, s, theta, noise_std: float, steps: int, lr, p: int = 50,
                    init: str = "gaussian", scale=0.1, seed: int = 0, W0=None, v0=None,
                    progress: str | None = None, resume=None) -> TwoLayerRun:
    """Full-batch GD on ``L(W, v) = 1/(2n) sum_k (y_k - v^T W x_k)^2``.

    With ``g = X^T (y - X w) / n`` and ``w = W^T v``, one step is
    ``W <- W + lr_W v g^T``, ``v <- v + lr_v W g`` (both gradients at the old point).
    ``lr``: one step size or (lr_W, lr_v). Initial layers from :func:`two_layer_init`
    unless ``W0``, ``v0`` are given. Risk is the exact population risk of ``W^T v``.
    ``progress``: label of progress lines (memgen.progress) on stderr; None: silent.
    ``resume``: a :class:`memgen.resume.ResumePoint`: the run continues from its saved
    (step, W, v) and saves one as it goes (GD is deterministic: the same arrays).
    """
    X, y = _t(X), _t(y)
    n, d = X.shape
    lr_W, lr_v = (float(lr), float(lr)) if np.ndim(lr) == 0 else (float(lr[0]), float(lr[1]))
    if W0 is None or v0 is None:
        W0, v0 = two_layer_init(d, p, init, scale, seed)
    W, v = _t(W0).clone(), _t(v0).clone()
    A, b = _normal_equations(X, y)
    yy = float(y @ y) / n
    ws = torch.empty(steps + 1, d, dtype=DTYPE)
    saved = resume.load() if resume is not None else None
    start = 0
    if saved is not None:
        start = saved["count"]
        W, v = torch.from_numpy(saved["W"]), torch.from_numpy(saved["v"])
        ws[:start] = torch.from_numpy(saved["ws"])
    bar = Progress(progress, steps, unit="step", initial=start, message=f"n={n} d={d} p={W.shape[0]}")
    for k in range(start, steps + 1):
        w = W.T @ v
        ws[k] = w
        if k == steps:
            break
        g = b - A @ w
        W, v = W + lr_W * torch.outer(v, g), v + lr_v * (W @ g)
        bar.update(k + 1)
        if resume is not None:  # k + 1 steps done: W, v are the state at step k + 1
            resume.checkpoint(k + 1, lambda: {"W": W.numpy(), "v": v.numpy(), "ws": ws[:k + 1].numpy()})
    bar.finish(steps)
    risk = population_risk(ws, s, theta, noise_std)
    # 1/(2n)||Xw - y||^2 = (w^T A w - 2 b^T w + y^T y / n) / 2
    loss = 0.5 * (((ws @ A) * ws).sum(-1) - 2 * ws @ b + yy)
    return TwoLayerRun(risk=risk, loss=loss, w=ws, W=W, v=v, W0=_t(W0), v0=_t(v0))


# ---------------------------------------------------------------------------------------
# diagnostics: per-group weight errors, the Jacobian of the two-layer network
# ---------------------------------------------------------------------------------------


def group_weight_error(w, theta, sizes: Sequence[int]) -> torch.Tensor:
    """The seed's "MSE weights" per group: the mean over each group of features of
    ``((w_i - theta_i) / theta_i)^2`` (relative squared error of the end-to-end weights).

    ``w``: (..., d); ``sizes = (d1, d2, ...)`` splits the features in order (for
    :func:`two_group_scales`: the large-eigenvalue group first). Returns (..., len(sizes)).
    ``theta_i`` must be nonzero.
    """
    w, theta = _t(w), _t(theta)
    if sum(int(k) for k in sizes) != w.shape[-1]:
        raise MemgenError(f"group_weight_error: sizes {tuple(sizes)} do not split d={w.shape[-1]}")
    if bool((theta == 0).any()):
        raise MemgenError("group_weight_error: theta has zero entries (relative error undefined)")
    rel = ((w - theta) / theta) ** 2
    return torch.stack([part.mean(-1) for part in torch.split(rel, [int(k) for k in sizes], dim=-1)], dim=-1)


def two_layer_jacobian(X, W, v) -> torch.Tensor:
    """Jacobian of the outputs ``f(x_k) = v^T W x_k`` on the rows of X with respect to the
    parameters, shape (n, p*d + p): first ``df/dW_jl = v_j x_kl`` (W flattened row-major),
    then ``df/dv_j = (W x_k)_j``. (The seed's ``get_jacobian_two_layer`` keeps the W block
    only: it skips parameters with fewer than 2 dimensions, but torch's second layer
    weight is (1, p), so both blocks are in; same columns up to order.)
    """
    X, W, v = _t(X), _t(W), _t(v)
    n = X.shape[0]
    JW = (v[None, :, None] * X[:, None, :]).reshape(n, -1)
    return torch.cat([JW, X @ W.T], dim=1)


def jacobian_spectrum(X, W, v) -> tuple[torch.Tensor, torch.Tensor]:
    """Singular values of :func:`two_layer_jacobian` (descending, min(n, p*d + p) of
    them) and, per right singular vector, the share of its squared norm on the W block
    (the seed's ``v1^2 / (v1^2 + v2^2)``; 1 - share lies on v).

    ``J J^T = ||v||^2 X X^T + X W^T W X^T``: the first term is the second layer's, the
    second the first layer's contribution to the network's tangent kernel.
    """
    J = two_layer_jacobian(X, W, v)
    _, sv, Vh = torch.linalg.svd(J, full_matrices=False)
    pd = _t(W).numel()
    share = (Vh[:, :pd] ** 2).sum(-1) / (Vh**2).sum(-1)
    return sv, share


def jacobian_spectra(X, run: TwoLayerRun):
    """:func:`jacobian_spectrum` of a :class:`TwoLayerRun` at init and at the end:
    (sv_init, share_init, sv_final, share_final, diverged). A run whose risk or layers are
    not finite (GD diverged) has no final spectrum (the SVD refuses non-finite input):
    NaN of the init's shapes, and ``diverged`` True."""
    sv0, share0 = jacobian_spectrum(X, run.W0, run.v0)
    diverged = not (torch.isfinite(run.risk).all() and torch.isfinite(run.W).all() and torch.isfinite(run.v).all())
    sv1, share1 = ((torch.full_like(sv0, torch.nan), torch.full_like(share0, torch.nan)) if diverged
                   else jacobian_spectrum(X, run.W, run.v))
    return sv0, share0, sv1, share1, diverged


def two_group_teacher(d_fast: int, d_slow: int, kappa: float, theta_fast: float, theta_slow: float,
                      s_fast: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature scales and teacher of the two-group problem: ``(s, theta)`` with
    ``s = two_group_scales(d_fast + d_slow, kappa, sizes=(d_fast, d_slow))`` and theta
    equal to ``theta_fast`` on the large-eigenvalue group, ``theta_slow`` on the small."""
    s = two_group_scales(d_fast + d_slow, kappa, sizes=(d_fast, d_slow), s_fast=s_fast)
    theta = torch.cat([torch.full((d_fast,), float(theta_fast), dtype=DTYPE),
                       torch.full((d_slow,), float(theta_slow), dtype=DTYPE)])
    return s, theta


def logged_steps(steps: int, count: int) -> np.ndarray:
    """Step 0 and about ``count`` log-spaced steps in [1, steps] (integers, unique, sorted,
    the last one ``steps``): where runs record their state."""
    if steps < 1:
        return np.zeros(1, dtype=np.int64)
    k = np.unique(np.r_[0, np.rint(np.geomspace(1, steps, max(int(count), 2))).astype(np.int64), steps])
    return k
