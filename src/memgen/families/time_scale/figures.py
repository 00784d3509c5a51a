"""Figures of the time-scale family (Geiger, Spigler, Jacot, Wyart 2019,
"Disentangling feature and lazy training in deep neural networks").

Each figure reads the summary CSVs only (``table``: one row per (alpha, h, seed);
``curves``: checkpoints of every run). Seeds are averaged (mean, min-max bars);
diverged runs are dropped from means and, in the test-error figure, marked.
Axes use the article's conventions (``sqrt_h_alpha`` = sqrt(h) alpha_article and times
in article units, see memgen.families.time_scale.params.article_units), so runs with either
last-layer scaling or loss normalization land on the same axes.
"""

from __future__ import annotations

import matplotlib
import matplotlib.ticker
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from memgen import MemgenError
from memgen.families.time_scale.summary import CROSSOVER_LEVEL
from memgen.figures import figure, style

SQRT_H_ALPHA = r"$\sqrt{h}\,\alpha$"

# ---------------------------------------------------------------- helpers


def _widths(df: pd.DataFrame):
    """``(h, style, rows)`` for each width, in increasing order, same style everywhere."""
    for i, h in enumerate(sorted(df["h"].unique())):
        yield int(h), style.width_style(i), df[df["h"] == h]


def _seed_stats(df: pd.DataFrame, x: str, y: str, log_y: bool = False) -> pd.DataFrame:
    """Mean and min/max over seeds of ``y`` at each ``x`` (finite values; positive on a log axis)."""
    v = df[[x, y]].replace([np.inf, -np.inf], np.nan).dropna()
    if log_y:
        v = v[v[y] > 0]
    return v.groupby(x)[y].agg(["mean", "min", "max"]).reset_index().rename(columns={x: "x"})


def _points(ax, df, x, y, st, label, log_y=False, filled=True, ls="-"):
    """Seed-mean of ``y`` vs ``x`` with min-max bars; returns how many points were drawn."""
    s = _seed_stats(df, x, y, log_y)
    if len(s):
        err = np.vstack([s["mean"] - s["min"], s["max"] - s["mean"]])
        ax.errorbar(s["x"], s["mean"], yerr=err, marker=st["marker"], color=st["color"], ls=ls, lw=0.8,
                    mfc=st["color"] if filled else "white", mew=0.8, elinewidth=0.6, label=label)
    return len(s)


def _ok(df: pd.DataFrame) -> pd.DataFrame:
    return df[~df["diverged"]]


def _note_if_empty(ax, n: int, what: str) -> None:
    if n == 0:
        ax.text(0.5, 0.5, f"no {what}", transform=ax.transAxes, ha="center", va="center", color="0.4")


# ---------------------------------------------------------------- figures

@figure(curves=['alpha', 'h', 'seed', 't', 'alpha2_loss'])
def loss_vs_time(curves: pd.DataFrame, options: dict):
    """Training loss alpha^2 L vs time t of one width and seed, one curve per scale
    alpha (colour): small alpha trains in the feature regime, large alpha in the lazy
    regime."""
    h = options.get("h") or int(curves["h"].min())
    seed = int(options.get("seed", 0))
    sel = curves[(curves["h"] == h) & (curves["seed"] == seed)]
    if sel.empty:
        raise MemgenError(f"figure loss_vs_time: no curve for h={h}, seed={seed} "
                          f"(widths {sorted(curves['h'].unique())}, seeds {sorted(curves['seed'].unique())})")
    fig, ax = style.figure()
    norm = style.log_norm(sel["alpha"].unique())  # colour: the config's alpha
    cmap = matplotlib.colormaps[style.CMAP]
    for alpha, run in sel.groupby("alpha"):
        y = run["alpha2_loss"]
        keep = (run["t"] > 0) & np.isfinite(y) & (y > 0)
        ax.plot(run["t"][keep], y[keep], color=cmap(norm(alpha)))
    ax.set(xscale="log", yscale="log", xlabel=r"$t$", ylabel=r"$\alpha^2\,\mathcal{L}$", title=f"$h={h}$")
    style.colorbar(fig, ax, norm, r"$\alpha$")
    return fig


