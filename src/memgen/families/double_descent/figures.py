"""Figures of the double-descent family (Heckel & Yilmaz 2021, "Early stopping in deep
networks: double descent and how to eliminate it"; Advani & Saxe 2020; seed 004).

Every figure reads the summary CSVs only (memgen.families.double_descent.summary)
and puts experiment and theory on the same axes: empirical values as solid lines or
markers (mean, with a 10-90% band over data draws where there are draws), theory as
dashed lines. Non-finite values (a diverged run, the pole of the min-norm risk at
n/p = 1) are dropped from the curves, never plotted or allowed to break the axes.
"""

from __future__ import annotations


import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from memgen.figures import figure, style


SCHEDULE_TITLE = {"uniform": "one step size", "per_group": r"per-group step sizes $\eta_i\propto 1/s_i^2$"}
GROUPS = (("fast", "large eigenvalues", style.COLORS[0]), ("slow", "small eigenvalues", style.COLORS[1]))
RANK_RTOL = 1e-8
INIT_STYLE = {"small": style.width_style(0), "large": style.width_style(1)}
THEORY = {"ls": "--", "lw": 1.0, "color": "k"}




# ---------------------------------------------------------------- helpers




def _xy(df: pd.DataFrame, x: str, *ys: str, positive_x=True, positive_y=False) -> pd.DataFrame:
    """Rows with finite x and ys (x > 0 for a log axis, ys > 0 for a log y axis), sorted by x."""
    cols = [x, *ys]
    v = df[cols].apply(pd.to_numeric, errors="coerce").replace([np.inf, -np.inf], np.nan).dropna()
    if positive_x:
        v = v[v[x] > 0]
    if positive_y:
        v = v[(v[list(ys)] > 0).all(axis=1)]
    return v.sort_values(x)


def _band(ax, df, x, mean, lo, hi, color, label, positive_y=False, lw=1.2):
    v = _xy(df, x, mean, lo, hi, positive_y=positive_y)
    if len(v):
        ax.fill_between(v[x], v[lo], v[hi], color=color, alpha=0.22, lw=0)
        ax.plot(v[x], v[mean], color=color, lw=lw, label=label)
    return len(v)


def _line(ax, df, x, y, positive_y=False, **kw):
    v = _xy(df, x, y, positive_y=positive_y)
    if len(v):
        ax.plot(v[x], v[y], **kw)
    return len(v)


def _gapped_line(ax, df, x, y, **kw):
    """Line through (x, y) sorted by x, broken where y is not finite or <= 0 (a pole)."""
    v = df[[x, y]].apply(pd.to_numeric, errors="coerce").replace([np.inf, -np.inf], np.nan)
    v = v[np.isfinite(v[x])].sort_values(x)
    yy = v[y].where(v[y] > 0)
    if yy.notna().any():
        ax.plot(v[x], yy, **kw)
    return int(yy.notna().sum())


def _note_if_empty(ax, n: int, what: str) -> None:
    if n == 0:
        ax.text(0.5, 0.5, f"no {what}", transform=ax.transAxes, ha="center", va="center", color="0.4")


def _panel_label(ax, text: str) -> None:
    ax.set_title(text, loc="left")


# ---------------------------------------------------------------- figures


@figure(epochwise=["schedule", "step", "excess_mean", "excess_q10", "excess_q90", "excess_theory", "excess_theory_fast", "excess_theory_slow"])
def epochwise_risk(epochwise: pd.DataFrame, options: dict):
    """Excess test risk of linear regression trained by gradient descent vs step:
    empirical mean with a 10-90% band over data draws, closed form (dashed) and its two
    feature-group contributions; a uniform step size shows epoch-wise double descent,
    per-group step sizes remove it."""
    """Excess risk R - sigma^2 of linear GD vs step: empirical mean and 10-90% band over
    the draws, closed form (dashed) and the closed form's two group contributions."""
    fig, axes = style.figure(ncols=2, sharey=True)
    for ax, sched in zip(axes, ("uniform", "per_group")):
        df = epochwise[epochwise["schedule"] == sched]
        draws = pd.to_numeric(df["draws"], errors="coerce").max() if "draws" in df else np.nan
        n = _band(ax, df, "step", "excess_mean", "excess_q10", "excess_q90", style.COLORS[0],
                  f"GD, mean of {draws:.0f} draws" if np.isfinite(draws) else "GD, mean over draws")
        _line(ax, df, "step", "excess_theory", label="closed form", **THEORY)
        for key, what, color in (("excess_theory_fast", "large", style.COLORS[2]),
                                 ("excess_theory_slow", "small", style.COLORS[3])):
            _line(ax, df, "step", key, lw=0.8, ls=":", color=color, label=f"closed form, {what}-eigenvalue group")
        _note_if_empty(ax, n, "finite risk")
        ax.set(xscale="log", xlabel="GD step $k$")
        _panel_label(ax, f"({'ab'[sched == 'per_group']}) {SCHEDULE_TITLE[sched]}")
    axes[0].set_ylabel(r"excess test risk $R-\sigma^2$")
    axes[0].set_ylim(bottom=0)
    if axes[1].get_legend_handles_labels()[0]:
        axes[1].legend(loc="upper right")
    return fig


