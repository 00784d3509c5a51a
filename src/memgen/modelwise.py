"""Model-wise double descent on isotropic Gaussian features: simulation and theory curves.

Features x in R^p with x ~ N(0, I_p), labels y = x.theta + eps, eps ~ N(0, sigma^2),
||theta||^2 = snr sigma^2, n = round(ratio p) samples; test risk of a predictor w is
R(w) = ||w - theta||^2 + sigma^2. Two estimators of theta from (X, y):

- min-norm least squares, w = X^+ y (peak at n/p = 1);
- gradient flow from 0 on 1/(2n)||Xw - y||^2 stopped at the time (on a grid) that
  minimises the risk averaged over data sets (oracle early stopping; no peak).

:func:`simulate` draws the data sets; :func:`theory_curves` evaluates
:func:`memgen.theory.modelwise_risk` and :func:`memgen.theory.early_stopped_modelwise_risk`
on the same axes. Everything is numpy float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from memgen import theory
from memgen.progress import Progress


def time_grid(t_min: float, t_max: float, n_times: int) -> np.ndarray:
    """Stopping times of the early-stopped estimator: 0 and ``n_times`` geometric times in
    [t_min, t_max], shape (n_times + 1,)."""
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
    ``progress``: label of progress lines (one per ratio) on stderr; None: silent."""
    p, sigma, draws = int(p), float(noise_std), int(draws)
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
            c = np.einsum("bji,j->bi", V, theta)  # V^T theta
            safe = np.where(pos, lam, 1.0)
            # min-norm least squares: coefficient bv / lam on the row space, 0 elsewhere
            mn[i, j] = (((np.where(pos, bv / safe, 0.0)) - c) ** 2).sum(-1) + sigma**2
            # gradient flow from 0: coefficient (1 - exp(-lam t)) / lam * bv
            g = np.where(pos[:, None, :], -np.expm1(-lam[:, None, :] * times[None, :, None]) / safe[:, None, :],
                         times[None, :, None])
            curve = ((g * bv[:, None, :] - c[:, None, :]) ** 2).sum(-1) + sigma**2  # (draws, T)
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
    """The model-wise theory on the simulation's axes (:func:`memgen.theory.modelwise_risk`,
    :func:`memgen.theory.early_stopped_modelwise_risk` with ``quad`` nodes), per SNR."""
    p, sigma = int(p), float(noise_std)
    ns = np.arange(max(1, int(np.floor(ratio_min * p))), int(np.ceil(ratio_max * p)) + 1)
    ratio = ns / p
    ratio_asym = np.linspace(ratio_min, ratio_max, int(n_grid))
    snrs = np.asarray(snrs, dtype=np.float64)
    mn = np.stack([theory.modelwise_risk(ratio, snr, sigma, p=p) for snr in snrs])
    mn_asym = np.stack([theory.modelwise_risk(ratio_asym, snr, sigma) for snr in snrs])
    es, ts = zip(*(theory.early_stopped_modelwise_risk(ratio_asym, snr, sigma, quad=quad, return_times=True)
                   for snr in snrs))
    return TheoryCurves(ratio, mn, ratio_asym, mn_asym, np.stack(es), np.stack(ts))