@figure(table=['h', 'seed', 'sqrt_h_alpha', 't_fit', 'converged', 'diverged'])
def time_to_fit(table: pd.DataFrame, options: dict):
    """Time t_fit at which every training margin is reached vs sqrt(h) alpha (article
    convention), seed mean with min-max bars, one series per width h: the widths
    collapse on one curve, whose change of slope marks the lazy/feature crossover."""
    fig, ax = style.figure()
    fit = table[table["converged"] & ~table["diverged"]]
    n = sum(_points(ax, rows, "sqrt_h_alpha", "t_fit", st, f"$h={h}$", log_y=True) for h, st, rows in _widths(fit))
    _note_if_empty(ax, n, "converged run")
    ax.set(xscale="log", yscale="log", xlabel=SQRT_H_ALPHA, ylabel=r"$t_\mathrm{fit}$")
    if n:
        ax.legend()
    return fig


@figure(table=['h', 'seed', 'sqrt_h_alpha', 'ntk_rel_change', 'ntk_shape_change', 'diverged'])
def kernel_change(table: pd.DataFrame, options: dict):
    """Change of the NTK during training vs sqrt(h) alpha: left, relative change
    ||Theta_T - Theta_0|| / ||Theta_0||; right, change of its shape (normalised
    kernels). Large in the feature regime, vanishing in the lazy regime."""
    fig, (left, right) = style.figure(ncols=2, sharex=True)
    ok = _ok(table)
    n = 0
    for h, st, rows in _widths(ok):
        n += _points(left, rows, "sqrt_h_alpha", "ntk_rel_change", st, f"$h={h}$", log_y=True)
        _points(right, rows, "sqrt_h_alpha", "ntk_shape_change", st, f"$h={h}$")
    _note_if_empty(left, n, "finite kernel change")
    left.set(xscale="log", yscale="log", xlabel=SQRT_H_ALPHA, ylabel=r"$\|\Theta_T-\Theta_0\|/\|\Theta_0\|$")
    right.set(xscale="log", xlabel=SQRT_H_ALPHA, ylabel=r"$\|\hat\Theta_T-\hat\Theta_0\|$")
    right.text(0.97, 0.95, r"$\hat\Theta=\Theta/\|\Theta\|$", transform=right.transAxes, ha="right", va="top")
    top = ok["ntk_shape_change"].replace([np.inf, -np.inf], np.nan).max()
    right.set_ylim(0, min(2.0, 1.15 * top) if top > 0 else 2.0)
    if n:
        left.legend()
    return fig


@figure(table=['sqrt_h_alpha', 'h', 'seed', 'test_err', 'diverged'])
def test_error(table: pd.DataFrame, options: dict):
    """Test error at the end of training vs sqrt(h) alpha, per width (seed mean, min-max
    bars); dashed: the network's frozen NTK at init trained to the same criterion; red
    crosses mark diverged runs."""
    fig, ax = style.figure()
    ok = _ok(table)
    frozen = "frozen_test_err" in table.columns
    for h, st, rows in _widths(table):
        _points(ax, _ok(rows), "sqrt_h_alpha", "test_err", st, f"$h={h}$")
        if frozen:
            ref = rows[~rows["frozen_diverged"]] if "frozen_diverged" in rows else rows
            s = _seed_stats(ref, "sqrt_h_alpha", "frozen_test_err")
            ax.plot(s["x"], s["mean"], ls="--", lw=0.8, color=st["color"])
    handles, labels = ax.get_legend_handles_labels()
    if frozen:
        handles.append(Line2D([], [], ls="--", lw=0.8, color="0.3"))
        labels.append("frozen kernel")
    bad = table[table["diverged"]]
    if len(bad):  # at the bottom of the axes: their error is meaningless
        ax.plot(bad["sqrt_h_alpha"], np.full(len(bad), 0.03), "x", color="red", ms=5, mew=1.0,
                transform=ax.get_xaxis_transform(), clip_on=False)
        handles.append(Line2D([], [], ls="", marker="x", color="red", ms=5, mew=1.0))
        labels.append("diverged")
    _note_if_empty(ax, len(ok) + len(bad), "run")
    ax.set(xscale="log", xlabel=SQRT_H_ALPHA, ylabel=r"test error $\epsilon$")
    ax.set_ylim(bottom=0)
    if handles:
        ax.legend(handles, labels)
    return fig