@figure(two_layer=["init", "scale", "step", "risk", "risk_ode", "risk_lazy"])
def two_layer_risk(two_layer: pd.DataFrame, options: dict):
    """Risk of the two-layer linear network vs step from a small and a large init,
    against the reduced (u, z) ODE and the linearised (lazy) network."""
    """Risk of the two-layer linear network vs step, small and large init, against the
    reduced (u, z) ODE and the linearised (lazy) network."""
    fig, axes = style.figure(ncols=2, sharey=True)
    for ax, init in zip(axes, ("small", "large")):
        df = two_layer[two_layer["init"] == init]
        n = _line(ax, df, "step", "risk", color=INIT_STYLE[init]["color"], lw=1.6, label="network (GD)")
        _line(ax, df, "step", "risk_ode", label=r"reduced $(u,z)$ ODE", **THEORY)
        _line(ax, df, "step", "risk_lazy", ls=":", lw=1.4, color="0.3", label="linearised (lazy) network")
        if "noise_var" in df and len(df):
            ax.axhline(float(df["noise_var"].iloc[0]), color="0.7", lw=0.6, zorder=0)
        _note_if_empty(ax, n, "finite risk")
        scale = f"{float(df['scale'].iloc[0]):g}" if len(df) else "?"
        ax.set(xscale="log", xlabel="GD step $k$")
        _panel_label(ax, f"({'ab'[init == 'large']}) {init} init (scale {scale})")
    axes[0].set_ylabel(r"test risk $R$")
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(loc="lower left")
    return fig


@figure(epochwise=["schedule", "step", "werr_fast_mean", "werr_fast_q10", "werr_fast_q90", "werr_slow_mean", "werr_slow_q10", "werr_slow_q90", "werr_fast_theory", "werr_slow_theory"],
        two_layer=["init", "scale", "step", "werr_fast", "werr_slow", "werr_fast_ode", "werr_slow_ode"])
def weight_error(epochwise: pd.DataFrame, two_layer: pd.DataFrame, options: dict):
    """Mean over each feature group of ((w_i - theta_i) / theta_i)^2 vs step: (a) linear
    gradient descent, (b) the two-layer network from the small init."""
    """The seed's "MSE weights, large/small": mean over each group of
    ((w_i - theta_i)/theta_i)^2 vs step; (a) linear GD (one step size), (b) two-layer
    network from the small init."""
    fig, axes = style.figure(ncols=2)
    ax = axes[0]
    df = epochwise[epochwise["schedule"] == "uniform"]
    n = 0
    for key, what, color in GROUPS:
        n += _band(ax, df, "step", f"werr_{key}_mean", f"werr_{key}_q10", f"werr_{key}_q90", color,
                   what, positive_y=True)
        _line(ax, df, "step", f"werr_{key}_theory", positive_y=True, ls="--", lw=1.0, color="k")
    _note_if_empty(ax, n, "finite error")
    ax.set(xscale="log", yscale="log", xlabel="GD step $k$",
           ylabel=r"$\langle ((w_i-\theta_i)/\theta_i)^2\rangle_{\rm group}$")
    _panel_label(ax, "(a) linear model, one step size")
    ax = axes[1]
    df = two_layer[two_layer["init"] == "small"]
    n = 0
    for key, what, color in GROUPS:
        n += _line(ax, df, "step", f"werr_{key}", positive_y=True, color=color, lw=1.6, label=what)
        _line(ax, df, "step", f"werr_{key}_ode", positive_y=True, ls="--", lw=1.0, color="k")
    _note_if_empty(ax, n, "finite error")
    ax.set(xscale="log", yscale="log", xlabel="GD step $k$")
    _panel_label(ax, "(b) two-layer network, small init")
    handles = [Line2D([], [], color=c, lw=1.4) for _, _, c in GROUPS] + [Line2D([], [], **THEORY)]
    axes[0].legend(handles, [w for _, w, _ in GROUPS] + ["theory (closed form / ODE)"], loc="lower left")
    return fig


