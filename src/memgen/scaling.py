"""Crossovers and power laws: where a curve crosses a level, and exponents with their
confidence intervals (the lazy/feature phase diagram of the time-scale family).

- :func:`crossing`: the x at which a sampled curve y(x) first crosses ``level``, by
  linear interpolation in (log x, log y) between the two bracketing samples.
- :func:`power_law`: least squares of log y = log c - a log x, the exponent a with a
  Student-t confidence interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from memgen import contracts as c


def _samples(fn: str, x, y) -> tuple[np.ndarray, np.ndarray]:
    """x, y as float64 1-D arrays of one length (non-finite entries allowed: data)."""
    x = c.array(fn, "x", x, ndim=1, finite=False, nonempty=False)
    y = c.array(fn, "y", y, ndim=1, finite=False, nonempty=False)
    if x.shape != y.shape:
        raise c.fail(fn, "y", c.describe(y), f"the shape of x, {x.shape}")
    return x, y


def crossing(x, y, level: float = 1.0, decreasing: bool = True) -> float:
    """The first x (in increasing x) where y crosses ``level``: from above when
    ``decreasing`` (y >= level, then y < level), from below otherwise; log-log linear
    interpolation between the two samples around the crossing. NaN when y never
    crosses inside the samples. Samples with non-finite or non-positive x or y are
    dropped.

    Contract: x, y real 1-D of one length (possibly empty; NaN, inf and entries <= 0 are
    dropped samples, not errors); level a finite number > 0; decreasing a bool.
    """
    fn = "crossing"
    x, y = _samples(fn, x, y)
    level = c.number(fn, "level", level, lo=0, lo_open=True)
    if not isinstance(decreasing, (bool, np.bool_)):
        raise c.fail(fn, "decreasing", c.describe(decreasing), "a bool")
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    order = np.argsort(x[ok], kind="stable")
    lx, ly = np.log(x[ok][order]), np.log(y[ok][order]) - math.log(level)
    above = ly >= 0 if decreasing else ly <= 0
    for i in range(len(lx) - 1):
        if above[i] and not above[i + 1]:
            if ly[i + 1] == ly[i]:
                return float(np.exp(lx[i]))
            frac = ly[i] / (ly[i] - ly[i + 1])
            return float(np.exp(lx[i] + frac * (lx[i + 1] - lx[i])))
    return math.nan


@dataclass(frozen=True)
class PowerLaw:
    """y ~ prefactor * x^(-exponent); [exponent_lo, exponent_hi] the ``confidence``
    interval of the exponent (NaN with fewer than three points or distinct x)."""

    exponent: float
    exponent_lo: float
    exponent_hi: float
    prefactor: float
    points: int
    confidence: float

    def __call__(self, x) -> np.ndarray:
        return self.prefactor * np.asarray(x, dtype=float) ** (-self.exponent)


def power_law(x, y, confidence: float = 0.95) -> PowerLaw:
    """Ordinary least squares of log y on log x over the finite positive points: slope
    -exponent, intercept log prefactor, the exponent's interval from the slope's standard
    error and Student's t with N - 2 degrees of freedom.

    Contract: x, y real 1-D of one length (possibly empty; NaN, inf and entries <= 0 are
    dropped points, not errors); confidence a number in (0, 1). Fewer than two points
    left (or all at one x): every field but ``points`` NaN; two: the interval NaN.
    """
    fn = "power_law"
    x, y = _samples(fn, x, y)
    confidence = c.number(fn, "confidence", confidence, lo=0, hi=1, lo_open=True, hi_open=True)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    lx, ly = np.log(x[ok]), np.log(y[ok])
    n = len(lx)
    if n < 2 or np.ptp(lx) == 0:
        return PowerLaw(math.nan, math.nan, math.nan, math.nan, n, confidence)
    slope, intercept = np.polyfit(lx, ly, 1)
    lo = hi = math.nan
    if n > 2:
        resid = ly - (slope * lx + intercept)
        se = math.sqrt(float(resid @ resid) / (n - 2) / float(((lx - lx.mean()) ** 2).sum()))
        half = float(stats.t.ppf(0.5 + confidence / 2, n - 2)) * se
        lo, hi = -slope - half, -slope + half
    return PowerLaw(float(-slope), lo, hi, float(math.exp(intercept)), n, confidence)
