"""Continuous-time dynamics with an adaptive time step.

One generic integrator, :func:`flow` (after mariogeiger/gradientflow): it knows nothing
about networks or kernels. A user supplies

- ``prepare(state) -> data``: what the step control needs at a state (outputs, gradient);
- ``make_step(state, data, dt) -> new_state``: one explicit step of size ``dt``;
- ``compare(data, new_data) -> (ok, relaxed)``: accept the step (``ok``) and whether
  every criterion is under half its limit (``relaxed``, then dt grows by ``grow``).

A rejected step is retried from the same state with dt / ``shrink``. The network
gradient flow, the frozen-kernel flow and any ODE in memgen are thin users of it.

:func:`momentum_step` is the continuous momentum of feature_lazy:
dv/dt = -(v + grad) / tau, dw/dt = v (tau = 0: plain gradient flow), integrated with
the exact exponential factor for v over one step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Generator

import torch

from memgen import MemgenError
from memgen import contracts as c
from memgen.progress import Progress


class FlowDiverged(MemgenError):
    """The step size collapsed below ``min_dt``: the state or its gradient is not finite."""


@dataclass
class FlowStep:
    """One accepted step: counters after it, the new state and its prepared data."""

    step: int
    t: float
    dt: float  # size of the step just taken
    next_dt: float  # size the next step will try first
    rejected: int  # rejected trials before it was accepted
    state: Any
    data: Any


def flow(
    state: Any,
    prepare: Callable[[Any], Any],
    make_step: Callable[[Any, Any, float], Any],
    compare: Callable[[Any, Any], tuple[bool, bool]],
    *,
    t: float = 0.0,
    dt: float = 1.0,
    step: int = 0,
    grow: float = 1.1,
    shrink: float = 10.0,
    min_dt: float = 1e-20,
    data: Any = None,
) -> Generator[FlowStep, None, None]:
    """Integrate forever, yielding after every accepted step (the caller stops it).

    ``t``, ``dt``, ``step`` (and ``data`` = ``prepare(state)``, recomputed when None)
    let a run resume exactly where a saved one stopped.

    Contract (checked when iteration starts: this is a generator): the three functions
    callable; t finite; dt > 0; step an integer >= 0; grow >= 1; shrink > 1; min_dt > 0.
    """
    for name, f in (("prepare", prepare), ("make_step", make_step), ("compare", compare)):
        c.function("flow", name, f)
    t, dt, step = c.number("flow", "t", t), c.number("flow", "dt", dt, lo=0, lo_open=True), c.integer("flow", "step", step, lo=0)
    grow, shrink = c.number("flow", "grow", grow, lo=1), c.number("flow", "shrink", shrink, lo=1, lo_open=True)
    min_dt = c.number("flow", "min_dt", min_dt, lo=0, lo_open=True)
    if data is None:
        data = prepare(state)
    while True:
        rejected = 0
        while True:
            new_state = make_step(state, data, dt)
            new_data = prepare(new_state)
            ok, relaxed = compare(data, new_data)
            if ok:
                break
            rejected += 1
            dt /= shrink
            if dt < min_dt:
                raise FlowDiverged(f"time step fell below {min_dt:g} at t={t:g}, step {step}: non-finite dynamics")
        state, data = new_state, new_data
        step += 1
        t += dt
        taken = dt
        if relaxed:
            dt *= grow
        yield FlowStep(step, t, taken, dt, rejected, state, data)


def momentum_step(w: torch.Tensor, v: torch.Tensor | None, grad: torch.Tensor, dt: float, tau: float):
    """One step of dv/dt = -(v + grad)/tau, dw/dt = v; tau = 0 gives dw/dt = -grad.

    Returns the new (w, v); inputs are not modified. Contract (shapes only: it is the
    training loop's step): grad of w's shape, v too when tau > 0; tau >= 0.
    """
    if not tau >= 0 or grad.shape != w.shape or (tau > 0 and (v is None or v.shape != w.shape)):
        raise MemgenError(f"momentum_step: w {tuple(w.shape)}, v {None if v is None else tuple(v.shape)}, grad "
                          f"{tuple(grad.shape)}, tau {tau}; expected grad (and v when tau > 0) of w's shape, tau >= 0")
    if tau > 0:
        decay = math.exp(-dt / tau)
        v = torch.mul(v, decay).sub_(grad, alpha=1 - decay)
    else:
        v = torch.neg(grad)
    return torch.add(w, v, alpha=dt), v


def relative_change(g: torch.Tensor, g_new: torch.Tensor) -> float:
    """||g - g'||^2 / (||g|| ||g'||), 0 when either is zero (feature_lazy's dgrad).
    Contract (shapes only: the training loop's test): g_new of g's shape."""
    if g.shape != g_new.shape:
        raise c.fail("relative_change", "g_new", f"of shape {tuple(g_new.shape)}", f"g's shape {tuple(g.shape)}")
    n1, n2 = float(g.norm()), float(g_new.norm())
    if n1 == 0 or n2 == 0:
        return 0.0
    d = float(torch.dist(g, g_new))  # ||g - g'||
    return d * d / (n1 * n2)


def loglinspace(rate: float, step: float, end: int | None = None):
    """Integers 0, 1, 2, ... dense at first, then every ~``step`` (upstream schedule).
    Contract (checked at the first value: a generator): rate >= 0, step > 0, end None or >= 0."""
    rate, step = c.number("loglinspace", "rate", rate, lo=0), c.number("loglinspace", "step", step, lo=0, lo_open=True)
    end = None if end is None else c.integer("loglinspace", "end", end, lo=0)
    t = 0
    while end is None or t <= end:
        yield t
        t = int(t + 1 + step * (1 - math.exp(-t * rate / step)))


# ---------------------------------------------------------------- linearized networks (NTK)
#
# For the loss (1/2n) sum_i (f(x_i) - y_i)^2 and a network linearized at w0,
# f_lin(w, x) = f(w0, x) + J(x) (w - w0), gradient flow w' = -lr grad gives
# f_train(t) - y = exp(-eta K t) (f0 - y), eta = lr / n, K = J J^T the NTK on the
# training set; discrete GD replaces exp(-eta K t) by (I - eta K)^t.


def _linear_time_factors(lam: torch.Tensor, t: torch.Tensor, eta: float, continuous: bool) -> torch.Tensor:
    """g(lam, t) = (1 - exp(-eta lam t)) / lam (flow) or (1 - (1 - eta lam)^t) / lam
    (GD), shape (T, n), with the limit eta t at lam = 0 (no division by zero)."""
    lam = lam.reshape(1, -1)
    t = t.reshape(-1, 1).to(lam.dtype)
    x = eta * lam
    if continuous:
        num = -torch.expm1(-x * t)  # 1 - exp(-eta lam t)
    else:
        safe = x < 1  # log1p(-x) defined: 1 - (1 - x)^t = -expm1(t log1p(-x))
        num = torch.where(safe, -torch.expm1(t * torch.log1p(-torch.where(safe, x, torch.zeros_like(x)))),
                          1 - (1 - x) ** t)
    small = (x * t).abs() < 1e-12
    return torch.where(small, eta * t * (1 - x * t / 2), num / torch.where(lam == 0, torch.ones_like(lam), lam))


def _as_tensor(v, like):
    return torch.as_tensor(v, dtype=like.dtype, device=like.device)


def _linearized_inputs(fn: str, K, t, lr, continuous: bool, **named):
    """(K, the named tensors (value, shape spec of "n" = len(K), "m" = len(k_test_train),
    None = any) checked and in K's dtype, t (T,)); see :func:`linearized_predictions`."""
    K = c.symmetric(fn, "k_train_train", c.tensor(fn, "k_train_train", K, shape=("n", "n"), finite=True, convert=True))
    out, sizes = [], {"n": len(K)}
    for name, (v, spec) in named.items():  # k_test_train first: it sets m
        v = c.tensor(fn, name, v, shape=tuple(sizes.get(k) for k in spec), finite=True, convert=True, dtype=K.dtype)
        sizes.setdefault("m", len(v))
        out.append(v)
    c.number(fn, "lr", lr, lo=0, lo_open=True)
    t = c.tensor(fn, "t", t, finite=True, convert=True, dtype=K.dtype).reshape(-1)
    if bool((t < 0).any()) or (not continuous and not bool((t == t.round()).all())):
        raise c.fail(fn, "t", f"{t.tolist()[:8]}", "times >= 0" + ("" if continuous else ": integer step counts"))
    return K, out, t


def linearized_predictions(k_train_train, k_test_train, f0_train, f0_test, y_train, t, lr: float = 1.0,
                           continuous: bool = True):
    """Outputs of the linearized network on train and test at every time in ``t``.

    Loss (1/2n) sum (f - y)^2, eta = lr / n, K = k_train_train (n, n), r = f0_train - y:

        f_train(t) = f0_train - (I - E(t)) r,   f_test(t) = f0_test - k_test_train K^+ (I - E(t)) r

    with E(t) = exp(-eta K t) (``continuous``, gradient flow) or (I - eta K)^t (discrete
    GD, t = number of steps). From one eigendecomposition K = V diag(lam) V^T:
    K^+ (I - E(t)) = V diag(g(lam, t)) V^T with g -> eta t at lam = 0 (the component of r
    outside K's range moves the test outputs linearly in t, as the linear model does;
    it is zero when that component is zero). Returns (F_train (T, n), F_test (T, m)),
    leading time axis; tensors in k_train_train's dtype.

    Contract (:func:`_linearized_inputs`): K finite symmetric (n, n), n >= 1 (the
    reference dtype; the others converted to it), k_test_train finite (m, n), f0_train
    and y_train finite (n,), f0_test finite (m,), t finite >= 0 (scalar or 1-D; integer
    step counts unless ``continuous``), lr > 0.
    """
    K, (Kst, f0tr, f0te, y), t = _linearized_inputs("linearized_predictions", k_train_train, t, lr, continuous,
                                                    k_test_train=(k_test_train, (None, "n")), f0_train=(f0_train, ("n",)),
                                                    f0_test=(f0_test, ("m",)), y_train=(y_train, ("n",)))
    n = K.shape[0]
    lam, V = torch.linalg.eigh((K + K.t()) / 2)
    lam = torch.where(lam.abs() <= n * torch.finfo(K.dtype).eps * lam.abs().max(), torch.zeros_like(lam), lam)
    c = V.t() @ (f0tr - y)  # r in the eigenbasis
    G = _linear_time_factors(lam, t, lr / n, continuous) * c  # (T, n): K^+ (I - E) r in the eigenbasis
    F_train = f0tr - (G * lam) @ V.t()
    F_test = f0te - G @ (Kst @ V).t()
    return F_train, F_test


def linearized_weights(w0, vjp, k_train_train, f0_train, y_train, t, lr: float = 1.0, continuous: bool = True):
    """Weights of the linearized network at every time in ``t`` (seed 001):

        w(t) = w0 - J^T K^+ (I - E(t)) (f0 - y)

    (E as in :func:`linearized_predictions`; eta = lr / n). ``vjp(g)`` must return
    J^T g for g (n,) -- e.g. :func:`memgen.kernels.model_vjp` -- so J is never formed:
    one vector-Jacobian product per time. Returns (T, P). Contract as
    :func:`linearized_predictions`; w0 finite (P,); vjp callable.
    """
    K, (f0, y), t = _linearized_inputs("linearized_weights", k_train_train, t, lr, continuous,
                                       f0_train=(f0_train, ("n",)), y_train=(y_train, ("n",)))
    c.tensor("linearized_weights", "w0", w0, ndim=1, finite=True)
    c.function("linearized_weights", "vjp", vjp)
    n = K.shape[0]
    lam, V = torch.linalg.eigh((K + K.t()) / 2)
    lam = torch.where(lam.abs() <= n * torch.finfo(K.dtype).eps * lam.abs().max(), torch.zeros_like(lam), lam)
    G = _linear_time_factors(lam, t, lr / n, continuous) * (V.t() @ (f0 - y))
    coeff = G @ V.t()  # (T, n)
    w0 = torch.as_tensor(w0)
    return torch.stack([w0 - vjp(coeff[i]).to(w0.dtype) for i in range(len(t))])


# ---------------------------------------------------------------- discrete gradient descent


def gd_mse(model, w: torch.Tensor, x: torch.Tensor, y: torch.Tensor, lr: float, steps: int, record=(),
           on_record: Callable | None = None, progress: str | None = None):
    """Full-batch gradient descent on L(w) = (1/2n) sum_i (f(w, x_i) - y_i)^2:

        w_{k+1} = w_k - lr J_k^T (f_k - y) / n,   k = 0 .. steps - 1,

    for a model given as a pure function of a flat vector (``model.forward(w, x) ->
    (f (n,), cache)``, ``model.vjp(cache, g) -> J^T g``, e.g. :class:`memgen.models.FlatFC`).
    ``on_record(k, w_k, f_k)`` is called at the steps k in ``record`` (0 and ``steps``
    included if listed). Stops at the first non-finite f (diverged). ``progress``: label
    of progress lines on stderr; None: silent. Returns (w, f, diverged) at the last step
    evaluated (w_steps, f(w_steps) unless diverged).

    Contract: ``model`` with ``forward`` and ``vjp``; w finite (P,) (the reference dtype);
    x finite (n, ...) and y finite (n,), n >= 1, converted to w's dtype; lr > 0; steps an
    integer >= 0; ``record`` integers in [0, steps]; ``on_record`` callable or None.
    """
    if not (callable(getattr(model, "forward", None)) and callable(getattr(model, "vjp", None))):
        raise c.fail("gd_mse", "model", c.describe(model), "a model with forward(w, x) and vjp(cache, g) (FlatFC)")
    w = c.tensor("gd_mse", "w", w, ndim=1, finite=True)
    x = c.tensor("gd_mse", "x", x, finite=True, dtype=w.dtype)
    y = c.tensor("gd_mse", "y", y, shape=(len(x) if x.dim() else -1,), finite=True, dtype=w.dtype)
    lr, steps = c.number("gd_mse", "lr", lr, lo=0, lo_open=True), c.integer("gd_mse", "steps", steps, lo=0)
    record = [c.integer("gd_mse", "record", r, lo=0, hi=steps) for r in record]
    c.function("gd_mse", "on_record", on_record, optional=True)
    n = len(y)
    record = set(int(r) for r in record)
    f = None
    bar = Progress(progress, steps, unit="step", message=f"GD on {n} points, lr={lr:g}")
    for k in range(steps + 1):
        f, cache = model.forward(w, x)
        if not torch.isfinite(f).all():
            bar.finish(k, "diverged")
            return w, f, True
        if k in record and on_record is not None:
            on_record(k, w, f)
        if k == steps:
            break
        w = w - lr * model.vjp(cache, (f - y) / n)
        if bar.due():
            bar.update(k + 1, f"train loss {float(((f - y) ** 2).mean() / 2):.4g}")
    bar.finish(steps, lambda: f"train loss {float(((f - y) ** 2).mean() / 2):.4g}")
    return w, f, False