@figure(modelwise=["source", "method", "snr", "ratio", "risk", "risk_q10", "risk_q90"])
def modelwise(modelwise: pd.DataFrame, options: dict):
    """Test risk vs n/p: (a) min-norm least squares, exact finite-p theory (lines) and
    simulations (markers, 10-90% bars), with its peak at n/p = 1; (b) oracle early-
    stopped gradient flow, where the peak is gone."""
    """Test risk vs n/p: (a) min-norm least squares (exact finite-p theory lines, empirical
    mean markers with 10-90% bars), (b) oracle early-stopped gradient flow (proportional
    limit theory), with (a)'s theory faint for comparison."""
    fig, axes = style.figure(ncols=2, sharey=True)
    snrs = sorted(modelwise["snr"].dropna().unique())
    lo_all = []
    for ax, method in zip(axes, ("min_norm", "early_stopped")):
        n = 0
        for i, snr in enumerate(snrs):
            st = style.width_style(i)
            rows = modelwise[(modelwise["snr"] == snr) & (modelwise["method"] == method)]
            theory = rows[rows["source"] == ("theory" if method == "min_norm" else "theory_asymptotic")]
            _gapped_line(ax, theory, "ratio", "risk", color=st["color"], ls="--", lw=1.0)
            if method == "early_stopped":
                ref = modelwise[(modelwise["snr"] == snr) & (modelwise["method"] == "min_norm")
                                & (modelwise["source"] == "theory")]
                _gapped_line(ax, ref, "ratio", "risk", color=st["color"], lw=0.5, alpha=0.3)
            emp = _xy(rows[rows["source"] == "empirical"], "ratio", "risk", "risk_q10", "risk_q90", positive_y=True)
            if len(emp):
                err = np.vstack([np.clip(emp["risk"] - emp["risk_q10"], 0, None),
                                 np.clip(emp["risk_q90"] - emp["risk"], 0, None)])
                ax.errorbar(emp["ratio"], emp["risk"], yerr=err, ls="", marker=st["marker"], color=st["color"],
                            mfc="white", mew=0.8, elinewidth=0.6, label=f"SNR $={snr:g}$")
                lo_all.append(float(emp["risk_q10"].min()))
            n += len(emp)
        ax.axvline(1.0, color="0.6", lw=0.6, ls=":", zorder=0)
        _note_if_empty(ax, n, "finite risk")
        ax.set(yscale="log", xlabel="samples per parameter $n/p$")
        _panel_label(ax, "(a) min-norm least squares" if method == "min_norm"
                     else "(b) early-stopped gradient flow")
    axes[0].set_ylabel(r"test risk $R$")
    if lo_all:  # the pole at n/p = 1: cap the axis so the rest stays readable
        top = 10 * max(1.0, max(modelwise.loc[(modelwise["source"] == "theory_asymptotic")
                                               & (modelwise["method"] == "early_stopped"), "risk"]
                               .replace([np.inf, -np.inf], np.nan).dropna().tolist() or [1.0]))
        axes[0].set_ylim(0.7 * min(lo_all), top)
        emp = modelwise[(modelwise["source"] == "empirical")]
        for ax, method in zip(axes, ("min_norm", "early_stopped")):
            off = _xy(emp[emp["method"] == method], "ratio", "risk", positive_y=True)
            off = off[off["risk"] > top].groupby("ratio")["risk"].max()
            for ratio, risk in off.items():  # means beyond the axis (the pole): marked at the top edge
                ax.plot([ratio], [0.97], marker="^", color="0.2", ms=4, ls="", clip_on=False,
                        transform=ax.get_xaxis_transform())
                ax.text(ratio + 0.04, 0.97, f"mean {risk:.3g}", transform=ax.get_xaxis_transform(),
                        ha="left", va="top", fontsize=6, color="0.2")
    handles, labels = axes[0].get_legend_handles_labels()
    handles += [Line2D([], [], color="k", ls="--", lw=1.0), Line2D([], [], color="k", ls="", marker="o", mfc="white")]
    labels += ["theory", "experiment (mean, 10-90%)"]
    axes[1].legend(handles, labels, loc="upper right")
    return fig


