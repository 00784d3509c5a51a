"""Claims of the time-scale family (Geiger, Spigler, Jacot, Wyart 2019, "Disentangling
feature and lazy training in deep neural networks"; seed 000), checked from its summary
tables (memgen.claims). ``table``: one row per (alpha, h, seed); ``sqrt_h_alpha`` is
in the article's convention, so the claims hold whatever the last-layer scaling."""

from __future__ import annotations

import numpy as np
import pandas as pd

from memgen.claims import NotApplicable, Result, claim

PAPER = "Geiger et al. 2019"
LAZY_CHANGE, FEATURE_CHANGE = 0.1, 0.3  # "below 0.1" (lazy); "of order 1": at least 0.3
COLLAPSE = 0.2  # spread between widths at most this share of the spread across sqrt(h) alpha


def _finite(table: pd.DataFrame, col: str) -> pd.DataFrame:
    ok = table[~table["diverged"]]
    return ok[np.isfinite(ok[col].astype(float))]


def _extreme(table: pd.DataFrame, col: str, largest: bool) -> pd.DataFrame:
    """Rows (every width and seed) at the largest or smallest sqrt(h) alpha where ``col`` is finite."""
    ok = _finite(table, col)
    if ok.empty:
        raise NotApplicable(f"no run with a finite {col}")
    x = ok["sqrt_h_alpha"].max() if largest else ok["sqrt_h_alpha"].min()
    return ok[np.isclose(ok["sqrt_h_alpha"], x, rtol=1e-9)]


@claim(paper=PAPER, where="lazy regime (alpha -> infinity)", figure="test_error",
       statement="At large alpha the network trains lazily: its test error equals that of its frozen NTK at "
                 "initialisation trained the same way.",
       expected="|test error - frozen-kernel test error| within the seeds' spread at the largest alpha",
       tables={"table": ["sqrt_h_alpha", "h", "seed", "test_err", "frozen_test_err", "diverged"]})
def lazy_error_is_frozen_kernel_error(table):
    """At the largest sqrt(h) alpha, per width: the seed mean of (network - frozen kernel)
    test error against the seeds' spread (max - min over seeds of the network's or the
    frozen kernel's test error, whichever is larger); measured: the largest |mean
    difference| over widths, interval: the smallest spread."""
    rows = _extreme(table, "frozen_test_err", largest=True)
    diffs, spreads = [], []
    for _, g in rows.groupby("h"):
        diffs.append(abs(float((g["test_err"] - g["frozen_test_err"]).mean())))
        spreads.append(max(float(np.ptp(g["test_err"])), float(np.ptp(g["frozen_test_err"]))))
    return Result(measured=max(diffs), interval=f"seeds' spread {min(spreads):.3g}",
                  reproduced=all(d <= s for d, s in zip(diffs, spreads)),
                  reason=f"at sqrt(h) alpha = {float(rows['sqrt_h_alpha'].iloc[0]):g}")


@claim(paper=PAPER, where="feature regime (small alpha)", figure="kernel_change",
       statement="In the feature regime the NTK changes by order one or more during training, in its shape "
                 "(the normalised kernel) as well as in its norm.",
       expected=f"||Theta_T - Theta_0|| / ||Theta_0|| >= {FEATURE_CHANGE} and shape change >= {FEATURE_CHANGE} at "
                "the smallest alpha",
       tables={"table": ["sqrt_h_alpha", "h", "ntk_rel_change", "ntk_shape_change", "diverged"]})
def feature_kernel_change(table):
    """At the smallest sqrt(h) alpha: the relative change of the training NTK, mean over
    widths and seeds (measured) and its range (interval), and the change of its shape
    ||Theta_T/||Theta_T|| - Theta_0/||Theta_0|||| (at most 2; in the reason); reproduced
    when the smallest of either is at least FEATURE_CHANGE. (With the mean-field last
    layer the kernel's norm grows by orders of magnitude at small alpha, so the relative
    change alone is far above 1; the shape change says the kernel also turns.)"""
    rows = _extreme(table, "ntk_rel_change", largest=False)
    v, shape = rows["ntk_rel_change"], rows["ntk_shape_change"].astype(float)
    return Result(measured=float(v.mean()), interval=(float(v.min()), float(v.max())),
                  reproduced=bool(v.min() >= FEATURE_CHANGE and shape.min() >= FEATURE_CHANGE),
                  reason=f"shape change {shape.mean():.3g} (min {shape.min():.3g})")