@figure(table=['sqrt_h_alpha', 'h', 'seed', 't_memorize', 't_best_test', 'diverged'])
def memorization_time(table: pd.DataFrame, options: dict):
    """Time to memorise the training set (train error 0, filled) and time of the best
    test error (open) vs sqrt(h) alpha, per width."""
    fig, ax = style.figure()
    ok = _ok(table)
    n = 0
    handles, labels = [], []
    for h, st, rows in _widths(ok):
        n += _points(ax, rows, "sqrt_h_alpha", "t_memorize", st, None, log_y=True)
        n += _points(ax, rows, "sqrt_h_alpha", "t_best_test", st, None, log_y=True, filled=False, ls=":")
        handles.append(Line2D([], [], ls="", **st))
        labels.append(f"$h={h}$")
    grey = {"marker": "o", "color": "0.3", "ls": ""}
    handles += [Line2D([], [], **grey), Line2D([], [], mfc="white", **grey)]
    labels += [r"$t_\mathrm{mem}$ (train error $=0$)", r"$t_\mathrm{best}$ (min test error)"]
    _note_if_empty(ax, n, "finite time")
    ax.set(xscale="log", yscale="log", xlabel=SQRT_H_ALPHA, ylabel=r"time $t$")
    ax.legend(handles, labels)
    return fig


# ---------------------------------------------------------------- phase diagram


def _strip_edges(v: np.ndarray) -> np.ndarray:
    """Cell edges around sorted positive values, at geometric midpoints (a log axis)."""
    lv = np.log(v)
    mid = (lv[1:] + lv[:-1]) / 2
    step = np.diff(lv).mean() if len(v) > 1 else np.log(10) / 2
    return np.exp(np.concatenate([[lv[0] - step / 2], mid, [lv[-1] + step / 2]]))


def _heat(ax, table: pd.DataFrame, col: str, norm, cmap):
    """Seed means of ``col`` as cells over (alpha_article, h), one strip per width."""
    means = table.groupby(["h", "alpha_article"])[col].mean().reset_index()
    hs = np.array(sorted(means["h"].unique()), dtype=float)
    h_edges = _strip_edges(hs)
    for i, h in enumerate(hs):
        row = means[means["h"] == h].sort_values("alpha_article")
        x = row["alpha_article"].to_numpy(float)
        ax.pcolormesh(_strip_edges(x), h_edges[i:i + 2], row[col].to_numpy(float)[None, :], norm=norm, cmap=cmap,
                      shading="flat")
    return h_edges


def _crossover(ax, phase: pd.DataFrame, h_edges) -> None:
    """alpha*(h) with its range over seeds, and the fitted power law."""
    ok = phase[np.isfinite(phase["alpha_star"])]
    if len(ok):
        err = np.vstack([ok["alpha_star"] - ok["alpha_star_min"], ok["alpha_star_max"] - ok["alpha_star"]])
        ax.errorbar(ok["alpha_star"], ok["h"], xerr=err, fmt="o", color="white", mec="k", ms=4, elinewidth=0.8,
                    ecolor="k", label=r"$\alpha^*(h)$")
    a, c = float(phase["exponent"].iloc[0]), float(phase["prefactor"].iloc[0])
    if np.isfinite(a) and np.isfinite(c):
        h = np.geomspace(h_edges[0], h_edges[-1], 50)
        lo, hi = float(phase["exponent_lo"].iloc[0]), float(phase["exponent_hi"].iloc[0])
        ci = f" [{lo:.2f}, {hi:.2f}]" if np.isfinite(lo) else ""
        ax.plot(c * h ** (-a), h, "--", color="k", lw=1.0, label=rf"$\alpha^*\propto h^{{-{a:.2f}}}${ci}")
    if len(ok):  # the paper's exponent through the smallest width's crossover
        h0, a0 = float(ok["h"].iloc[0]), float(ok["alpha_star"].iloc[0])
        h = np.geomspace(h_edges[0], h_edges[-1], 50)
        ax.plot(a0 * (h / h0) ** (-0.5), h, ":", color="0.4", lw=0.8, label=r"$h^{-1/2}$")


