"""Figures of the curvature family (inverse HVPs and influence functions; Koh & Liang
2017, "Understanding black-box predictions via influence functions"; seed 003).

Each figure reads the summary CSVs only (memgen.families.curvature.summary):

- ``lissa_scale``: LiSSA iterates x_j of the seed's toy in the (x1, x2) plane for each
  scale (damping 0), as in the seed's figures, and |x_j - x*| vs j; a scale the guard
  rejects (s <= lambda_max / 2) is drawn until it leaves the window and marked diverged;
- ``lissa_damping``: the same for each damping at one scale, each converging to its own
  (H + damping I)^{-1} v (stars);
- ``solver_accuracy``: relative error vs number of Hessian-vector products, CG vs LiSSA,
  per model;
- ``influence_vs_loo``: predicted vs actual (retrained) change of the test loss on
  removing a training point, per model, with Pearson's R (Koh & Liang Fig. 2);
- ``helpful_harmful``: the test image and the training images whose removal would raise
  (helpful) or lower (harmful) its loss the most.
"""

from __future__ import annotations


import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from memgen import MemgenError
from memgen.families.curvature.params import MODELS
from memgen.figures import figure, style


MODEL_TITLE = {"logreg": "logistic regression", "mlp": "MLP (tanh)"}
WINDOW = (0.0, 1.5, -0.15, 0.2)  # the seed's axis: [xmin, xmax, ymin, ymax]






def _models(df: pd.DataFrame) -> list[str]:
    return [m for m in MODELS if m in set(df["model"])]


# ---------------------------------------------------------------- LiSSA paths of the toy


def _lissa_study(paths: pd.DataFrame, toy: pd.DataFrame, study: str, key: str, label, options: dict):
    """Left: iterates in the plane (the seed's window); right: distance to the solution."""
    p = paths[paths["study"] == study]
    runs = toy[toy["kind"] == f"{study}_study"].sort_values(key)
    if runs.empty:
        raise MemgenError(f"figure lissa_{study}: no {study}-study runs in the toy summary")
    lam = float(toy["lambda_max"].iloc[0])
    fig, (ax, ax2) = style.figure(ncols=2)
    x0, x1, y0, y1 = WINDOW
    handles, labels = [], []
    for i, (_, run) in enumerate(runs.iterrows()):
        color = style.COLORS[i % len(style.COLORS)]
        path = p[np.isclose(p[key], run[key])].sort_values("step")
        xs, ys = path["x1"].to_numpy(), path["x2"].to_numpy()
        ex = np.array([run["exact_x1"], run["exact_x2"]])
        inside = (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1) & np.isfinite(xs) & np.isfinite(ys)
        ax.plot(xs, ys, "-", color=color, lw=0.5, alpha=0.6)
        ax.plot(xs[inside], ys[inside], "o", color=color, ms=2.0, mew=0)
        ax.plot(*ex, "*", color=color, ms=7, mec="k", mew=0.4, zorder=5)
        err = np.hypot(xs - ex[0], ys - ex[1])
        steps = path["step"].to_numpy()
        ax2.plot(steps, err, "-", color=color)
        text = label(run)
        if run["diverged"]:
            # where it leaves the window: clip the last point onto the frame, mark it
            mx, my = 0.03 * (x1 - x0), 0.03 * (y1 - y0)
            last = np.array([np.clip(xs[-1], x0 + mx, x1 - mx), np.clip(ys[-1], y0 + my, y1 - my)])
            ax.plot(*last, "x", color=color, ms=6, mew=1.2, clip_on=False, zorder=6)
            ax2.plot(steps[-1], err[-1], "x", color=color, ms=6, mew=1.2)
            text += rf": diverged ($\max|x_j| > {run.get('bound', 10):g}$ at $j = {len(steps)}$)"
        handles.append(Line2D([], [], color=color, marker="x" if run["diverged"] else "o", ms=3, lw=0.8))
        labels.append(text)
    handles.append(Line2D([], [], ls="", marker="*", color="0.5", mec="k", mew=0.4, ms=7))
    labels.append("exact solution")
    ax.set(xlim=(x0, x1), ylim=(y0, y1), xlabel=r"$x_1$", ylabel=r"$x_2$")
    ax.set_title(r"LiSSA iterates $x_j = h_j / s$", fontsize=8)
    ax2.set(yscale="log", xlabel=r"step $j$", ylabel=r"$\|x_j - x^*\|$")
    if study == "scale":
        ax2.set_title(rf"$\lambda_\max(H) = {lam:.3g}$: diverges for $s \leq {lam / 2:.3g}$", fontsize=8)
    else:
        ax2.set_title(rf"$x^* = (H + \lambda I)^{{-1}} v$, $s = {runs['scale'].iloc[0]:g}$", fontsize=8)
    ax.legend(handles, labels, loc="upper right", fontsize=6)
    return fig