@claim(paper=PAPER, where="lazy regime (large alpha)", figure="kernel_change",
       statement="In the lazy regime the NTK barely moves: its relative change falls below 0.1.",
       expected=f"||Theta_T - Theta_0|| / ||Theta_0|| < {LAZY_CHANGE} at the largest alpha",
       tables={"table": ["sqrt_h_alpha", "h", "ntk_rel_change", "diverged"]})
def lazy_kernel_change(table):
    """The relative change of the training NTK at the largest sqrt(h) alpha: its mean over
    widths and seeds (measured) and its range (interval); reproduced when the largest
    value is below LAZY_CHANGE."""
    v = _extreme(table, "ntk_rel_change", largest=True)["ntk_rel_change"]
    return Result(measured=float(v.mean()), interval=(float(v.min()), float(v.max())),
                  reproduced=bool(v.max() < LAZY_CHANGE))


@claim(paper=PAPER, where="scaling with the width", figure="kernel_change",
       statement="Curves of different widths collapse when plotted against sqrt(h) alpha.",
       expected=f"spread between widths at equal sqrt(h) alpha <= {COLLAPSE} x the spread across sqrt(h) alpha",
       tables={"table": ["sqrt_h_alpha", "h", "ntk_rel_change", "diverged"]})
def widths_collapse(table):
    """log10 of the seed-mean relative NTK change per width, interpolated in log sqrt(h)
    alpha on the range every width covers: the mean over that range of the spread between
    widths (max - min), divided by the spread of the width-mean curve across sqrt(h) alpha
    (measured); interval: the largest spread between widths over the range, in decades."""
    ok = _finite(table, "ntk_rel_change")
    ok = ok[(ok["ntk_rel_change"] > 0) & (ok["sqrt_h_alpha"] > 0)]
    means = ok.groupby(["h", "sqrt_h_alpha"])["ntk_rel_change"].mean()
    curves = [(np.log10(s.index.get_level_values("sqrt_h_alpha").to_numpy(float)), np.log10(s.to_numpy(float)))
              for _, s in means.groupby(level="h")]
    if len(curves) < 2:
        raise NotApplicable("fewer than two widths with a finite kernel change")
    lo, hi = max(c[0].min() for c in curves), min(c[0].max() for c in curves)
    grid = np.unique(np.concatenate([c[0][(c[0] >= lo) & (c[0] <= hi)] for c in curves]))
    if len(grid) < 2:
        raise NotApplicable("the widths share fewer than two sqrt(h) alpha values")
    y = np.stack([np.interp(grid, x, v) for x, v in curves])
    between = np.ptp(y, axis=0)
    across = float(np.ptp(y.mean(axis=0)))
    if across == 0:
        raise NotApplicable("the kernel change does not vary across sqrt(h) alpha")
    ratio = float(between.mean() / across)
    return Result(measured=ratio, interval=f"max {float(between.max()):.3g} of {across:.3g} decades",
                  reproduced=ratio <= COLLAPSE)


@claim(paper=PAPER, where="phase diagram: alpha* ~ h^(-1/2)", figure="phase_diagram",
       statement="The crossover between the feature and the lazy regime sits at alpha* ~ 1/sqrt(h): the "
                 "fitted exponent of alpha*(h) ~ h^(-a) is a = 1/2.",
       expected="a = 1/2 inside the fitted exponent's confidence interval",
       tables={"phase": ["exponent", "exponent_lo", "exponent_hi"]},
       absent="no phase-diagram table in this run")
def crossover_exponent(phase):
    """The fitted exponent a of alpha*(h) ~ h^(-a) and its confidence interval, from the
    phase-diagram table (columns ``exponent``, ``exponent_lo``, ``exponent_hi``; the same
    values on every row); reproduced when 1/2 lies in the interval. An interval that holds
    0 as well (too few widths or seeds, e.g. two widths) cannot tell h^(-1/2) from no
    dependence on h: not applicable, with the interval in the reason."""
    fit = phase[["exponent", "exponent_lo", "exponent_hi"]].astype(float).dropna()
    if fit.empty:
        raise NotApplicable("the phase-diagram table holds no fitted exponent")
    a, lo, hi = (float(fit[c].iloc[0]) for c in ("exponent", "exponent_lo", "exponent_hi"))
    if lo <= 0 <= hi:
        raise NotApplicable(f"fitted a = {a:.3g} in [{lo:.3g}, {hi:.3g}] ({int(phase['h'].nunique())} widths): "
                            "the interval holds 0, too wide to test a = 1/2 (more widths / seeds)")
    return Result(measured=a, interval=(lo, hi), reproduced=bool(lo <= 0.5 <= hi))
