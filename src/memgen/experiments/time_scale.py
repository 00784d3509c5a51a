"""Lazy vs feature training time scales on sparse parity (Geiger et al. 2019, seed 000).

Builds every step's parameters from the ``time_scale`` config block (the only place
that knows the block's layout), and summarises the runs into tidy CSV tables.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from memgen.experiments import write_csv
from memgen import h5io

FAMILY = "time_scale"
FIGURES = ("loss_vs_time", "time_to_fit", "kernel_change", "test_error", "memorization_time")


def check(ts: dict) -> list[str]:
    """Problems a schema cannot express (keys relative to the ``time_scale`` block)."""
    out = []
    ds = ts["dataset"]
    if ds["k"] > ds["d"]:
        out.append(f"dataset.k: {ds['k']} must be <= dataset.d = {ds['d']}")
    n = ds["n_train"] + ds["n_test"]
    if ds["d"] < 63 and n > 2 ** ds["d"]:
        out.append(f"dataset.n_train + n_test: {n} exceeds the {2 ** ds['d']} distinct binary strings "
                   f"of length d = {ds['d']}")
    for key in ("alphas", "widths", "seeds"):
        if len(set(ts[key])) != len(ts[key]):
            out.append(f"{key}: contains duplicates {ts[key]}")
    h = ts["figures"]["h"]
    if h is not None and h not in ts["widths"]:
        out.append(f"figures.h: {h} is not one of widths {ts['widths']}")
    return out


def point_name(alpha: float, h: int, seed: int) -> str:
    return f"alpha~{alpha:g}_h~{h}_seed~{seed}"


def points(ts: dict) -> list[dict[str, Any]]:
    """Every (alpha, h, seed) of the sweep."""
    return [{"alpha": a, "h": h, "seed": s} for h in ts["widths"] for s in ts["seeds"] for a in ts["alphas"]]


def dataset_params(ts: dict) -> dict:
    return dict(ts["dataset"])


def init_params(ts: dict, h: int, seed: int) -> dict:
    model = {"d": ts["dataset"]["d"], "h": int(h), **ts["model"]}
    return {"dataset": dataset_params(ts), "model": model, "seed": int(seed), "dtype": ts["dtype"]}


def _flow(ts: dict, alpha: float, h: int) -> dict:
    f = dict(ts["flow"])
    tau = f.pop("tau_over_h") * h * min(1.0, f.pop("tau_alpha_crit") / alpha)
    f.pop("resume_every_s")  # when to save does not change the result
    return {**f, "tau": tau}


def train_params(ts: dict, alpha: float, h: int, seed: int) -> dict:
    return {"init": init_params(ts, h, seed), "alpha": float(alpha), "loss": dict(ts["loss"]),
            "flow": _flow(ts, alpha, h)}


def ntk_params(ts: dict, h: int, seed: int, alpha: float | None = None) -> dict:
    """NTK at initialisation (alpha None) or at the end of the run at ``alpha``."""
    run = None if alpha is None else train_params(ts, alpha, h, seed)
    return {"init": init_params(ts, h, seed), "run": run}


def kernel_train_params(ts: dict, alpha: float, h: int, seed: int) -> dict:
    return {"ntk": ntk_params(ts, h, seed), "alpha": float(alpha), "loss": dict(ts["loss"]),
            "flow": _flow(ts, alpha, h)}


# ---------------------------------------------------------------- conventions


def article_units(alpha: float, h: int, last_layer: str, normalization: str) -> tuple[float, float]:
    """(alpha_article, t_article / t) for a run in memgen's conventions.

    The article (Geiger et al. 2019) uses the "ntk" last layer (1/sqrt(h)) and the loss
    (1/alpha^2) mean l. With the mean-field last layer (1/h) the same function F needs
    alpha_article = alpha / sqrt(h). Our objective is norm * mean l with norm = 1/alpha^2
    ("article") or 1/alpha ("code"); it equals c times the article's objective,
    c = norm * alpha_article^2, so t_article = c * t.
    """
    alpha_art = alpha / math.sqrt(h) if last_layer == "mean_field" else alpha
    norm = alpha**-2 if normalization == "article" else 1.0 / alpha
    return alpha_art, norm * alpha_art**2


# ---------------------------------------------------------------- summary

RUN_SHAPES = {f"trajectory/{k}": ("c",) for k in ("step", "t", "loss", "train_err", "test_err", "dnorm")}


def _best(traj: dict) -> tuple[float, float]:
    """(time of the lowest test error, that error) over the checkpoints."""
    err = traj["trajectory/test_err"]
    i = int(np.nanargmin(err)) if np.isfinite(err).any() else 0
    return float(traj["trajectory/t"][i]), float(err[i])


def _run_row(path: Path) -> tuple[dict, pd.DataFrame]:
    d = h5io.read(path, RUN_SHAPES)
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


def _train_gram(path: Path):
    import torch

    return torch.from_numpy(h5io.read(path, {"K_train_train": ("n", "n")})["K_train_train"])


def _kernel_change(k0, k1_path: Path) -> dict[str, float]:
    """Change of the train Gram from ``k0`` (the NTK at init) to the one in ``k1_path``."""
    from memgen.kernels import relative_change, shape_change

    k1 = _train_gram(k1_path)
    return {"ntk_rel_change": relative_change(k0, k1), "ntk_shape_change": shape_change(k0, k1),
            "ntk_norm_ratio": float(k1.norm() / k0.norm())}


def summarize(inputs: dict[str, list[Path]], outputs: dict[str, Path]) -> pd.DataFrame:
    """CLI entry: inputs runs, ntk_init, ntk_final, [frozen]; outputs table, curves."""
    return summary_tables(inputs["runs"], inputs["ntk_init"], inputs["ntk_final"], inputs.get("frozen", []),
                          outputs["table"], outputs["curves"])


def summary_tables(runs: list[Path], ntk_init: list[Path], ntk_final: list[Path], frozen: list[Path],
                   out_table: Path, out_curves: Path) -> pd.DataFrame:
    """One row per (alpha, h, seed): times, errors, kernel change and the frozen-kernel
    reference; plus a long table of the loss/error curves. ``ntk_init``/``ntk_final``/
    ``frozen`` are aligned with ``runs`` (``frozen`` may be empty).

    ``alpha`` is the config's alpha (as in file names); ``alpha_article`` and
    ``sqrt_h_alpha`` are in the article's convention, and every time (``t_fit``,
    ``t_memorize``, ``t_best_test``, the curves' ``t``) is in article units
    (:func:`article_units`), so figures compare across last-layer choices and
    normalizations. ``alpha2_loss`` = alpha_article^2 * article loss = mean l(F y).
    """
    rows, curves = [], []
    k0_cache: dict = {}
    for i, path in enumerate(runs):
        row, curve = _run_row(path)
        if ntk_init[i] not in k0_cache:  # one NTK at init per (h, seed), shared by every alpha
            k0_cache[ntk_init[i]] = _train_gram(ntk_init[i])
        row.update(_kernel_change(k0_cache[ntk_init[i]], ntk_final[i]))
        if frozen:
            frow, _ = _run_row(frozen[i])
            row.update({f"frozen_{k}": frow[k] for k in ("test_err", "t_fit", "diverged", "best_test_err")})
        rows.append(row)
        curves.append(curve)
    table = pd.DataFrame(rows).sort_values(["h", "seed", "alpha"]).reset_index(drop=True)
    write_csv(table, out_table)
    write_csv(pd.concat(curves, ignore_index=True), out_curves)
    return table