@figure(paths=["study", "scale", "damping", "step", "x1", "x2", "diverged"],
        toy=["kind", "scale", "damping", "exact_x1", "exact_x2", "diverged", "lambda_max", "steps"])
def lissa_scale(paths: pd.DataFrame, toy: pd.DataFrame, options: dict):
    """LiSSA iterates on the seed's two-dimensional quadratic toy, one series per scale
    (damping 0): path in the (x1, x2) plane and distance to the exact solution vs
    iteration; a scale at or below lambda_max / 2 diverges and is marked so."""
    return _lissa_study(paths, toy, "scale", "scale", lambda r: f"$s = {r['scale']:g}$", options)


@figure(paths=["study", "scale", "damping", "step", "x1", "x2", "diverged"],
        toy=["kind", "scale", "damping", "exact_x1", "exact_x2", "diverged", "lambda_max"])
def lissa_damping(paths: pd.DataFrame, toy: pd.DataFrame, options: dict):
    """The same for several dampings at one scale: each converges to its own (H +
    damping I)^-1 v (stars), away from the undamped solution."""
    return _lissa_study(paths, toy, "damping", "damping",
                        lambda r: rf"$\lambda = {r['damping']:g}$ ($s = {r['scale']:g}$)", options)


# ---------------------------------------------------------------- CG vs LiSSA


def _method_label(m: str) -> str:
    if m == "cg":
        return "CG"
    parts = m.split("_")  # lissa_full_x1.1, lissa_batch25_x1.1
    factor = parts[-1][1:]
    if parts[1] == "full":
        return rf"LiSSA, $s = {factor}\,(\lambda_\max + \lambda)$"
    return rf"LiSSA, batches of {parts[1][5:]}, $s = {factor}\,\lambda_\max^{{b}}$"


@figure(solvers=["model", "method", "hvps", "rel_error"])
def solver_accuracy(solvers: pd.DataFrame, options: dict):
    """Relative error of the inverse-HVP vs number of Hessian-vector products, conjugate
    gradient vs LiSSA, per model."""
    models = _models(solvers)
    if not models:
        raise MemgenError("figure solver_accuracy: no solver runs in the summary")
    fig, axes = style.figure(ncols=len(models), height=2.8, squeeze=False)
    for ax, model in zip(axes[0], models):
        rows = solvers[solvers["model"] == model]
        methods = sorted(rows["method"].unique(), key=lambda m: (m != "cg", m))
        for i, m in enumerate(methods):
            r = rows[rows["method"] == m].sort_values("hvps")
            st = style.width_style(i)
            y = r["rel_error"].clip(lower=1e-16)
            ax.plot(r["hvps"], y, "-", color=st["color"], label=_method_label(m),
                    marker=st["marker"] if m == "cg" else None, ms=2.0)
        ax.set(xscale="log", yscale="log", xlim=(1, None),
               xlabel="Hessian-vector products (full-batch equivalents)", ylabel=r"$\|x - x^*\| / \|x^*\|$")
        damp = float(rows["damping"].iloc[0]) if "damping" in rows else 0.0
        ax.set_title(MODEL_TITLE.get(model, model) + (f", damping {damp:g}" if damp else ""), fontsize=8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(4, len(labels)), fontsize=6)
    return fig


# ---------------------------------------------------------------- influence vs retraining


@figure(influence=["model", "selection", "predicted", "actual"],
        models=["model", "pearson_r", "test_index", "test_digit", "damping"])