@figure(table=["alpha_article", "h", "seed", "test_err", "ntk_rel_change", "diverged"],
        phase=["h", "alpha_star", "alpha_star_min", "alpha_star_max", "exponent", "exponent_lo", "exponent_hi",
               "prefactor"])
def phase_diagram(table: pd.DataFrame, phase: pd.DataFrame, options: dict):
    """The lazy/feature phase diagram over (alpha, h), alpha in the article's convention:
    left, the test error; right, the relative change of the NTK ||Theta_T - Theta_0|| /
    ||Theta_0|| (log colour scale), seed means. Circles: the crossover alpha*(h), where
    the kernel change falls through 1 (range over seeds); dashed: the fitted power law
    alpha* ~ h^(-a) with the 95% interval of a; dotted: the paper's h^(-1/2) through the
    smallest width's crossover."""
    ok = table[~table["diverged"]]
    fig, (left, right) = style.figure(ncols=2, sharey=True)
    err_norm = matplotlib.colors.Normalize(vmin=0, vmax=max(0.5, float(ok["test_err"].max())))
    change = ok["ntk_rel_change"].replace([np.inf, -np.inf], np.nan)
    pos = change[change > 0]
    ch_norm = style.log_norm(pos if len(pos) else [1.0])
    h_edges = _heat(left, ok, "test_err", err_norm, style.CMAP)
    _heat(right, ok.assign(ntk_rel_change=change.where(change > 0)), "ntk_rel_change", ch_norm, style.CMAP)
    fig.colorbar(matplotlib.cm.ScalarMappable(norm=err_norm, cmap=style.CMAP), ax=left, pad=0.02,
                 fraction=0.05).set_label(r"test error $\epsilon$")
    style.colorbar(fig, right, ch_norm, r"$\|\Theta_T-\Theta_0\|/\|\Theta_0\|$")
    for ax in (left, right):
        _crossover(ax, phase, h_edges)
        ax.set(xscale="log", yscale="log", xlabel=r"$\alpha$ (article)")
    left.set_ylabel(r"width $h$")
    widths = sorted(ok["h"].unique())
    left.set_yticks(widths, [str(int(h)) for h in widths])
    left.yaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    handles, labels = right.get_legend_handles_labels()
    if handles:
        right.legend(handles, labels, loc="lower left", fontsize=5.5, frameon=True)
    return fig


@figure(table=["sqrt_h_alpha", "h", "seed", "test_err", "ntk_rel_change", "diverged"],
        phase=["h", "sqrt_h_alpha_star", "level"])
