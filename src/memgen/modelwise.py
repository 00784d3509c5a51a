"""Model-wise double descent on isotropic Gaussian features: simulation and theory curves.

Features x in R^p with x ~ N(0, I_p), labels y = x.theta + eps, eps ~ N(0, sigma^2),
||theta||^2 = snr sigma^2, n = round(ratio p) samples; test risk of a predictor w is
R(w) = ||w - theta||^2 + sigma^2. Two estimators of theta from (X, y):

- min-norm least squares, w = X^+ y (peak at n/p = 1);
- gradient flow from 0 on 1/(2n)||Xw - y||^2 stopped at the time (on a grid) that
  minimises the risk averaged over data sets (oracle early stopping; no peak).

:func:`simulate` draws the data sets; :func:`theory_curves` evaluates the closed forms
:func:`modelwise_risk`, :func:`gd_flow_risk_isotropic` and
:func:`early_stopped_modelwise_risk` (defined here, re-exported by :mod:`memgen.theory`)
on the same axes. Everything is numpy float64; arguments are checked on entry (sizes
>= 1, ratios > 0, noise and SNRs >= 0; MemgenError naming the argument).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from memgen import contracts as c
from memgen.progress import Progress


def time_grid(t_min: float, t_max: float, n_times: int) -> np.ndarray:
    """Stopping times of the early-stopped estimator: 0 and ``n_times`` geometric times in
    [t_min, t_max], shape (n_times + 1,). Contract: 0 < t_min <= t_max, n_times >= 1."""
    t_min = c.number("time_grid", "t_min", t_min, lo=0, lo_open=True)
    t_max = c.number("time_grid", "t_max", t_max, lo=t_min)
    n_times = c.integer("time_grid", "n_times", n_times, lo=1)
    return np.r_[0.0, np.geomspace(t_min, t_max, int(n_times))]


@dataclass
class Simulation:
    """``ratio`` (R,) n/p as used (n rounded), risks (S, R, draws) of the min-norm and the
    early-stopped estimator per SNR, ratio and data set, ``t_stop`` (S, R) the oracle
    stopping time, ``times`` (T,) the grid it was chosen on."""

    ratio: np.ndarray
    risk_min_norm: np.ndarray
    risk_early_stopped: np.ndarray
    t_stop: np.ndarray
    times: np.ndarray


def simulate(p: int, ratios, snrs, noise_std: float, draws: int, seed: int, times: np.ndarray,
             progress: str | None = None) -> Simulation:
    """Test risks of min-norm least squares and of oracle-early-stopped gradient flow,
    ``draws`` data sets per ratio (shared across SNRs; theta = sqrt(snr) sigma u with one
    seeded unit vector u), from one eigendecomposition X^T X / n = V diag(lam) V^T per
    data set: with b = V^T X^T y / n and c = V^T theta, the min-norm coefficients are
    b / lam on lam > 0 (0 elsewhere) and gradient flow's at time t are
    (1 - exp(-lam t)) / lam * b (t b at lam = 0); R = ||coefficients - c||^2 + sigma^2.
    ``progress``: label of progress lines (one per ratio) on stderr; None: silent.
    Contract: p, draws >= 1; ratios > 0 with n = round(ratio p) >= 1; snrs, noise_std >= 0
    (non-empty); ``times`` a 1-D array of times >= 0."""
    fn = "simulate"
    p, draws = c.integer(fn, "p", p, lo=1), c.integer(fn, "draws", draws, lo=1)
    sigma = c.number(fn, "noise_std", noise_std, lo=0)
    ratios = c.array(fn, "ratios", ratios, ndim=1, lo=0, lo_open=True)
    if (np.round(ratios * p) < 1).any():
        raise c.fail(fn, "ratios", f"{ratios.min():g} (an entry)", f"ratios with round(ratio * p) >= 1 sample (p={p})")
    snrs, times = c.array(fn, "snrs", snrs, ndim=1, lo=0), c.array(fn, "times", times, ndim=1, lo=0)
    seed = c.integer(fn, "seed", seed)
    rng = np.random.default_rng(int(seed))
    u = rng.standard_normal(p)
    u /= np.linalg.norm(u)
    S, R = len(snrs), len(ratios)
    mn, es = np.empty((S, R, draws)), np.empty((S, R, draws))
    t_stop, ratio_used = np.empty((S, R)), np.empty(R)
    bar = Progress(progress, R, unit="ratio", message=f"{draws} draws of p={p} per ratio, {S} SNRs")
    for j, ratio in enumerate(ratios):
        n = int(round(float(ratio) * p))
        ratio_used[j] = n / p
        X = rng.standard_normal((draws, n, p))
        eps = sigma * rng.standard_normal((draws, n))
        Xt = np.swapaxes(X, 1, 2)
        lam, V = np.linalg.eigh(Xt @ X / n)  # (draws, p), (draws, p, p)
        lam = np.clip(lam, 0.0, None)
        pos = lam > 1e-10 * lam.max(-1, keepdims=True)
        for i, snr in enumerate(snrs):
            theta = np.sqrt(float(snr)) * sigma * u
            y = X @ theta + eps
            bv = np.einsum("bji,bj->bi", V, np.einsum("bji,bj->bi", X, y) / n)  # V^T X^T y / n
            cv = np.einsum("bji,j->bi", V, theta)  # V^T theta
            safe = np.where(pos, lam, 1.0)
            # min-norm least squares: coefficient bv / lam on the row space, 0 elsewhere
            mn[i, j] = (((np.where(pos, bv / safe, 0.0)) - cv) ** 2).sum(-1) + sigma**2
            # gradient flow from 0: coefficient (1 - exp(-lam t)) / lam * bv
            g = np.where(pos[:, None, :], -np.expm1(-lam[:, None, :] * times[None, :, None]) / safe[:, None, :],
                         times[None, :, None])
            curve = ((g * bv[:, None, :] - cv[:, None, :]) ** 2).sum(-1) + sigma**2  # (draws, T)
            best = int(np.argmin(curve.mean(0)))
            es[i, j], t_stop[i, j] = curve[:, best], times[best]
        bar.update(j + 1, f"n/p={ratio_used[j]:.3g}")
    bar.finish()
    return Simulation(ratio_used, mn, es, t_stop, times)


@dataclass
class TheoryCurves:
    """``ratio`` (N,) = n/p at every integer n in [ratio_min p, ratio_max p] with the exact
    finite-p min-norm risk ``risk_min_norm`` (S, N) (inf at |n - p| <= 1); on the grid
    ``ratio_asym`` (G,) the proportional-limit min-norm risk ``risk_min_norm_asym`` (S, G),
    the optimally early-stopped gradient-flow risk ``risk_early_stopped`` (S, G) and its
    time ``t_stop`` (S, G)."""

    ratio: np.ndarray
    risk_min_norm: np.ndarray
    ratio_asym: np.ndarray
    risk_min_norm_asym: np.ndarray
    risk_early_stopped: np.ndarray
    t_stop: np.ndarray


def theory_curves(p: int, snrs, noise_std: float, ratio_min: float, ratio_max: float, n_grid: int,
                  quad: int) -> TheoryCurves:
    """The model-wise theory on the simulation's axes (:func:`modelwise_risk`,
    :func:`early_stopped_modelwise_risk` with ``quad`` nodes), per SNR.
    Contract: p, n_grid, quad >= 1; 0 < ratio_min <= ratio_max; snrs, noise_std >= 0."""
    fn = "theory_curves"
    p, sigma = c.integer(fn, "p", p, lo=1), c.number(fn, "noise_std", noise_std, lo=0)
    ratio_min = c.number(fn, "ratio_min", ratio_min, lo=0, lo_open=True)
    ratio_max = c.number(fn, "ratio_max", ratio_max, lo=ratio_min)
    n_grid, quad = c.integer(fn, "n_grid", n_grid, lo=1), c.integer(fn, "quad", quad, lo=1)
    c.array(fn, "snrs", snrs, ndim=1, lo=0)
    ns = np.arange(max(1, int(np.floor(ratio_min * p))), int(np.ceil(ratio_max * p)) + 1)
    ratio = ns / p
    ratio_asym = np.linspace(ratio_min, ratio_max, int(n_grid))
    snrs = np.asarray(snrs, dtype=np.float64)
    mn = np.stack([modelwise_risk(ratio, snr, sigma, p=p) for snr in snrs])
    mn_asym = np.stack([modelwise_risk(ratio_asym, snr, sigma) for snr in snrs])
    es, ts = zip(*(early_stopped_modelwise_risk(ratio_asym, snr, sigma, quad=quad, return_times=True)
                   for snr in snrs))
    return TheoryCurves(ratio, mn, ratio_asym, mn_asym, np.stack(es), np.stack(ts))


# ---------------------------------------------------------------------------------------
# model-wise: min-norm least squares and early-stopped GD on isotropic features
# ---------------------------------------------------------------------------------------


def modelwise_risk(ratios, snr: float = 1.0, noise_std: float = 1.0, p: int | None = None) -> np.ndarray:
    """Test risk ``E (y - x^T theta_hat)^2`` of min-norm least squares ``theta_hat = X^+ y``
    against ``r = n/p`` (samples per parameter).

    Model: ``x ~ N(0, I_p)``, ``y = x^T theta + eps``, ``eps ~ N(0, sigma^2)``,
    ``||theta||^2 = snr * sigma^2``, n samples; risk = ``E||theta_hat - theta||^2 + sigma^2``.

    Finite p (exact; Belkin, Hsu & Xu 2019, "Two models of double descent for weak
    features", Gaussian model with all features used; Hastie, Montanari, Rosset &
    Tibshirani 2019, "Surprises in high-dimensional ridgeless least squares
    interpolation"):
    - n >= p + 2: ``sigma^2 + sigma^2 p / (n - p - 1)`` (``E (X^T X)^{-1} = I/(n-p-1)``);
    - n <= p - 2: ``||theta||^2 (1 - n/p) + sigma^2 + sigma^2 n / (p - n - 1)``
      (bias: the projection of theta on the null space of a uniformly random n-dim row
      space; variance: ``E tr (X X^T)^{-1} = n/(p-n-1)``);
    - |n - p| <= 1: +inf (the expected risk diverges).
    ``p=None``: the proportional limit p, n -> inf with n/p = r (Hastie et al. 2019,
    isotropic case, gamma = p/n = 1/r): r > 1: ``sigma^2 + sigma^2 / (r - 1)``;
    r < 1: ``||theta||^2 (1 - r) + sigma^2 + sigma^2 r / (1 - r)``; r = 1: +inf.

    Contract: ratios finite >= 0 (any shape); snr, noise_std >= 0; p None or >= 1.
    """
    fn = "modelwise_risk"
    r = c.array(fn, "ratios", ratios, nonempty=False, lo=0)
    snr, noise_std = c.number(fn, "snr", snr, lo=0), c.number(fn, "noise_std", noise_std, lo=0)
    p = None if p is None else c.integer(fn, "p", p, lo=1)
    s2 = float(noise_std) ** 2
    th2 = float(snr) * s2
    out = np.full(r.shape, np.inf)
    if p is None:
        over = r < 1
        under = r > 1
        out[under] = s2 + s2 / (r[under] - 1.0)
        out[over] = th2 * (1 - r[over]) + s2 + s2 * r[over] / (1 - r[over])
        return out
    n = r * p
    under = n >= p + 2
    over = n <= p - 2
    out[under] = s2 + s2 * p / (n[under] - p - 1)
    out[over] = th2 * (1 - n[over] / p) + s2 + s2 * n[over] / (p - n[over] - 1)
    return out


@lru_cache(maxsize=8)
def _legendre(m: int) -> tuple[np.ndarray, np.ndarray]:
    return np.polynomial.legendre.leggauss(m)


@lru_cache(maxsize=256)
def _mp_nodes(gamma: float, m: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Quadrature for the spectrum of ``X^T X / n`` (x ~ N(0, I_p), p/n -> gamma).

    Continuous part: density ``sqrt((l+ - l)(l - l-)) / (2 pi gamma l)`` on
    ``[l-, l+] = [(1 - sqrt(gamma))^2, (1 + sqrt(gamma))^2]``, mass ``min(1, 1/gamma)``;
    plus an atom at 0 of mass ``max(0, 1 - 1/gamma)``. Substituting
    ``l = c + h cos(phi)`` makes the integrand smooth (also at gamma = 1):
    Gauss-Legendre in phi. Returns (nodes, weights, atom mass).
    """
    lm, lp = (1 - np.sqrt(gamma)) ** 2, (1 + np.sqrt(gamma)) ** 2
    c, h = (lp + lm) / 2, (lp - lm) / 2
    x, wq = _legendre(m)
    phi = (x + 1) * np.pi / 2
    lam = c + h * np.cos(phi)
    wts = wq * (np.pi / 2) * (h * np.sin(phi)) ** 2 / (2 * np.pi * gamma * lam)
    return lam, wts, max(0.0, 1.0 - 1.0 / gamma)


def gd_flow_risk_isotropic(times, ratio: float, snr: float = 1.0, noise_std: float = 1.0,
                           quad: int = 400) -> np.ndarray:
    """Risk of gradient flow from zero on ``1/(2n)||X w - y||^2`` for the isotropic model
    of :func:`modelwise_risk` at ``n/p = ratio``, proportional limit, at flow times t
    (t = lr * steps for small lr; discrete GD replaces ``exp(-l t)`` by ``(1 - lr l)^k``).

    In the eigenbasis of ``A = X^T X / n`` (eigenvalues l_j) this is
    :func:`linear_gd_risk` with the empirical spectrum and a random direction of theta:
    ``R(t) = ||theta||^2 (1/p) sum_j e^{-2 l_j t}
    + sigma^2 (1/n) sum_{l_j>0} (1 - e^{-l_j t})^2 / l_j + sigma^2``
    (the variance term carries 1/l_j because the test covariance is I, not A), averaged
    over the Marchenko-Pastur law with gamma = p/n = 1/ratio. t -> inf gives
    :func:`modelwise_risk` (p=None).

    Contract: times a 1-D array >= 0; ratio > 0; snr, noise_std >= 0; quad >= 1.
    """
    fn = "gd_flow_risk_isotropic"
    t = c.array(fn, "times", times, ndim=1, lo=0)[:, None]
    ratio = c.number(fn, "ratio", ratio, lo=0, lo_open=True)
    snr, noise_std = c.number(fn, "snr", snr, lo=0), c.number(fn, "noise_std", noise_std, lo=0)
    quad = c.integer(fn, "quad", quad, lo=1)
    gamma = 1.0 / float(ratio)
    lam, wts, atom = _mp_nodes(gamma, quad)
    s2 = float(noise_std) ** 2
    th2 = float(snr) * s2
    bias = th2 * (atom + (np.exp(-2 * lam * t) * wts).sum(-1))
    var = s2 * gamma * (((-np.expm1(-lam * t)) ** 2 / lam) * wts).sum(-1)
    return bias + var + s2


def early_stopped_modelwise_risk(ratios, snr: float = 1.0, noise_std: float = 1.0,
                                 quad: int = 400, return_times: bool = False):
    """Optimally early-stopped gradient-flow risk ``min_t`` :func:`gd_flow_risk_isotropic`
    against ``n/p`` (proportional limit). Finite everywhere: the peak at n/p = 1 of
    :func:`modelwise_risk` disappears (cf. "Optimal regularization can mitigate double
    descent", Nakkiran et al. 2021; early stopping ~ ridge, Ali, Kolter & Tibshirani
    2019). Optimum searched on a log grid of t in [1e-3, 1e5] (plus t = 0), then refined
    linearly. ``return_times``: also the optimal t (flow time = lr * steps). Contract:
    ratios finite > 0 (scalar or 1-D); snr, noise_std >= 0; quad >= 1.
    """
    r = np.atleast_1d(c.array("early_stopped_modelwise_risk", "ratios", ratios, ndim=(0, 1), lo=0, lo_open=True))
    grid = np.r_[0.0, np.geomspace(1e-3, 1e5, 600)]
    risks, times = [], []
    for ri in r:
        curve = gd_flow_risk_isotropic(grid, ri, snr, noise_std, quad)
        j = int(np.argmin(curve))
        lo, hi = grid[max(j - 1, 0)], grid[min(j + 1, len(grid) - 1)]
        fine = np.linspace(lo, hi, 201)
        c2 = gd_flow_risk_isotropic(fine, ri, snr, noise_std, quad)
        jj = int(np.argmin(c2))
        risks.append(c2[jj])
        times.append(fine[jj])
    risks, times = np.array(risks), np.array(times)
    return (risks, times) if return_times else risks
