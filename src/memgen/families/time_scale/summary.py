"""The time-scale summary: one row per (alpha, h, seed) and the loss/error curves.

``alpha`` is the config's alpha (as in file names); ``alpha_article`` and
``sqrt_h_alpha`` are in the article's convention, and every time (``t_fit``,
``t_memorize``, ``t_best_test``, the curves' ``t``) is in article units
(:func:`memgen.families.time_scale.params.article_units`), so figures compare across
last-layer choices and normalizations. ``alpha2_loss`` = alpha_article^2 * article loss
= mean l(F y).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from memgen.families.time_scale.params import article_units
from memgen.scaling import crossing, power_law

CROSSOVER_LEVEL = 1.0  # alpha*: where ||Theta_T - Theta_0|| / ||Theta_0|| falls through 1
# the levels table: alpha*(h) and its exponent at other levels too, from deep in the lazy
# regime (0.1) into the feature one (10), so the fitted exponent's dependence on that choice shows
LEVELS = tuple(sorted({0.1, 0.3, CROSSOVER_LEVEL, 3.0, 10.0}))

RUN_KEYS = tuple(f"trajectory/{k}" for k in ("step", "t", "loss", "train_err", "test_err", "dnorm"))


def _best(traj) -> tuple[float, float]:
    """(time of the lowest test error, that error) over the checkpoints."""
    err = traj["trajectory/test_err"]
    i = int(np.nanargmin(err)) if np.isfinite(err).any() else 0
    return float(traj["trajectory/t"][i]), float(err[i])


def _run_row(d) -> tuple[dict, pd.DataFrame]:
    """Row and curve of one run file (network or frozen kernel) already read."""
    p = d.params
    init = p["init"] if "init" in p else p["ntk"]["init"]
    a = d.attrs
    h = init["model"]["h"]
    alpha_art, c = article_units(p["alpha"], h, init["model"]["last_layer"], p["flow"]["normalization"])
    norm = c / alpha_art**2  # our loss prefactor
    t_best, err_best = _best(d.arrays)
    row = {
        "alpha": p["alpha"], "h": h, "seed": init["seed"], "alpha_article": alpha_art,
        "sqrt_h_alpha": math.sqrt(h) * alpha_art,
        "t_fit": c * float(a["t_fit"]), "step_fit": int(a["step_fit"]),
        "train_err": float(d["trajectory/train_err"][-1]), "test_err": float(d["trajectory/test_err"][-1]),
        "diverged": bool(a["diverged"]), "converged": bool(a["converged"]), "stop_reason": str(a["stop_reason"]),
        "t_memorize": c * float(a["t_memorize"]), "t_best_test": c * t_best, "best_test_err": err_best,
        "dnorm": float(d["trajectory/dnorm"][-1]), "steps": int(d["trajectory/step"][-1]),
        "t_article_per_t": c,
    }
    curve = pd.DataFrame({"t": c * d["trajectory/t"], "step": d["trajectory/step"],
                          "alpha2_loss": d["trajectory/loss"] / norm,
                          "train_err": d["trajectory/train_err"], "test_err": d["trajectory/test_err"]})
    for key in ("alpha_article", "alpha", "h", "seed"):
        curve.insert(0, key, row[key])
    return row, curve


def _kernel_change(k0: np.ndarray, k1: np.ndarray) -> dict[str, float]:
    """Change of the train Gram from ``k0`` (the NTK at init) to ``k1``."""
    import torch

    from memgen.kernels import relative_change, shape_change

    k0, k1 = torch.from_numpy(k0), torch.from_numpy(k1)
    return {"ntk_rel_change": relative_change(k0, k1), "ntk_shape_change": shape_change(k0, k1),
            "ntk_norm_ratio": float(k1.norm() / k0.norm())}


def summary(job) -> None:
    """One row per (alpha, h, seed): times, errors, kernel change and the frozen-kernel
    reference; plus a long table of the loss/error curves (module doc)."""
    rows, curves = [], []
    gram = ("K_train_train",)
    k0s: dict = {}  # one NTK at init per (h, seed), shared by every alpha
    finals = job.read_each("ntk_final", gram)
    frozen = job.read_each("frozen", RUN_KEYS) if job.inputs["frozen"] else None
    for run, k0_path in zip(job.read_each("runs", RUN_KEYS), job.inputs["ntk_init"]):
        row, curve = _run_row(run)
        if k0_path not in k0s:
            k0s[k0_path] = job.read_path("ntk_init", k0_path, gram)["K_train_train"]
        row.update(_kernel_change(k0s[k0_path], next(finals)["K_train_train"]))
        if frozen is not None:
            frow, _ = _run_row(next(frozen))
            row.update({f"frozen_{k}": frow[k] for k in ("test_err", "t_fit", "diverged", "best_test_err")})
        rows.append(row)
        curves.append(curve)
    table = pd.DataFrame(rows).sort_values(["h", "seed", "alpha"]).reset_index(drop=True)
    job.write_csv("table", table)
    job.write_csv("curves", pd.concat(curves, ignore_index=True))
    for name, crossover in crossover_tables(table).items():
        job.write_csv(name, crossover)


def crossover_tables(table: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The summary's crossover outputs from its run table: ``levels`` (:func:`levels_table`)
    and ``phase``, its CROSSOVER_LEVEL block (= :func:`phase_table`, computed once)."""
    levels = levels_table(table)
    return {"phase": levels[levels["level"] == CROSSOVER_LEVEL].reset_index(drop=True), "levels": levels}


def levels_table(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`phase_table` at every level of LEVELS, one block of rows per level (column
    ``level``): how alpha*(h) and the fitted exponent move with the level that defines
    the crossover."""
    return pd.concat([phase_table(table, level) for level in LEVELS], ignore_index=True)


def phase_table(table: pd.DataFrame, level: float = CROSSOVER_LEVEL) -> pd.DataFrame:
    """The lazy/feature crossover per width: alpha* (article convention) where the
    relative NTK change of each seed's runs falls through ``level``, interpolated
    log-log in alpha (memgen.scaling.crossing; NaN when it does not cross inside the
    sweep), its geometric mean and range over seeds, sqrt(h) alpha*, and the power law
    alpha* ~ h^(-a) fitted to every (h, seed) crossing with a 95% interval on a (the same
    on every row; the paper: a = 1/2)."""
    stars = []
    for (h, seed), g in table[~table["diverged"]].groupby(["h", "seed"]):
        stars.append({"h": int(h), "seed": int(seed),
                      "alpha_star": crossing(g["alpha_article"], g["ntk_rel_change"], level)})
    stars = pd.DataFrame(stars, columns=["h", "seed", "alpha_star"])
    fit = power_law(stars["h"], stars["alpha_star"])
    rows = []
    for h, g in stars.groupby("h"):
        a = g["alpha_star"].to_numpy(float)
        a = a[np.isfinite(a)]
        mean = float(np.exp(np.log(a).mean())) if len(a) else math.nan
        rows.append({"h": int(h), "seeds": len(g), "crossed": len(a), "alpha_star": mean,
                     "alpha_star_min": float(a.min()) if len(a) else math.nan,
                     "alpha_star_max": float(a.max()) if len(a) else math.nan,
                     "sqrt_h_alpha_star": math.sqrt(h) * mean, "level": level,
                     "exponent": fit.exponent, "exponent_lo": fit.exponent_lo, "exponent_hi": fit.exponent_hi,
                     "prefactor": fit.prefactor, "fit_points": fit.points})
    return pd.DataFrame(rows)
