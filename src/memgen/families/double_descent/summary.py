"""Epoch-wise and model-wise double descent (Heckel & Yilmaz 2021; Advani & Saxe 2020;
seed 004), experiment and theory on the same axes.

The summary: the HDF5 outputs as tidy CSVs:

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
  heights, peak location, ODE tracking error;
- ``vector_field``: seed 004's d = 2 examples: per example and plane ((u, z1), (u, z2),
  (z1, z2)) the ODE's field on a grid (``kind`` field: x, y, dx, dy and the third
  coordinate on the ODE's invariant surface) and the paths (``kind`` ode / network:
  x, y per logged step).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from memgen import h5io

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


def _epochwise(job) -> pd.DataFrame:
    th = job.read("theory_linear")
    frames = []
    for r in job.read_each("linear", ("step", "risk", "werr")):
        sched = r.params["schedule"]
        if not np.array_equal(r["step"], th["step"]):
            raise h5io.H5Error(f"{r.path}: logged steps differ from the theory file {th.path}")
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


def _two_layer(job) -> tuple[pd.DataFrame, pd.DataFrame]:
    frames, jac = [], []
    keys = ("step", "risk", "loss", "werr", *(f"jac_{k}_{w}" for k in ("sv", "share") for w in ("init", "final")))
    theories = job.read_each("theory_two_layer", ("step", "risk_ode", "werr_ode", "risk_lazy", "werr_lazy"))
    for r, t in zip(job.read_each("two_layer", keys), theories):
        p = r.params
        if t.params["run"] != p:
            raise h5io.H5Error(f"{t.path}: computed for another network run than {r.path}")
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


def _modelwise(job) -> pd.DataFrame:
    r = job.read("modelwise", ("ratio", "snr", "risk_min_norm", "risk_early_stopped", "t_stop"))
    t = job.read("theory_modelwise")
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


def _vector_field(job) -> pd.DataFrame:
    from memgen.phase_plane import PLANES, coordinates

    r = job.read("vector_field")
    frames = []
    for e, (kappa, scale) in enumerate(zip(r["kappa"], r["scale"])):
        base = {"example": e, "kappa": float(kappa), "scale": float(scale)}
        for plane in PLANES:
            x, y = np.meshgrid(r[f"{plane}/x"][e], r[f"{plane}/y"][e])
            frames.append(pd.DataFrame({**base, "plane": plane, "kind": "field", "step": -1, "x": x.ravel(),
                                        "y": y.ravel(), "dx": r[f"{plane}/dx"][e].ravel(),
                                        "dy": r[f"{plane}/dy"][e].ravel(), "third": r[f"{plane}/third"][e].ravel()}))
            for kind, key in (("ode", "ode"), ("network", "net")):
                px, py = coordinates(plane, r[f"u_{key}"][e], r[f"z_{key}"][e])
                frames.append(pd.DataFrame({**base, "plane": plane, "kind": kind, "step": r["step"].astype(int),
                                            "x": px, "y": py}))
    return pd.concat(frames, ignore_index=True)


def summary(job) -> None:
    """Tidy tables of the double-descent runs and their theory (module doc)."""
    ep = _epochwise(job)
    tl, jac = _two_layer(job)
    mw = _modelwise(job)
    for name, df in (("epochwise", ep), ("two_layer", tl), ("jacobian", jac), ("modelwise", mw),
                     ("key_numbers", key_numbers(ep, tl, mw)), ("vector_field", _vector_field(job))):
        job.write_csv(name, df)
