"""Figures of the kernels family (issue 3; seeds 001, 002), from the summary CSVs:

- ``accuracy_vs_n``: test accuracy vs number of training points for empirical-NTK
  regression, the NNGP (random features, last layer fitted), the infinite-width NTK /
  NNGP kernels and the GD-trained network; one panel per data set (digits even vs
  odd, CIFAR-2);
- ``ntk_convergence``: ||Theta_h - Theta_inf||_F / ||Theta_inf||_F vs h, log-log, with
  the fitted slope (expected about -1/2) and the NNGP's for reference;
- ``linearized_training``: train/test loss vs t of GD and of the linearized network,
  per width, and ||w_lin(t) - w(t)|| / ||w(t) - w0|| vs t.
"""

from __future__ import annotations


import numpy as np
import pandas as pd

from memgen.families.kernels.summary import slope
from memgen.figures import figure, style


LABELS = {"ntk": "NTK regression (empirical)", "nngp": "NNGP (random features)",
          "ntk_inf": r"NTK, $h\to\infty$", "nngp_inf": r"NNGP, $h\to\infty$", "trained": "trained network (GD)"}
DATASETS = {"digits": "digits", "cifar2": "CIFAR-2"}




@figure(accuracy=["dataset", "task", "n_train", "seed", "method", "accuracy"])
def accuracy_vs_n(accuracy: pd.DataFrame, options: dict):
    """Test accuracy vs number of training points for empirical-NTK regression, the NNGP
    predictor (random hidden layers, last layer fitted by ridge), the infinite-width NTK
    and NNGP kernels and the GD-trained network; one panel per data set: digits, even vs
    odd over all ten classes (every digit pair is too easy: on 3 vs 8 all five methods
    reach accuracy 1.0 from 128 points and cannot be told apart; with five digits per
    class the curves keep rising up to 256 points and the methods separate), and CIFAR-2
    when its files are present. Mean over seeds with min-max bars."""
    sets = [d for d in DATASETS if d in set(accuracy["dataset"])]
    fig, axes = style.figure(ncols=max(1, len(sets)))
    axes = np.atleast_1d(axes)
    for ax, ds in zip(axes, sets):
        sel = accuracy[accuracy["dataset"] == ds]
        for i, (method, label) in enumerate(LABELS.items()):
            rows = sel[sel["method"] == method].dropna(subset=["accuracy"])
            if rows.empty:
                continue
            s = rows.groupby("n_train")["accuracy"].agg(["mean", "min", "max"]).reset_index()
            st = style.width_style(i)
            ax.errorbar(s["n_train"], s["mean"], yerr=np.vstack([s["mean"] - s["min"], s["max"] - s["mean"]]),
                        marker=st["marker"], color=st["color"], lw=0.8, elinewidth=0.6, label=label,
                        ls="--" if method.endswith("_inf") else "-")
        tasks = sel["task"].dropna().unique()
        title = DATASETS[ds] + (f": {tasks[0]}" if len(tasks) == 1 else "")
        ax.set(xscale="log", xlabel=r"training points $n$", ylabel="test accuracy", title=title)
        ax.legend(loc="lower right")
    return fig


@figure(convergence=["h", "seed", "ntk_rel_err", "nngp_rel_err"])
def ntk_convergence(convergence: pd.DataFrame, options: dict):
    """Relative Frobenius distance between the empirical NTK of a width-h network and
    the analytic infinite-width NTK vs h, log-log, seed mean with min-max bars and the
    fitted slope (about -1/2 expected); the NNGP's for reference."""
    fig, ax = style.figure()
    for i, (col, label) in enumerate((("ntk_rel_err", "NTK"), ("nngp_rel_err", "NNGP"))):
        s = convergence.groupby("h")[col].agg(["mean", "min", "max"]).reset_index()
        k = slope(convergence["h"], convergence[col])
        st = style.width_style(i)
        ax.errorbar(s["h"], s["mean"], yerr=np.vstack([s["mean"] - s["min"], s["max"] - s["mean"]]), ls="",
                    marker=st["marker"], color=st["color"], elinewidth=0.6, label=f"{label}: slope {k:.2f}")
        h = np.geomspace(s["h"].min(), s["h"].max(), 20)
        c = np.exp(np.mean(np.log(s["mean"]) - k * np.log(s["h"])))
        ax.plot(h, c * h ** k, color=st["color"], lw=0.8)
    h = np.geomspace(convergence["h"].min(), convergence["h"].max(), 20)
    ref = convergence.groupby("h")["ntk_rel_err"].mean()
    ax.plot(h, ref.iloc[0] * (h / ref.index[0]) ** -0.5, ls=":", color="0.4", lw=0.8, label=r"$\propto h^{-1/2}$")
    ax.set(xscale="log", yscale="log", xlabel=r"width $h$",
           ylabel=r"$\|K_h-K_\infty\|_F/\|K_\infty\|_F$")
    ax.legend()
    return fig


@figure(linearized=["h", "t", "loss_train", "loss_test", "lin_loss_train", "lin_loss_test", "w_ratio"])
def linearized_training(linearized: pd.DataFrame, options: dict):
    """Left: train (solid) and test (dash-dot) loss vs time t = lr x steps of the
    network trained by gradient descent, and of its linearization around init (open
    markers: train, crosses: test), per width; right: ||w_lin(t) - w(t)|| / ||w(t) -
    w0||, which shrinks as the width grows."""
    fig, (left, right) = style.figure(ncols=2)
    for i, (h, rows) in enumerate(linearized.groupby("h")):
        st = style.width_style(i)
        r = rows[rows["t"] > 0]
        left.plot(r["t"], r["loss_train"], color=st["color"], label=f"$h={h}$ GD train")
        left.plot(r["t"], r["loss_test"], color=st["color"], ls="-.", lw=0.8)
        left.plot(r["t"], r["lin_loss_train"], color=st["color"], ls="", marker=st["marker"], ms=2.5, mfc="white")
        left.plot(r["t"], r["lin_loss_test"], color=st["color"], ls="", marker="x", ms=2.5)
        # after one step w_lin = w exactly (ratio ~ 1e-15, rounding): start at t = 2 lr
        ok = r[np.isfinite(r["w_ratio"]) & (r["w_ratio"] > 0) & (r["t"] >= 2 * r["t"][r["t"] > 0].min())]
        right.plot(ok["t"], ok["w_ratio"], color=st["color"], marker=st["marker"], ms=2.5, label=f"$h={h}$")
    left.plot([], [], color="0.3", ls="-.", label="GD test")
    left.plot([], [], color="0.3", ls="", marker="o", mfc="white", label="linearized train")
    left.plot([], [], color="0.3", ls="", marker="x", label="linearized test")
    left.set(xscale="log", yscale="log", xlabel=r"$t$ (lr $\times$ steps)", ylabel=r"loss $\frac{1}{2n}\sum(f-y)^2$")
    left.legend(fontsize=5.5)
    right.set(xscale="log", yscale="log", xlabel=r"$t$ (lr $\times$ steps)",
              ylabel=r"$\|w_\mathrm{lin}(t)-w(t)\|/\|w(t)-w_0\|$")
    right.legend()
    return fig