def influence_vs_loo(influence: pd.DataFrame, models: pd.DataFrame, options: dict):
    """Predicted (influence function) vs actual (leave-one-out retraining) change of the
    test loss on removing each training point, per model, with Pearson's R (Koh & Liang,
    Fig. 2)."""
    names = _models(influence)
    if not names:
        raise MemgenError("figure influence_vs_loo: no models in the influence summary")
    fig, axes = style.figure(ncols=len(names), height=2.7, squeeze=False)
    for ax, model in zip(axes[0], names):
        rows = influence[influence["model"] == model]
        info = models[models["model"] == model].iloc[0]
        for sel, filled in (("top", True), ("random", False)):
            r = rows[rows["selection"] == sel]
            ax.plot(r["actual"], r["predicted"], "o", color=style.COLORS[0], mfc=style.COLORS[0] if filled else "white",
                    mew=0.6, ms=3, label="largest |predicted|" if sel == "top" else "random", ls="")
        lo = float(np.nanmin(rows[["actual", "predicted"]].to_numpy()))
        hi = float(np.nanmax(rows[["actual", "predicted"]].to_numpy()))
        pad = 0.05 * (hi - lo if hi > lo else 1.0)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "--", color="0.5", lw=0.7)
        ax.set(xlim=(lo - pad, hi + pad), ylim=(lo - pad, hi + pad), aspect="equal",
               xlabel="actual diff in loss (retrained)", ylabel="predicted diff in loss")
        damp = f", damping {info['damping']:g}" if info["damping"] else ""
        ax.set_title(f"{MODEL_TITLE.get(model, model)}{damp}", fontsize=8)
        ax.text(0.04, 0.96, f"Pearson R = {info['pearson_r']:.3f}\n{len(rows)} points, test point "
                f"{int(info['test_index'])} (digit {int(info['test_digit'])})",
                transform=ax.transAxes, ha="left", va="top", fontsize=6.5)
        ax.legend(loc="lower right")
    return fig


# ---------------------------------------------------------------- images


@figure(images=["model", "role", "rank", "digit", "predicted", "p00"], models=["model", "test_index", "test_loss"])
def helpful_harmful(images: pd.DataFrame, models: pd.DataFrame, options: dict):
    """A test image and the training images whose removal would most raise (helpful) or
    lower (harmful) its loss, by influence."""
    names = _models(images)
    if not names:
        raise MemgenError("figure helpful_harmful: no images in the summary")
    pix = [c for c in images.columns if c.startswith("p") and c[1:].isdigit()]
    side = int(round(np.sqrt(len(pix))))
    k = int(images[images["role"] == "helpful"].groupby("model")["rank"].max().max()) + 1
    ratios = [1, 0.35] + [1] * k + [0.35] + [1] * k
    fig = plt.figure(figsize=(style.WIDE, 0.72 * len(names) + 0.35))
    fig.set_layout_engine("none")  # a fixed grid: titles must not resize the cells
    grid = fig.add_gridspec(len(names), len(ratios), width_ratios=ratios, left=0.06, right=0.995, bottom=0.02,
                            top=1 - 0.38 / (0.72 * len(names) + 0.35), wspace=0.12, hspace=0.3)
    cols = [("test", 0, 0)] + [("helpful", j, 2 + j) for j in range(k)] + [("harmful", j, 3 + k + j) for j in range(k)]
    for r, model in enumerate(names):
        rows = images[images["model"] == model]
        for role, rank, c in cols:
            ax = fig.add_subplot(grid[r, c])
            ax.set_xticks([])
            ax.set_yticks([])
            sel = rows[(rows["role"] == role) & (rows["rank"] == rank)]
            if sel.empty:
                ax.axis("off")
                continue
            img = sel[pix].to_numpy(dtype=float).reshape(side, side)
            ax.imshow(img, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
            row = sel.iloc[0]
            for spine in ax.spines.values():
                spine.set_linewidth(0.4)
            if role == "test":
                ax.set_title(f"test: {int(row['digit'])}", fontsize=6, pad=2)
                ax.set_ylabel(MODEL_TITLE.get(model, model).replace(" ", "\n", 1), fontsize=6.5)
            else:
                ax.set_title(f"{int(row['digit'])}: {row['predicted']:+.2g}", fontsize=5.5, pad=2)
            if r == 0 and rank == 0 and role != "test":
                word = "most helpful" if role == "helpful" else "most harmful"
                ax.text(0, 1.42, word + r" (digit: predicted $\Delta L_\mathrm{test}$ on removal)",
                        transform=ax.transAxes, fontsize=6.5, ha="left", va="bottom")
    return fig
