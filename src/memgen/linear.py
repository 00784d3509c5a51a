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
Every function checks its contract on entry (:mod:`memgen.contracts`; MemgenError
naming the argument). The diagnostics (:func:`group_weight_error`,
:func:`two_layer_jacobian`, :func:`jacobian_spectrum`, :func:`jacobian_spectra`) live in
:mod:`memgen.linear_diagnostics` and are re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from memgen import MemgenError
from memgen import contracts as c
from memgen.progress import Progress

DTYPE = torch.float64


def _t(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a) if not torch.is_tensor(a) else a, dtype=DTYPE)


_arg = c.float64_tensor


def _per_feature(fn: str, name: str, a, d: int, **checks) -> torch.Tensor:
    """None (ones), one number or d numbers (:func:`memgen.contracts.per_feature`), (d,)."""
    return torch.from_numpy(c.per_feature(fn, name, a, d, default=1.0, **checks))


def two_group_scales(d: int, kappa: float, frac: float = 0.5, sizes: Sequence[int] | None = None,
                     s_fast: float = 1.0) -> torch.Tensor:
    """Feature scales of two groups: ``d1`` features of scale ``s_fast``, then ``d2`` of
    scale ``s_fast / sqrt(kappa)`` (eigenvalue ratio ``kappa``).

    ``sizes=(d1, d2)`` wins over ``frac`` (``d1 = round(frac * d)``). Contract: d >= 1,
    kappa > 0, s_fast > 0, frac in [0, 1].
    """
    d = c.integer("two_group_scales", "d", d, lo=1)
    kappa = c.number("two_group_scales", "kappa", kappa, lo=0, lo_open=True)
    s_fast = c.number("two_group_scales", "s_fast", s_fast, lo=0, lo_open=True)
    if sizes is not None:
        d1, d2 = (int(v) for v in sizes)
        if d1 + d2 != d or d1 < 0 or d2 < 0:
            raise MemgenError(f"two_group_scales: sizes {tuple(sizes)} do not split d={d}")
    else:
        frac = c.number("two_group_scales", "frac", frac, lo=0, hi=1)
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
    Contract: n, d >= 1; s >= 0 and theta finite (one number or d); noise_std >= 0;
    batch None or >= 1.
    """
    fn = "linear_teacher"
    n, d = c.integer(fn, "n", n, lo=1), c.integer(fn, "d", d, lo=1)
    s, theta = _per_feature(fn, "s", s, d, lo=0), _per_feature(fn, "theta", theta, d)
    noise_std = c.number(fn, "noise_std", noise_std, lo=0)
    batch = None if batch is None else c.integer(fn, "batch", batch, lo=1)
    gen = torch.Generator().manual_seed(c.integer(fn, "seed", seed))
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
    """``sum_i s_i^2 (w_i - theta_i)^2 + noise_std^2`` over the last axis of w. Contract: w
    (..., d), d >= 1, real (a diverged run's non-finite weights give a non-finite risk,
    which its caller records as diverged); s and theta one number or (d,); noise_std >= 0."""
    w = _arg("population_risk", "w", w, ndim=range(1, 8), finite=False)
    d = w.shape[-1]
    s, theta = (_per_feature("population_risk", k, a, d) for k, a in (("s", s), ("theta", theta)))
    return _risk(w, s, theta, c.number("population_risk", "noise_std", noise_std, lo=0))


def _risk(w, s, theta, noise_std: float) -> torch.Tensor:
    """population_risk without checks (a diverged run's non-finite weights give NaN risk)."""
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
    Contract: X finite (..., n, d), n, d >= 1, y finite (..., n); steps an integer >= 0;
    lr one number or (d,), >= 0; w0 None, (d,) or (..., d); ``record`` integers in
    [0, steps].
    """
    fn = "linear_gd"
    X = _arg(fn, "X", X, ndim=range(2, 8))
    y = _arg(fn, "y", y, X.shape[:-1])
    steps = c.integer(fn, "steps", steps, lo=0)
    A, b = _normal_equations(X, y)
    d = A.shape[-1]
    lr = _arg(fn, "lr", lr, lo=0, ndim=(0, 1))
    if lr.ndim and lr.shape[-1] != d:
        raise MemgenError(f"linear_gd: lr has {lr.shape[-1]} entries for d={d} features")
    if w0 is not None:
        w0 = _arg(fn, "w0", w0, ndim=range(0, 8))
        if w0.ndim and torch.broadcast_shapes(w0.shape, b.shape) != b.shape:
            raise c.fail(fn, "w0", f"of shape {tuple(w0.shape)}", f"(d,) or {tuple(b.shape)}")
    w = torch.zeros(b.shape, dtype=DTYPE) if w0 is None else _t(w0).expand(b.shape).clone()
    want = range(steps + 1) if record is None else sorted({c.integer(fn, "record", k) for k in record})
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
    Contract: s finite (d,) with s_i != 0 (lr_i = rate / s_i^2).
    """
    s2 = _arg("per_group_step_sizes", "s", s, ndim=1) ** 2
    if not bool((s2 > 0).all()):
        raise c.fail("per_group_step_sizes", "s", "zero in some entry", "feature scales s_i != 0 (lr_i = rate / s_i^2)")
    if groups is not None:
        labels = np.asarray(groups)
        if labels.shape != (s2.shape[0],):
            raise MemgenError("per_group_step_sizes: need one group label per feature")
        for g in np.unique(labels):
            m = torch.as_tensor(labels == g)
            s2[m] = s2[m].mean()
    if not 0 < c.number("per_group_step_sizes", "rate", rate) < 2:
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
    Contract: d, p >= 1; scale >= 0 (one number or a pair).
    """
    d, p = c.integer("two_layer_init", "d", d, lo=1), c.integer("two_layer_init", "p", p, lo=1)
    sw, sv = c.pair("two_layer_init", "scale", scale, lo=0)
    gen = torch.Generator().manual_seed(c.integer("two_layer_init", "seed", seed))
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
    Contract: X finite (n, d), y finite (n,); s, theta one number or (d,); noise_std >= 0;
    steps an integer >= 0; lr > 0 (one or a pair); W0 (p, d) and v0 (p,) both or neither.
    """
    fn = "train_two_layer"
    X, y = map(torch.from_numpy, c.design(fn, X, y))
    n, d = X.shape
    s, theta = _per_feature(fn, "s", s, d, lo=0), _per_feature(fn, "theta", theta, d)
    noise_std, steps = c.number(fn, "noise_std", noise_std, lo=0), c.integer(fn, "steps", steps, lo=0)
    lr_W, lr_v = c.pair(fn, "lr", lr, lo=0, lo_open=True)
    if (W0 is None) != (v0 is None):
        raise c.fail(fn, "W0" if W0 is None else "v0", "None", "W0 and v0 both given or both None")
    if W0 is None:
        W0, v0 = two_layer_init(d, p, init, scale, seed)
    W0, v0 = map(torch.from_numpy, c.layers(fn, W0, v0, d, ("W0", "v0")))
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
    risk = _risk(ws, s, theta, noise_std)
    # 1/(2n)||Xw - y||^2 = (w^T A w - 2 b^T w + y^T y / n) / 2
    loss = 0.5 * (((ws @ A) * ws).sum(-1) - 2 * ws @ b + yy)
    return TwoLayerRun(risk=risk, loss=loss, w=ws, W=W, v=v, W0=_t(W0), v0=_t(v0))


def two_group_teacher(d_fast: int, d_slow: int, kappa: float, theta_fast: float, theta_slow: float,
                      s_fast: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature scales and teacher of the two-group problem: ``(s, theta)`` with
    ``s = two_group_scales(d_fast + d_slow, kappa, sizes=(d_fast, d_slow))`` and theta
    equal to ``theta_fast`` on the large-eigenvalue group, ``theta_slow`` on the small.
    Contract: d_fast, d_slow >= 0 with d_fast + d_slow >= 1; theta_fast, theta_slow finite."""
    fn = "two_group_teacher"
    d_fast, d_slow = c.integer(fn, "d_fast", d_fast, lo=0), c.integer(fn, "d_slow", d_slow, lo=0)
    theta_fast, theta_slow = c.number(fn, "theta_fast", theta_fast), c.number(fn, "theta_slow", theta_slow)
    s = two_group_scales(d_fast + d_slow, kappa, sizes=(d_fast, d_slow), s_fast=s_fast)
    theta = torch.cat([torch.full((d_fast,), float(theta_fast), dtype=DTYPE),
                       torch.full((d_slow,), float(theta_slow), dtype=DTYPE)])
    return s, theta


def logged_steps(steps: int, count: int) -> np.ndarray:
    """Step 0 and about ``count`` log-spaced steps in [1, steps] (integers, unique, sorted,
    the last one ``steps``): where runs record their state. Contract: steps an integer
    >= 0, count >= 1."""
    steps, count = c.integer("logged_steps", "steps", steps, lo=0), c.integer("logged_steps", "count", count, lo=1)
    if steps < 1:
        return np.zeros(1, dtype=np.int64)
    k = np.unique(np.r_[0, np.rint(np.geomspace(1, steps, max(int(count), 2))).astype(np.int64), steps])
    return k


from memgen.linear_diagnostics import (group_weight_error, jacobian_spectra, jacobian_spectrum,  # noqa: E402,F401
                                       two_layer_jacobian)