def phase_collapse(table: pd.DataFrame, phase: pd.DataFrame, options: dict):
    """Test error (left) and relative NTK change (right) vs sqrt(h) alpha for every
    width (seed mean, min-max bars): widths collapse on one curve. Dotted verticals: each
    width's crossover sqrt(h) alpha*, where the kernel change crosses the dashed level 1."""
    fig, (left, right) = style.figure(ncols=2, sharex=True)
    ok = _ok(table)
    n = 0
    for h, st, rows in _widths(ok):
        n += _points(left, rows, "sqrt_h_alpha", "test_err", st, f"$h={h}$")
        _points(right, rows, "sqrt_h_alpha", "ntk_rel_change", st, f"$h={h}$", log_y=True)
        star = phase.loc[phase["h"] == h, "sqrt_h_alpha_star"]
        if len(star) and np.isfinite(float(star.iloc[0])):
            for ax in (left, right):
                ax.axvline(float(star.iloc[0]), ls=":", lw=0.8, color=st["color"])
    _note_if_empty(left, n, "run")
    right.axhline(float(phase["level"].iloc[0]) if len(phase) else 1.0, ls="--", lw=0.8, color="0.3")
    left.set(xscale="log", xlabel=SQRT_H_ALPHA, ylabel=r"test error $\epsilon$")
    left.set_ylim(bottom=0)
    right.set(xscale="log", yscale="log", xlabel=SQRT_H_ALPHA, ylabel=r"$\|\Theta_T-\Theta_0\|/\|\Theta_0\|$")
    if n:
        left.legend()
    return fig


@figure(levels=["level", "h", "alpha_star", "alpha_star_min", "alpha_star_max", "exponent", "exponent_lo",
                "exponent_hi", "prefactor"])
def crossover_levels(levels: pd.DataFrame, options: dict):
    """How the crossover depends on the level that defines it: left, alpha*(h) (article
    convention, range over seeds) where the relative NTK change falls through each level,
    with its fitted power law alpha* ~ h^(-a); right, the fitted exponent a with its 95%
    interval vs the level, the paper's a = 1/2 dashed, the level of the phase diagram and
    the scorecard dotted. Small levels sit deep in the lazy regime, large ones in the
    feature regime."""
    fig, (left, right) = style.figure(ncols=2)
    # one fit per level (the same on each of its rows)
    fits = levels.groupby("level")[["exponent", "exponent_lo", "exponent_hi", "prefactor"]].first()
    for i, (level, g) in enumerate(levels.groupby("level")):
        st = style.width_style(i)
        ok = g[np.isfinite(g["alpha_star"])]
        if len(ok):
            err = np.vstack([ok["alpha_star"] - ok["alpha_star_min"], ok["alpha_star_max"] - ok["alpha_star"]])
            left.errorbar(ok["h"], ok["alpha_star"], yerr=err, marker=st["marker"], color=st["color"], ls="none",
                          mew=0.8, elinewidth=0.6, label=f"level {level:g}")
        a, c = fits.loc[level, "exponent"], fits.loc[level, "prefactor"]
        if len(ok) and np.isfinite(a) and np.isfinite(c):
            h = np.geomspace(float(ok["h"].min()), float(ok["h"].max()), 20)
            left.plot(h, c * h ** (-a), "-", color=st["color"], lw=0.8)
    _note_if_empty(left, sum(np.isfinite(levels["alpha_star"])), "crossing")
    left.set(xscale="log", yscale="log", xlabel=r"width $h$", ylabel=r"$\alpha^*$ (article)")
    widths = sorted(levels["h"].unique())
    left.set_xticks(widths, [str(int(h)) for h in widths])
    left.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    fits = fits.dropna(subset=["exponent"])  # no interval (too few points) draws no bar
    if len(fits):
        err = np.vstack([fits["exponent"] - fits["exponent_lo"], fits["exponent_hi"] - fits["exponent"]])
        right.errorbar(fits.index, fits["exponent"], yerr=np.nan_to_num(err), fmt="o", color="k", ms=3.5,
                       elinewidth=0.8, label="fitted $a$ (95%)")
        left.legend(fontsize=5.5)
    _note_if_empty(right, len(fits), "fitted exponent")
    right.axhline(0.5, ls="--", lw=0.8, color="0.3", label=r"paper: $a=1/2$")
    right.axvline(CROSSOVER_LEVEL, ls=":", lw=0.8, color="0.4", label="phase diagram's level")
    right.set(xscale="log", xlabel=r"level of $\|\Theta_T-\Theta_0\|/\|\Theta_0\|$", ylabel=r"exponent $a$")
    right.legend(fontsize=5.5)
    return fig