@figure(jacobian=["init", "scale", "when", "index", "sv", "w_share"])
def jacobian_spectrum(jacobian: pd.DataFrame, options: dict):
    """Singular values of the network Jacobian on the training set at init (open) and
    after training (filled), small and large init; (b) the share of each right singular
    vector on the first layer."""
    """Singular values of the network Jacobian (outputs on the training set w.r.t. (W, v))
    at init (open) and after training (filled), small and large init; (b) the share of
    each right singular vector on the first layer W (the seed's view)."""
    fig, axes = style.figure(ncols=2)
    handles, labels = [], []
    n = 0
    for init in ("small", "large"):
        st = INIT_STYLE[init]
        for when, filled in (("init", False), ("final", True)):
            df = jacobian[(jacobian["init"] == init) & (jacobian["when"] == when)]
            sv = pd.to_numeric(df["sv"], errors="coerce")
            df = df[sv > RANK_RTOL * sv.max()] if sv.notna().any() else df  # rank <= d: drop numerical zeros
            v = _xy(df, "index", "sv", positive_y=True)
            kw = dict(color=st["color"], marker=st["marker"], ms=2.5, mew=0.6, mfc=st["color"] if filled else "white")
            if len(v):
                axes[0].plot(v["index"], v["sv"], ls="-" if filled else ":", lw=0.6, **kw)
            w = _xy(df, "sv", "w_share", positive_y=False)
            if len(w):
                axes[1].plot(w["sv"], w["w_share"], ls="", **kw)
            n += len(v)
            scale = f"{float(df['scale'].iloc[0]):g}" if len(df) else "?"
            handles.append(Line2D([], [], ls="", **kw))
            labels.append(f"{init} init ({scale}), {'after training' if filled else 'at init'}")
    _note_if_empty(axes[0], n, "singular value")
    axes[0].set(yscale="log", xlabel="index $i$", ylabel=r"singular value $\sigma_i$ of $\partial f/\partial(W,v)$")
    axes[1].set(xscale="log", xlabel=r"singular value $\sigma_i$", ylabel=r"share of $W$ in right sing. vector",
                ylim=(-0.03, 1.03))
    _panel_label(axes[0], "(a) Jacobian spectrum (nonzero part)")
    _panel_label(axes[1], "(b) first vs second layer")
    axes[0].legend(handles, labels, loc="lower left")
    return fig


# ---------------------------------------------------------------- seed 004's vector fields

PLANE_AXES = {"u_z1": ("$u$", "$z_1$"), "u_z2": ("$u$", "$z_2$"), "z1_z2": ("$z_1$", "$z_2$")}
PATHS = {"network": {"color": style.COLORS[1], "lw": 1.6, "label": r"network $(\|v\|, W^\top v/\|v\|)$"},
         "ode": {"color": "k", "lw": 1.0, "ls": "--", "label": r"reduced $(u,z)$ ODE"}}
VECTOR_FIELD_COLUMNS = ["example", "kappa", "scale", "plane", "kind", "step", "x", "y", "dx", "dy"]


