"""Epoch-wise and model-wise double descent (Heckel & Yilmaz 2021; Advani & Saxe 2020;
seed 004), experiment and theory on the same axes.

Builds every step's parameters from the ``double_descent`` config block (the only
place that knows the block's layout) and summarises the HDF5 outputs into tidy CSVs:

- ``epochwise``: one row per (schedule, logged step): linear GD over many data draws
  (mean, 10/90% quantiles, standard error of the mean) and the closed form
  (:func:`memgen.theory.linear_gd_risk`), risk and per-group weight errors;
- ``two_layer``: one row per (init, logged step): the two-layer linear network, the
  reduced (u, z) ODE and the linearised (lazy) network; ``diverged`` marks a network
  whose GD blew up (non-finite risk or weights);
- ``jacobian``: singular values of the network Jacobian at init and after training
  (NaN after training when the run diverged);
- ``modelwise``: test risk vs n/p, empirical (min-norm least squares, oracle early
  stopped gradient flow) and theory, per SNR;
- ``key_numbers``: (metric, where, value): max deviation from the closed form, bump
  heights, peak location, ODE tracking error.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from memgen.experiments import write_csv
from memgen import h5io

FAMILY = "double_descent"
FIGURES = ("epochwise_risk", "two_layer_risk", "weight_error", "modelwise", "jacobian_spectrum")
SCHEDULES = ("uniform", "per_group")
INITS = ("small", "large")
DATA_KEYS = ("d_fast", "d_slow", "kappa", "theta_fast", "theta_slow", "n", "noise_std", "decoupled")


def check(dd: dict) -> list[str]:
    """Problems a schema cannot express (keys relative to the ``double_descent`` block)."""
    out = []
    for sec in ("epochwise", "two_layer"):
        b = dd[sec]
        d = b["d_fast"] + b["d_slow"]
        if b["decoupled"] and b["n"] < d:
            out.append(f"{sec}.n: decoupled data need n >= d_fast + d_slow = {d}, got {b['n']}")
        if b["n_logged"] > b["steps"] + 1:
            out.append(f"{sec}.n_logged: {b['n_logged']} exceeds steps + 1 = {b['steps'] + 1}")
    ep = dd["epochwise"]
    if ep["lr"] >= 2.0:  # s_fast = 1: GD on the large-eigenvalue group diverges
        out.append(f"epochwise.lr: {ep['lr']} must be < 2 (largest covariance eigenvalue is 1)")
    tl = dd["two_layer"]
    if tl["scales"]["small"] >= tl["scales"]["large"]:
        out.append(f"two_layer.scales: small ({tl['scales']['small']}) must be < large ({tl['scales']['large']})")
    mw = dd["modelwise"]
    ns = [modelwise_n(mw["p"], r) for r in mw["ratios"]]
    if min(ns) < 1:
        out.append(f"modelwise.ratios: {min(mw['ratios'])} * p gives no sample")
    if len(set(ns)) != len(ns):
        out.append(f"modelwise.ratios: two ratios round to the same n = round(ratio * p) (p = {mw['p']})")
    for key in ("snrs", "ratios"):
        if len(set(mw[key])) != len(mw[key]):
            out.append(f"modelwise.{key}: contains duplicates {mw[key]}")
    return out


def modelwise_n(p: int, ratio: float) -> int:
    return int(round(float(ratio) * int(p)))


# rules whose jobs request heavy_resources() (GPU when resources.gpu > 0)
HEAVY_RULES = frozenset({"dd_linear", "dd_two_layer", "dd_modelwise"})


def plan_jobs(dd: dict) -> dict[str, int]:
    """Jobs per rule of workflow/rules/double_descent.smk (one run per schedule / init)."""
    return {"dd_linear": len(SCHEDULES), "dd_theory_linear": 1, "dd_two_layer": len(INITS),
            "dd_theory_two_layer": len(INITS), "dd_modelwise": 1, "dd_theory_modelwise": 1,
            "dd_summary": 1, "dd_figure": len(FIGURES)}


# ---------------------------------------------------------------- params


def data_params(section: dict) -> dict:
    return {k: section[k] for k in DATA_KEYS}


def linear_params(dd: dict, schedule: str) -> dict:
    """dd_linear: ``draws`` data sets of the two-group teacher, GD with one step size
    (``uniform``: lr) or per-group step sizes (``per_group``: lr_i = rate / s_i^2)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; known: {SCHEDULES}")
    ep = dd["epochwise"]
    return {"data": data_params(ep), "schedule": schedule,
            "lr": float(ep["lr"]) if schedule == "uniform" else None,
            "rate": float(ep["rate"]) if schedule == "per_group" else None,
            "steps": int(ep["steps"]), "n_logged": int(ep["n_logged"]),
            "draws": int(ep["draws"]), "seed": int(ep["seed"])}


