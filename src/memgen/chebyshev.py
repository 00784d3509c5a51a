"""Second-order Runge-Kutta-Chebyshev (RKC2) integration of a gradient flow, with or
without continuous momentum (``flow.method: rkc``).

The ODE is dw/dt = -G(w) (tau = 0), or the momentum of feature_lazy
dw/dt = v, dv/dt = -(v + G(w)) / tau (tau > 0), where G is the gradient a user's
``prepare(w) -> data`` computes (``gradient(data)`` returns it, ``valid(data)`` says
whether it is finite). Like :func:`memgen.dynamics.flow`, the integrator knows nothing
about networks or kernels.

Why Chebyshev: the Jacobian of -G is minus a symmetric Hessian, a real spectrum that
turns stiff near the soft-hinge margin (its radius rho jumps by orders of magnitude).
An explicit s-stage RKC2 step is stable for h rho <= 0.65 s^2 (Sommeijer, Shampine and
Verwer 1997; damping eps = 2/13), so the gradient evaluations per unit time grow as
sqrt(rho / h) instead of rho; the step size follows the accuracy of the smooth part.
rho comes from a nonlinear power iteration on finite differences of G (warm-started,
every ``RHO_EVERY`` accepted steps and after a rejection; :mod:`memgen.spectral`), times
a safety of 1.2.

Deflation (tau = 0): at paper size the Hessian has one outlier eigenvalue lam, 17-20
times the next near the margin (the mean-output mode), and it alone sets the stages.
When the power iteration finds the top eigenvalue positive and at least
``DEFLATE_GAP`` times the radius rho_e of the rest (a second power iteration on
dG/dw - lam u u^T), the step splits -G(x) = F_E(x) + F_I(x) with the rank-1 linear
F_I(x) = -lam u u^T (x - w_n): every stage takes F_E explicitly as RKC2 does, with
stages for rho_e, and F_I implicitly (a rank-1 solve, no extra gradient):

    Y_j - kappa mu~_j h F_I(Y_j) = (1 - mu_j - nu_j) Y_0 + mu_j Y_{j-1} + nu_j Y_{j-2}
                                   + mu~_j h F_E(Y_{j-1}) + gamma~_j h F(Y_0)

(Y_1 - kappa mu~_1 h F_I(Y_1) = Y_0 + mu~_1 h F(Y_0); F_I(Y_0) = 0). The implicit part
sees the same stage times c_j as the explicit one, so the additive method is second order
for the coupled nonlinear flow once it is for each part; :func:`implicit_weight` picks
kappa(s) that makes R(0, z) = 1 + z + z^2/2 + O(z^3) on the implicit part, and with it
|R(z_E, z_I)| < 1 for z_E on RKC2's interval and every z_I < 0 (s >= 3; tests). The
deflated step is taken only when it needs fewer stages than the plain one.

Momentum: the w-recursion of RKC2 uses the stage velocities v_j in place of -G, and
each v_j is the exact solution of dv/dt = -(v + G)/tau from the previous stage over
the stage-time increment, with G linear in time between the two stages ("exponential
velocity"). For tau -> 0 (v_j = -G(w_j)) this is exactly RKC2 on dw/dt = -G; it is
second order for any tau and keeps RKC2's stability while tau rho < 1/4 (the linear
test problem's spectrum is real). Beyond that the modes oscillate (frequency
sqrt(rho / tau)) and the error control keeps the step small enough.

Error control: est = 0.8 (w_n - w_{n+1}) + 0.4 h (v_n + v_{n+1}) (the RKC estimate;
after a deflated step filtered along u by 1 / (1 + h lam), :func:`error_estimate`),
accepted when ||est|| <= rtol ||w_{n+1} - w_n|| (error per unit step: the global error
stays a fraction of the distance travelled, which keeps the time of reaching the
margin accurate); predictive step factor 0.8 (h/h_old) err_old^(1/3) / err^(2/3) (after
the first step; 0.8 err^(-1/3) then and on rejection), clipped to [0.1, 10]. A step
whose stages are not finite is retried with h / 10; below ``min_dt``,
:class:`memgen.dynamics.FlowDiverged`.

Dense output of a :class:`Step`: :mod:`memgen.dense_output`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Any, Callable, Generator

import torch

from memgen import MemgenError
from memgen.dynamics import FlowDiverged
from memgen.spectral import estimate

EPS = 2.0 / 13.0  # damping of the Chebyshev polynomial
MAX_STAGES = 250
SAFETY = 1.2  # margin on the spectral radius estimate
RHO_EVERY = 25  # accepted steps between spectral radius estimates
RHO_ITERS = (20, 10)  # at most this many power iterations: cold start, warm start
FAC = 0.8  # safety factor of the step size controller
DEFLATE_GAP = 4.0  # deflate the top eigenvalue when it is at least this many times the rest


@lru_cache(maxsize=None)
def coefficients(s: int) -> tuple:
    """RKC2 with s >= 2 stages: ((mu~_1, c_1), then (mu, nu, mu~, gamma~, c) of stages 2..s).

    Stage j: Y_j = (1 - mu - nu) Y_0 + mu Y_{j-1} + nu Y_{j-2} + mu~ h F(Y_{j-1}) + gamma~ h F(Y_0),
    Y_1 = Y_0 + mu~_1 h F(Y_0); c_j is the stage's time (c_s = 1).
    """
    if s < 2:
        raise MemgenError(f"rkc stages: need s >= 2, got {s}")
    w0 = 1 + EPS / s**2
    t1 = w0 * w0 - 1
    t2 = math.sqrt(t1)
    arg = s * math.log(w0 + t2)
    w1 = math.sinh(arg) * t1 / (math.cosh(arg) * s * t2 - w0 * math.sinh(arg))
    z, dz, d2z = [1.0, w0], [0.0, 1.0], [0.0, 0.0]  # T_j(w0) and its first two derivatives
    b = [1 / (2 * w0) ** 2] * 2
    for j in range(2, s + 1):
        z.append(2 * w0 * z[j - 1] - z[j - 2])
        dz.append(2 * w0 * dz[j - 1] - dz[j - 2] + 2 * z[j - 1])
        d2z.append(2 * w0 * d2z[j - 1] - d2z[j - 2] + 4 * dz[j - 1])
        b.append(d2z[j] / dz[j] ** 2)
    c = [0.0, w1 * b[1]]
    stages = [(w1 * b[1], c[1])]
    for j in range(2, s + 1):
        mu, nu = 2 * w0 * b[j] / b[j - 1], -b[j] / b[j - 2]
        mus = mu * w1 / w0
        a = 1 - z[j - 1] * b[j - 1]
        c.append(mu * c[j - 1] + nu * c[j - 2] + mus * (1 - a))
        stages.append((mu, nu, mus, -a * mus, c[j]))
    return tuple(stages)


def _implicit_z2(s: int, kap: float) -> float:
    """z^2 coefficient of the deflated step's stability function R(0, z) (z = -h lam: the
    implicit part alone) for implicit weight ``kap`` (power series truncated after z^2)."""
    coef = coefficients(s)

    def solve(r, a):  # r / (1 - a z)
        return (r[0], r[1] + a * r[0], r[2] + a * r[1] + a * a * r[0])

    one, z_one = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0)  # Y_0 and z Y_0 (F_I taken unanchored: F_I(Y_0) = z Y_0)
    mus1 = coef[0][0]
    prev2, prev = one, solve(tuple(a + (1 - kap) * mus1 * b for a, b in zip(one, z_one)), kap * mus1)
    for mu, nu, mus, gam, _ in coef[1:]:
        r = tuple((1 - mu - nu) * a + mu * b + nu * c + (gam + (1 - kap) * mus) * d
                  for a, b, c, d in zip(one, prev, prev2, z_one))
        prev2, prev = prev, solve(r, kap * mus)
    return prev[2]


@lru_cache(maxsize=None)
def implicit_weight(s: int) -> float:
    """kappa of the deflated s-stage step (s >= 3): second order on the implicit part
    (module doc, "Deflation"); bisection on (0, 1], where the z^2 coefficient crosses 1/2 once."""
    if s < 3:
        raise MemgenError(f"deflated rkc stages: need s >= 3, got {s}")
    lo, hi = 1e-3, 1.0
    f_lo = _implicit_z2(s, lo) - 0.5
    if (f_lo > 0) == (_implicit_z2(s, hi) - 0.5 > 0):
        raise MemgenError(f"deflated rkc: no second-order implicit weight in (0, 1] for {s} stages")
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        f_mid = _implicit_z2(s, mid) - 0.5
        if (f_mid > 0) == (f_lo > 0):
            lo, f_lo = mid, f_mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def stages_for(h: float, rho: float) -> int:
    """Fewest stages whose stability interval 0.65 s^2 covers h rho (at least 2)."""
    return max(2, 1 + int(math.sqrt(1 + 1.54 * h * rho)))


def max_step(rho: float) -> float:
    """Largest h that ``MAX_STAGES`` stages keep stable at spectral radius rho."""
    return (MAX_STAGES**2 - 1) / (1.54 * rho) if rho > 0 else math.inf


def relax(v: torch.Tensor, g_a: torch.Tensor, g_b: torch.Tensor, d: float, tau: float) -> torch.Tensor:
    """v after time d of dv/dt = -(v + G)/tau with G linear from g_a to g_b (tau = 0: -g_b)."""
    if tau == 0:
        return torch.neg(g_b)
    r = d / tau
    decay = math.exp(-r)
    phi = 1 + math.expm1(-r) / r if r > 1e-8 else r / 2  # 1 - (1 - e^-r) / r
    return torch.mul(v, decay).sub_(g_a, alpha=1 - decay).sub_(g_b - g_a, alpha=phi)


@dataclass
class Memory:
    """What the integrator carries between steps (saved in resume files)."""

    rho: float  # spectral radius estimate (with SAFETY)
    vector: torch.Tensor  # power-iteration direction (converges to the top eigenvector)
    since_rho: int  # accepted steps since rho was estimated
    err_old: float  # error of the previous accepted step (nan: none yet)
    h_old: float  # its size
    lam: float = 0.0  # deflated eigenvalue (0: no deflation)
    rho_e: float = 0.0  # spectral radius of the rest (with SAFETY), when lam > 0
    vector_e: torch.Tensor | None = None  # power-iteration direction of the deflated operator

    @classmethod
    def array_names(cls) -> tuple[str, ...]:
        """The tensor fields (resume files keep them as arrays, the rest as attributes)."""
        return tuple(f.name for f in fields(cls) if "Tensor" in str(f.type))

    def resume_parts(self) -> tuple[dict, dict]:
        """(arrays, attributes) of every field, for a resume file."""
        arrays = set(self.array_names())
        parts = ({}, {})
        for f in fields(self):
            parts[0 if f.name in arrays else 1][f.name] = getattr(self, f.name)
        return parts

    @classmethod
    def from_resume(cls, arrays: dict, attrs: dict) -> "Memory":
        return cls(**{f.name: arrays[f.name] if f.name in arrays else (int if f.type == "int" else float)(attrs[f.name])
                      for f in fields(cls)})

    def plan(self, h: float) -> tuple[float, int, bool]:
        """(step size capped for stability, stages, deflated?) for a trial step of size h."""
        h_p = min(h, max_step(self.rho))
        s_p = stages_for(h_p, self.rho)
        if self.lam > 0:
            h_d = min(h, max_step(self.rho_e))
            s_d = max(3, stages_for(h_d, self.rho_e))
            if h_d >= h_p and s_d < s_p:
                return h_d, s_d, True
        return h_p, s_p, False


@dataclass
class Step:
    """One accepted step: counters after it, both ends (for dense output) and the memory."""

    step: int
    t: float
    dt: float  # size of the step just taken
    next_dt: float
    rejected: int
    stages: int
    t0: float
    w0: torch.Tensor
    v0: torch.Tensor
    data0: Any
    w: torch.Tensor
    v: torch.Tensor
    data: Any
    memory: Memory


def rkc_flow(w: torch.Tensor, v: torch.Tensor | None, prepare: Callable[[torch.Tensor], Any],
             gradient: Callable[[Any], torch.Tensor], valid: Callable[[Any], bool], *, tau: float, rtol: float,
             t: float = 0.0, dt: float | None = None, step: int = 0, data: Any = None,
             memory: Memory | None = None, min_dt: float = 1e-20,
             eps: float | None = None, deflate: bool = True) -> Generator[Step, None, None]:
    """Integrate forever (module doc), yielding after every accepted step.

    ``v`` is ignored for tau = 0 (the velocity is -G). ``t``, ``dt``, ``step``, ``data`` (=
    ``prepare(w)``, recomputed when None) and ``memory`` resume a saved run exactly; dt None
    starts with 1 / rho. ``eps``: the precision of ``prepare``'s arithmetic (default: that
    of w's dtype). ``deflate``: allow the deflated step (tau = 0; module doc).
    """
    eps = torch.finfo(w.dtype).eps if eps is None else eps
    if not rtol > 0 or not rtol < 1:
        raise MemgenError(f"flow.rtol: must be in (0, 1), got {rtol!r}")
    if not tau >= 0:
        raise MemgenError(f"flow.tau: must be >= 0, got {tau!r}")
    if data is None:
        data = prepare(w)
    g = gradient(data)
    if v is None or tau == 0:
        v = torch.neg(g) if tau == 0 else torch.zeros_like(w)

    def gradient_at(x):
        d = prepare(x)
        return gradient(d) if valid(d) else None

    def worth(h):  # can a deflated step (s >= 3) take fewer stages than a plain one at this h?
        return (lambda rho: stages_for(min(h, max_step(rho)), rho) > 3) if deflate and tau == 0 else None

    if memory is None:
        def start(seed):
            return torch.randn(w.shape, generator=torch.Generator().manual_seed(seed), dtype=w.dtype).to(w.device)

        memory = Memory(0.0, start(0), 0, math.nan, math.nan, vector_e=start(1))
        estimate(memory, w, g, gradient_at, RHO_ITERS[0], eps, worth(dt if dt is not None else 0.0), SAFETY,
                 DEFLATE_GAP)
    if dt is None:
        dt = 1 / memory.rho if memory.rho > 0 else 1.0
    h, fresh = dt, memory.since_rho == 0
    while True:
        rejected = 0
        while True:
            h, s, deflated = memory.plan(h)
            if deflated:
                u = memory.vector / memory.vector.norm()
                w_new, v_new, data_new = step_deflated(w, v, h, s, memory.lam, u, prepare, gradient, valid)
            else:
                w_new, v_new, data_new = step_once(w, v, g, data, h, s, tau, prepare, gradient, valid)
            if data_new is None:  # a stage was not finite
                err = math.inf
            else:
                inc = float(torch.dist(w_new, w))
                est = error_estimate(w, v, w_new, v_new, h, (memory.lam, u) if deflated else None)
                err = est / (rtol * inc) if inc > 0 else (0.0 if est == 0 else math.inf)
            if err <= 1:
                break
            rejected += 1
            h *= max(0.1, FAC * err ** (-1 / 3)) if math.isfinite(err) else 0.1
            if h < min_dt:
                raise FlowDiverged(f"time step fell below {min_dt:g} at t={t:g}, step {step}: non-finite dynamics")
            if not fresh:  # re-estimate rho once per rejected step (an unstable trial is one cause)
                estimate(memory, w, g, gradient_at, RHO_ITERS[1], eps, worth(h), SAFETY, DEFLATE_GAP)
                fresh = True
        if err == 0:
            fac = 10.0
        elif math.isnan(memory.err_old):
            fac = FAC * err ** (-1 / 3)
        else:
            fac = FAC * (h / memory.h_old) * memory.err_old ** (1 / 3) / err ** (2 / 3)
        memory.err_old, memory.h_old = err, h
        t0, w0, v0, data0 = t, w, v, data
        w, v, data, g = w_new, v_new, data_new, gradient(data_new)
        t += h
        step += 1
        taken, h = h, h * min(10.0, max(0.1, fac))
        memory.since_rho += 1
        fresh = False
        if memory.since_rho >= RHO_EVERY:
            estimate(memory, w, g, gradient_at, RHO_ITERS[1], eps, worth(h), SAFETY, DEFLATE_GAP)
            fresh = True
        yield Step(step, t, taken, h, rejected, s, t0, w0, v0, data0, w, v, data, memory)


def error_estimate(w, v, w_new, v_new, h: float, deflated: tuple[float, torch.Tensor] | None = None) -> float:
    """||est|| of the step from (w, v) to (w_new, v_new) (module doc, "Error control").

    After a deflated step (``deflated = (lam, u)``) the component along u is filtered by
    (1 + h lam)^-1, as stiff solvers filter with (I - h J)^-1: there the raw estimate is
    0.4 h lam times the mode's distance from its quasi-equilibrium, 10^2-10^3 times the
    step's true error in it (tests), and rejects steps whose error is within tolerance.
    """
    est = torch.mul(w - w_new, 0.8).add_(v + v_new, alpha=0.4 * h)
    if deflated is not None:
        lam, u = deflated
        est.sub_(u, alpha=float(u @ est) * h * lam / (1 + h * lam))
    return float(est.norm())


def step_once(w, v, g, data, h, s, tau, prepare, gradient, valid):
    """One RKC2 step of size h with s stages: (w, v, data) at its end, data None if not finite."""
    coef = coefficients(s)
    mus1, c_prev = coef[0]
    w_prev2, w_prev = w, torch.add(w, v, alpha=mus1 * h)
    d = prepare(w_prev)
    if not valid(d):
        return None, None, None
    g_prev = gradient(d)
    v_prev = relax(v, g, g_prev, c_prev * h, tau)
    for mu, nu, mus, gam, c in coef[1:]:
        w_j = torch.mul(w_prev, mu).add_(w_prev2, alpha=nu).add_(w, alpha=1 - mu - nu)
        w_j.add_(v_prev, alpha=mus * h).add_(v, alpha=gam * h)
        d = prepare(w_j)
        if not valid(d):
            return None, None, None
        g_j = gradient(d)
        v_prev = relax(v_prev, g_prev, g_j, (c - c_prev) * h, tau)
        w_prev2, w_prev, g_prev, c_prev = w_prev, w_j, g_j, c
    return w_prev, v_prev, d


def step_deflated(w, v, h, s, lam, u, prepare, gradient, valid):
    """One deflated RKC2 step (tau = 0, s >= 3, u of unit norm): (w, v, data) at its end,
    data None if not finite (module doc, "Deflation")."""
    coef, kap = coefficients(s), implicit_weight(s)

    def solve(r, a):  # x with (x - w) + a lam u u^T (x - w) = r - w (Sherman-Morrison)
        x = r - w
        return x.sub_(u, alpha=a * lam / (1 + a * lam) * float(u @ x)).add_(w)

    def explicit(x, d):  # F_E(x) = -G(x) + lam u u^T (x - w)
        return torch.neg(gradient(d)).add_(u, alpha=lam * float(u @ (x - w)))

    mus1 = coef[0][0]
    w_prev2, w_prev = w, solve(torch.add(w, v, alpha=mus1 * h), kap * mus1 * h)
    d = prepare(w_prev)
    if not valid(d):
        return None, None, None
    f_prev = explicit(w_prev, d)
    for mu, nu, mus, gam, _ in coef[1:]:
        r = torch.mul(w_prev, mu).add_(w_prev2, alpha=nu).add_(w, alpha=1 - mu - nu)
        w_j = solve(r.add_(f_prev, alpha=mus * h).add_(v, alpha=gam * h), kap * mus * h)
        d = prepare(w_j)
        if not valid(d):
            return None, None, None
        f_prev = explicit(w_j, d)
        w_prev2, w_prev = w_prev, w_j
    return w_prev, torch.neg(gradient(d)), d