def _vector_field(table: pd.DataFrame, plane: str):
    """One panel per example: the field's direction (arrows of equal length on screen,
    coloured by log10 of the speed) and both paths, start (o) to end (*)."""
    import matplotlib

    examples = sorted(pd.to_numeric(table["example"], errors="coerce").dropna().unique())
    fig, axes = style.figure(ncols=len(examples), height=2.4)
    axes = np.atleast_1d(axes)
    speeds = []
    for i, (ax, e) in enumerate(zip(axes, examples)):
        rows = table[(table["example"] == e) & (table["plane"] == plane)]
        box = _xy(rows[rows["kind"] == "field"], "x", "y", positive_x=False)  # the grid (finite points)
        f = _xy(rows[rows["kind"] == "field"], "x", "y", "dx", "dy", positive_x=False)
        span_x, span_y = (float(np.ptp(box[c])) or 1.0 for c in ("x", "y")) if len(box) else (1.0, 1.0)
        n = np.hypot(f["dx"] / span_x, f["dy"] / span_y)  # in units of the box: equal lengths on screen
        ok = (n > 0).to_numpy()
        cells = max(box["x"].nunique() - 1, 1)
        if ok.any():
            speed = np.log10(np.hypot(f["dx"], f["dy"])[ok])
            speeds.append(speed)
            ax.quiver(f["x"][ok], f["y"][ok], (f["dx"] / n)[ok], (f["dy"] / n)[ok], speed, cmap=style.CMAP,
                      angles="xy", scale_units="xy", scale=cells / 0.6, pivot="mid",
                      width=0.006, headwidth=3.5, zorder=1)
        for kind, kw in PATHS.items():
            p = rows[rows["kind"] == kind].sort_values("step")
            v = p[["x", "y"]].apply(pd.to_numeric, errors="coerce").replace([np.inf, -np.inf], np.nan).dropna()
            if len(v):
                ax.plot(v["x"], v["y"], zorder=3, **kw)
                ax.plot(v["x"].iloc[[0]], v["y"].iloc[[0]], "o", color=kw["color"], ms=3, zorder=4)
                ax.plot(v["x"].iloc[[-1]], v["y"].iloc[[-1]], "*", color=kw["color"], ms=6, zorder=4)
        _note_if_empty(ax, int(ok.sum()), "field")
        kappa, scale = (pd.to_numeric(rows[c], errors="coerce").dropna() for c in ("kappa", "scale"))
        title = rf"$\kappa={kappa.iloc[0]:g}$, init {scale.iloc[0]:g}" if len(kappa) and len(scale) else "?"
        xlabel, ylabel = PLANE_AXES[plane]
        ax.set(xlabel=xlabel, ylabel=ylabel)
        if len(box):  # the whole box of the field (the origin included), half a cell around it
            ax.set_xlim(box["x"].min() - 0.5 * span_x / cells, box["x"].max() + 0.5 * span_x / cells)
            ax.set_ylim(box["y"].min() - 0.5 * span_y / cells, box["y"].max() + 0.5 * span_y / cells)
        _panel_label(ax, f"({'abcdefgh'[i % 8]}) {title}")
    if speeds:
        lo, hi = float(min(s.min() for s in speeds)), float(max(s.max() for s in speeds))
        norm = matplotlib.colors.Normalize(lo, hi if hi > lo else lo + 1)
        cb = fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=style.CMAP), ax=list(axes), pad=0.01,
                          fraction=0.03, aspect=30)
        cb.set_label(r"$\log_{10}$ speed")
    axes[0].legend(loc="best", fontsize=5.5)
    return fig


@figure(vector_field=VECTOR_FIELD_COLUMNS)
def vector_field_u_z1(vector_field: pd.DataFrame, options: dict):
    """Seed 004's vector field of the reduced (u, z) ODE of a two-layer linear network
    in the (u, z1) plane (z1: the weight on the large-eigenvalue feature), d = 2, one
    panel per example (eigenvalue ratio kappa, init scale). Arrows: the direction of the
    flow (equal length, colour: log10 speed) with z2 taken on the ODE's invariant surface
    u^2/lr_v - |z|^2/lr_W = c (the seed fixes z2 instead), so the ODE's path (dashed)
    follows them; no arrows where that surface does not reach. Solid: the trained
    network's rank-one projection (|v|, W^T v / |v|); o start, * end. From the small init
    the network follows the ODE from the saddle at the origin; from the large one it stays
    lazy, far from the ODE's path."""
    return _vector_field(vector_field, "u_z1")


@figure(vector_field=VECTOR_FIELD_COLUMNS)
def vector_field_u_z2(vector_field: pd.DataFrame, options: dict):
    """Seed 004's vector field of the reduced (u, z) ODE in the (u, z2) plane (z2: the
    weight on the small-eigenvalue feature), d = 2, one panel per example (kappa, init
    scale), z1 on the ODE's invariant surface; arrows, paths and markers as in
    vector_field_u_z1. With kappa = 100 the slow weight z2 moves only after u and z1
    have grown: the second, slow phase of learning."""
    return _vector_field(vector_field, "u_z2")


@figure(vector_field=VECTOR_FIELD_COLUMNS)
def vector_field_z1_z2(vector_field: pd.DataFrame, options: dict):
    """Seed 004's vector field of the reduced (u, z) ODE in the (z1, z2) plane, d = 2,
    one panel per example (kappa, init scale), u on the ODE's invariant surface; arrows,
    paths and markers as in vector_field_u_z1. With kappa = 100 the paths first run along
    z1 (the large-eigenvalue feature), then turn to z2; with kappa = 1 both grow at once."""
    return _vector_field(vector_field, "z1_z2")