def theory_linear_params(dd: dict) -> dict:
    ep = dd["epochwise"]
    return {"data": data_params(ep), "lr": float(ep["lr"]), "rate": float(ep["rate"]),
            "steps": int(ep["steps"]), "n_logged": int(ep["n_logged"])}


def two_layer_params(dd: dict, init: str) -> dict:
    """dd_two_layer: one data draw, the network f(x) = v^T W x from a small or large
    initialisation, GD for ``steps`` steps."""
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; known: {INITS}")
    tl = dd["two_layer"]
    return {"data": data_params(tl), "data_seed": int(tl["data_seed"]), "name": init, "init": tl["init"],
            "scale": float(tl["scales"][init]), "hidden": int(tl["hidden"]), "init_seed": int(tl["init_seed"]),
            "lr": float(tl["lr"]), "steps": int(tl["steps"]), "n_logged": int(tl["n_logged"])}


def theory_two_layer_params(dd: dict, init: str) -> dict:
    return {"run": two_layer_params(dd, init)}


def modelwise_params(dd: dict) -> dict:
    mw = dd["modelwise"]
    return {k: mw[k] for k in ("p", "ratios", "snrs", "noise_std", "draws", "seed", "t_min", "t_max", "n_times")}


def theory_modelwise_params(dd: dict) -> dict:
    mw = dd["modelwise"]
    return {"p": int(mw["p"]), "snrs": list(mw["snrs"]), "noise_std": float(mw["noise_std"]),
            "ratio_min": float(min(mw["ratios"])), "ratio_max": float(max(mw["ratios"])),
            "n_grid": int(mw["n_grid"]), "quad": 200}


# ---------------------------------------------------------------- summary

LINEAR_SHAPES = {"step": ("K",), "risk": ("K", "draws"), "werr": ("K", "draws", 2), "s": ("d",), "theta": ("d",)}
THEORY_LINEAR_SHAPES = {"step": ("K",), "noise_var": ()} | {
    f"{k}_{s}": None for s in SCHEDULES for k in ("risk", "risk_fast", "risk_slow", "werr")}
TWO_LAYER_SHAPES = {"step": ("K",), "risk": ("K",), "loss": ("K",), "werr": ("K", 2),
                    "jac_sv_init": ("J",), "jac_share_init": ("J",), "jac_sv_final": ("J",),
                    "jac_share_final": ("J",)}
THEORY_TWO_LAYER_SHAPES = {"step": ("K",), "risk_ode": ("K",), "werr_ode": ("K", 2), "risk_lazy": ("K",),
                           "werr_lazy": ("K", 2)}
MODELWISE_SHAPES = {"ratio": ("R",), "snr": ("S",), "risk_min_norm": ("S", "R", "draws"),
                    "risk_early_stopped": ("S", "R", "draws"), "t_stop": ("S", "R")}
THEORY_MODELWISE_SHAPES = {"snr": ("S",), "ratio": ("G",), "risk_min_norm": ("S", "G"),
                           "ratio_asym": ("H",), "risk_min_norm_asym": ("S", "H"),
                           "risk_early_stopped": ("S", "H"), "t_stop": ("S", "H")}


def _q(a, q, axis=-1):
    with np.errstate(invalid="ignore"):
        return np.nanquantile(np.where(np.isfinite(a), a, np.nan), q, axis=axis)


def _stats(prefix: str, a: np.ndarray) -> dict[str, np.ndarray]:
    """Mean, 10/90% quantiles and standard error over the last axis (draws)."""
    a = np.asarray(a, dtype=float)
    finite = np.isfinite(a)
    m = np.where(finite, a, 0.0).sum(-1) / np.maximum(finite.sum(-1), 1)
    m = np.where(finite.any(-1), m, np.nan)
    sd = np.sqrt(np.where(finite, (a - m[..., None]) ** 2, 0.0).sum(-1) / np.maximum(finite.sum(-1) - 1, 1))
    return {f"{prefix}_mean": m, f"{prefix}_q10": _q(a, 0.1), f"{prefix}_q90": _q(a, 0.9),
            f"{prefix}_sem": sd / np.sqrt(np.maximum(finite.sum(-1), 1))}


