"""The ``double_descent`` config block: its checks, sweep points and every step's own
params. The only code that knows the block's layout; pure functions, no torch."""

from __future__ import annotations

from typing import Mapping

Wildcards = Mapping[str, str]

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
    vf = dd["vector_field"]
    if vf["decoupled"] and vf["n"] < 2:
        out.append(f"vector_field.n: decoupled data need n >= 2 (one feature per group), got {vf['n']}")
    if vf["n_logged"] > vf["steps"] + 1:
        out.append(f"vector_field.n_logged: {vf['n_logged']} exceeds steps + 1 = {vf['steps'] + 1}")
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


# ---------------------------------------------------------------- params


def data_params(section: dict) -> dict:
    return {k: section[k] for k in DATA_KEYS}


def schedule_points(dd: dict) -> list[dict[str, str]]:
    return [{"schedule": s} for s in SCHEDULES]


def init_points(dd: dict) -> list[dict[str, str]]:
    return [{"init": i} for i in INITS]


def linear(dd: dict, wc: Wildcards) -> dict:
    return linear_params(dd, wc["schedule"])


def two_layer(dd: dict, wc: Wildcards) -> dict:
    return two_layer_params(dd, wc["init"])


def theory_linear(dd: dict, wc: Wildcards) -> dict:
    return theory_linear_params(dd)


def modelwise(dd: dict, wc: Wildcards) -> dict:
    return modelwise_params(dd)


def theory_modelwise(dd: dict, wc: Wildcards) -> dict:
    return theory_modelwise_params(dd)


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


def vector_field(dd: dict, wc: Wildcards) -> dict:
    """dd_vector_field: seed 004's d = 2 problem (one feature per group), one data draw
    per example (kappa, init scale), the network trained by GD and the reduced ODE."""
    vf = dd["vector_field"]
    data = {"d_fast": 1, "d_slow": 1, **{k: vf[k] for k in ("theta_fast", "theta_slow", "n", "noise_std", "decoupled")}}
    return {"data": data, "data_seed": int(vf["data_seed"]), "hidden": int(vf["hidden"]), "init": vf["init"],
            "init_seed": int(vf["init_seed"]), "lr": float(vf["lr"]), "steps": int(vf["steps"]),
            "n_logged": int(vf["n_logged"]), "grid": int(vf["grid"]),
            "examples": [{"kappa": float(e["kappa"]), "scale": float(e["scale"])} for e in vf["examples"]]}


def modelwise_params(dd: dict) -> dict:
    mw = dd["modelwise"]
    return {k: mw[k] for k in ("p", "ratios", "snrs", "noise_std", "draws", "seed", "t_min", "t_max", "n_times")}


def theory_modelwise_params(dd: dict) -> dict:
    mw = dd["modelwise"]
    return {"p": int(mw["p"]), "snrs": list(mw["snrs"]), "noise_std": float(mw["noise_std"]),
            "ratio_min": float(min(mw["ratios"])), "ratio_max": float(max(mw["ratios"])),
            "n_grid": int(mw["n_grid"]), "quad": 200}
