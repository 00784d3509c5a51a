"""Claims of the kernels family (seeds 001 and 002), checked from its summary tables
(memgen.claims): ``convergence`` (empirical vs infinite-width kernels per width and
seed), ``linearized`` (GD vs the linearized network per width), ``accuracy`` (test
accuracy per data set, n, seed and method)."""

from __future__ import annotations

import numpy as np

from memgen.claims import NotApplicable, Result, claim, slope_interval

SLOPE, SLOPE_TOL = -0.5, 0.1
CIFAR_N = 128
SEED_002_ACCURACY = {"nngp": 0.7135, "ntk": 0.7885}  # the blog post's test accuracies on CIFAR-2, 128 points


@claim(paper="NTK theory (Jacot et al. 2018); seeds 001, 002", where="finite-width NTK", figure="ntk_convergence",
       statement="The empirical NTK of a width-h network approaches the infinite-width NTK as h^(-1/2).",
       expected=f"fitted slope of log error vs log h = {SLOPE} +- {SLOPE_TOL}",
       tables={"convergence": ["h", "seed", "ntk_rel_err"]})
def ntk_error_slope(convergence):
    """Least-squares slope of log ||K_h - K_inf||_F / ||K_inf||_F on log h over every
    (width, seed) (measured) with its 95% confidence interval; reproduced when the slope
    is within SLOPE_TOL of -1/2."""
    ok = convergence[(convergence["ntk_rel_err"] > 0) & np.isfinite(convergence["ntk_rel_err"])]
    k, lo, hi = slope_interval(np.log(ok["h"].astype(float)), np.log(ok["ntk_rel_err"].astype(float)))
    return Result(measured=k, interval=(lo, hi), reproduced=abs(k - SLOPE) <= SLOPE_TOL)


@claim(paper="seed 001 (Harutyunyan et al. 2021; Lee et al. 2019)", where="linearized training",
       figure="linearized_training",
       statement="The network linearized at its initialisation tracks gradient descent better as the width grows.",
       expected="||w_lin - w|| / ||w - w0|| at the end of training decreases with h",
       tables={"linearized": ["h", "t", "w_ratio", "diverged"]})
def linearized_tracks_gd(linearized):
    """Per width, ||w_lin(t) - w(t)|| / ||w(t) - w0|| at the last recorded time of a run
    that did not diverge; reproduced when it strictly decreases with the width."""
    ok = linearized[~linearized["diverged"] & np.isfinite(linearized["w_ratio"])]
    last = ok.sort_values("t").groupby("h")["w_ratio"].last().sort_index()
    if len(last) < 2:
        raise NotApplicable("fewer than two widths with a finite weight distance")
    text = ", ".join(f"{v:.3g}" for v in last) + " at h = " + ", ".join(str(int(h)) for h in last.index)
    return Result(measured=text, reproduced=bool(np.all(np.diff(last.to_numpy()) < 0)))


def _cifar(accuracy, method: str) -> Result:
    rows = accuracy[(accuracy["dataset"] == "cifar2") & (accuracy["method"] == method)]
    if rows.empty:
        from memgen.data import cifar_available

        raise NotApplicable("CIFAR-2 not in this run (kernels.cifar.enabled: false)" if cifar_available()
                            else "CIFAR-10 files absent")
    at = rows[rows["n_train"] == CIFAR_N]["accuracy"].dropna()
    if at.empty:
        raise NotApplicable(f"no CIFAR-2 run with {CIFAR_N} training points (kernels.cifar.n_train)")
    lo, hi = float(at.min()), float(at.max())
    return Result(measured=float(at.mean()), interval=(lo, hi), reproduced=lo <= SEED_002_ACCURACY[method] <= hi,
                  reason=f"{len(at)} seed(s)")


SEED_002, CIFAR = "seed 002 (blog post)", "CIFAR-2, 128 points"  # (airplane vs automobile, a 3072-256-256-1 MLP)
CIFAR_TABLES = {"accuracy": ["dataset", "n_train", "seed", "method", "accuracy"]}


@claim(paper=SEED_002, where=CIFAR, figure="accuracy_vs_n", tables=CIFAR_TABLES, expected="71.35% within the "
       "spread over seeds", statement="The NNGP predictor reaches 71.35% test accuracy on CIFAR-2 from 128 points.")
def cifar2_nngp_accuracy(accuracy):
    """Test accuracy of the NNGP predictor (random hidden layers, last layer fitted) on
    CIFAR-2 at 128 points: the mean over seeds (measured) and the min-max over seeds
    (interval); reproduced when 71.35% lies in it."""
    return _cifar(accuracy, "nngp")


@claim(paper=SEED_002, where=CIFAR, figure="accuracy_vs_n", tables=CIFAR_TABLES, expected="78.85% within the "
       "spread over seeds", statement="Empirical-NTK regression reaches 78.85% test accuracy on CIFAR-2 from 128 "
       "points.")
def cifar2_ntk_accuracy(accuracy):
    """The same for regression with the empirical NTK at initialisation; reproduced when
    78.85% lies in the min-max over seeds."""
    return _cifar(accuracy, "ntk")