def bump_height(curve) -> float:
    """Largest rise of a sampled curve after a local minimum, relative to that minimum:
    max over interior local maxima m of (c[m] - min(c[:m])) / min(c[:m]); 0 for a curve
    without an interior local maximum (no epoch-wise double descent). NaNs are dropped."""
    from memgen.theory import local_extrema

    c = np.asarray(curve, dtype=float)
    c = c[np.isfinite(c)]
    if len(c) < 3:
        return 0.0
    _, maxs = local_extrema(c)
    out = 0.0
    for m in maxs:
        lo = c[:m].min()
        if lo > 0:
            out = max(out, (c[m] - lo) / lo)
    return float(out)


def _epochwise(linear_runs: list[Path], theory_path: Path) -> pd.DataFrame:
    th = h5io.read(theory_path, THEORY_LINEAR_SHAPES, step="dd_theory_linear")
    frames = []
    for path in linear_runs:
        r = h5io.read(path, LINEAR_SHAPES, step="dd_linear")
        sched = r.params["schedule"]
        if not np.array_equal(r["step"], th["step"]):
            raise h5io.H5Error(f"{path}: logged steps differ from the theory file {theory_path}")
        nv = float(th["noise_var"])
        df = pd.DataFrame({"schedule": sched, "step": r["step"].astype(int)})
        for k, v in _stats("risk", r["risk"]).items():
            df[k] = v
        df["risk_theory"] = th[f"risk_{sched}"]
        df["noise_var"] = nv
        df["excess_mean"] = df["risk_mean"] - nv
        df["excess_q10"] = df["risk_q10"] - nv
        df["excess_q90"] = df["risk_q90"] - nv
        df["excess_theory"] = df["risk_theory"] - nv
        df["excess_theory_fast"] = th[f"risk_fast_{sched}"]
        df["excess_theory_slow"] = th[f"risk_slow_{sched}"]
        df["rel_dev"] = np.abs(df["risk_mean"] / df["risk_theory"] - 1)
        df["excess_rel_dev"] = np.abs(df["excess_mean"] / df["excess_theory"] - 1)
        for g, name in enumerate(("fast", "slow")):
            for k, v in _stats(f"werr_{name}", r["werr"][:, :, g]).items():
                df[k] = v
            df[f"werr_{name}_theory"] = th[f"werr_{sched}"][:, g]
        df["draws"] = r["risk"].shape[1]
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def _two_layer(runs: list[Path], theories: list[Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    frames, jac = [], []
    for path, tpath in zip(runs, theories):
        r = h5io.read(path, TWO_LAYER_SHAPES, step="dd_two_layer")
        p = r.params
        t = h5io.read(tpath, THEORY_TWO_LAYER_SHAPES, step="dd_theory_two_layer", expect_params={"run": p})
        df = pd.DataFrame({"init": p["name"], "scale": p["scale"], "step": r["step"].astype(int),
                           "risk": r["risk"], "loss": r["loss"], "risk_ode": t["risk_ode"],
                           "risk_lazy": t["risk_lazy"], "noise_var": p["data"]["noise_std"] ** 2,
                           "diverged": bool(r.attrs.get("diverged", False))})
        for g, name in enumerate(("fast", "slow")):
            df[f"werr_{name}"] = r["werr"][:, g]
            df[f"werr_{name}_ode"] = t["werr_ode"][:, g]
            df[f"werr_{name}_lazy"] = t["werr_lazy"][:, g]
        frames.append(df)
        for when in ("init", "final"):
            sv = r[f"jac_sv_{when}"]
            jac.append(pd.DataFrame({"init": p["name"], "scale": p["scale"], "when": when,
                                     "index": np.arange(1, len(sv) + 1), "sv": sv,
                                     "w_share": r[f"jac_share_{when}"],
                                     "diverged": bool(r.attrs.get("diverged", False))}))
    return pd.concat(frames, ignore_index=True), pd.concat(jac, ignore_index=True)


def _modelwise(run_path: Path, theory_path: Path) -> pd.DataFrame:
    r = h5io.read(run_path, MODELWISE_SHAPES, step="dd_modelwise")
    t = h5io.read(theory_path, THEORY_MODELWISE_SHAPES, step="dd_theory_modelwise")
    rows = []
    for i, snr in enumerate(r["snr"]):
        for method, key in (("min_norm", "risk_min_norm"), ("early_stopped", "risk_early_stopped")):
            st = _stats("risk", r[key][i])
            rows.append(pd.DataFrame({"source": "empirical", "method": method, "snr": float(snr),
                                      "ratio": r["ratio"], "risk": st["risk_mean"],
                                      "risk_median": _q(r[key][i], 0.5), "risk_q10": st["risk_q10"],
                                      "risk_q90": st["risk_q90"],
                                      "t_stop": r["t_stop"][i] if method == "early_stopped" else np.nan}))
    for i, snr in enumerate(t["snr"]):
        rows.append(pd.DataFrame({"source": "theory", "method": "min_norm", "snr": float(snr),
                                  "ratio": t["ratio"], "risk": t["risk_min_norm"][i]}))
        rows.append(pd.DataFrame({"source": "theory_asymptotic", "method": "min_norm", "snr": float(snr),
                                  "ratio": t["ratio_asym"], "risk": t["risk_min_norm_asym"][i]}))
        rows.append(pd.DataFrame({"source": "theory_asymptotic", "method": "early_stopped", "snr": float(snr),
                                  "ratio": t["ratio_asym"], "risk": t["risk_early_stopped"][i],
                                  "t_stop": t["t_stop"][i]}))
    df = pd.concat(rows, ignore_index=True)
    return df.replace([np.inf, -np.inf], np.nan)


def _first_max_step(df: pd.DataFrame, col: str) -> float:
    """Logged step of the first interior local maximum of ``col`` (NaN if none)."""
    from memgen.theory import local_extrema

    _, maxs = local_extrema(df[col].to_numpy())
    return float(df["step"].iloc[maxs[0]]) if len(maxs) else float("nan")


def key_numbers(epochwise: pd.DataFrame, two_layer: pd.DataFrame, modelwise: pd.DataFrame) -> pd.DataFrame:
    """(metric, where, value) rows: the figures' key numbers."""
    rows = []
    for sched, df in epochwise.groupby("schedule"):
        df = df.sort_values("step")
        rows += [
            ("max_rel_dev_risk", sched, df["rel_dev"].max()),
            ("max_rel_dev_excess_risk", sched, df["excess_rel_dev"].max()),
            ("max_excess_dev_in_sem", sched,
             (np.abs(df["excess_mean"] - df["excess_theory"]) / df["risk_sem"]).max()),
            ("bump_height_theory", sched, bump_height(df["excess_theory"])),
            ("bump_height_empirical", sched, bump_height(df["excess_mean"])),
            ("bump_step_theory", sched, _first_max_step(df, "excess_theory")),
            ("bump_step_empirical", sched, _first_max_step(df, "excess_mean")),
            ("min_excess_theory", sched, df["excess_theory"].min()),
            ("argmin_step_theory", sched, float(df["step"].iloc[int(np.argmin(df["excess_theory"]))])),
            ("draws", sched, float(df["draws"].iloc[0])),
        ]
    for init, df in two_layer.groupby("init"):
        rows += [("max_rel_dev_ode", init, float(np.nanmax(np.abs(df["risk_ode"] / df["risk"] - 1)))),
                 ("max_rel_dev_lazy", init, float(np.nanmax(np.abs(df["risk_lazy"] / df["risk"] - 1)))),
                 ("final_risk", init, float(df.sort_values("step")["risk"].iloc[-1]))]
    emp = modelwise[modelwise["source"] == "empirical"]
    for (method, snr), df in emp.groupby(["method", "snr"]):
        ok = df[np.isfinite(df["risk"])]
        if len(ok):
            rows.append((f"peak_ratio_{method}", f"snr={snr:g}", float(ok["ratio"].iloc[int(np.argmax(ok["risk"]))])))
            rows.append((f"peak_risk_{method}", f"snr={snr:g}", float(ok["risk"].max())))
    return pd.DataFrame(rows, columns=["metric", "where", "value"])


def summarize(inputs: dict[str, list[Path]], outputs: dict[str, Path]) -> pd.DataFrame:
    """CLI entry. inputs: linear (runs), theory_linear, two_layer (runs), theory_two_layer
    (aligned with two_layer), modelwise, theory_modelwise; outputs: epochwise, two_layer,
    jacobian, modelwise, key_numbers (CSV paths)."""
    def one(name):
        if len(inputs.get(name, [])) != 1:
            raise h5io.H5Error(f"summary double_descent: need exactly one --input {name} PATH")
        return inputs[name][0]

    ep = _epochwise(inputs["linear"], one("theory_linear"))
    tl, jac = _two_layer(inputs["two_layer"], inputs["theory_two_layer"])
    mw = _modelwise(one("modelwise"), one("theory_modelwise"))
    keys = key_numbers(ep, tl, mw)
    for name, df in (("epochwise", ep), ("two_layer", tl), ("jacobian", jac), ("modelwise", mw),
                     ("key_numbers", keys)):
        write_csv(df, outputs[name])
    return keys

