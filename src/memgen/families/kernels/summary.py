"""The kernels summary: accuracy, convergence to the infinite-width kernels, and
linearized vs real gradient descent, as tidy CSV tables."""

from __future__ import annotations

import numpy as np
import pandas as pd

from memgen.families.kernels.params import LIN_KEYS, METHODS



def summary(job) -> None:
    """Tidy tables: accuracy per (data set, n, seed, method) with the classes in
    words (``task``), the empirical kernels'
    error per (h, seed), the linearized-vs-GD curves per width."""
    rows = []
    for d in job.read_each("accuracy"):
        p = d.params
        base = {"dataset": p["dataset"]["name"], "task": task(p["dataset"]["classes"]), "n_train": p["n_train"],
                "seed": p["seed"], "h": p["model"]["h"], "L": p["model"]["L"]}
        # diverged: GD of the trained network blew up (its accuracy is NaN); kernel methods never do
        rows += [{**base, "method": m, "accuracy": float(d[f"acc_{m}"]),
                  "diverged": m == "trained" and bool(d.attrs.get("diverged", False))} for m in METHODS]
    job.write_csv("accuracy", pd.DataFrame(rows, columns=["dataset", "task", "n_train", "seed", "h", "L", "method",
                                                           "accuracy", "diverged"]))
    rows = []
    for d in job.read_each("convergence"):
        p = d.params
        for i, s in enumerate(d["seeds"]):
            rows.append({"h": p["model"]["h"], "L": p["model"]["L"], "seed": int(s), "n_points": p["n_points"],
                         "ntk_rel_err": float(d["ntk_rel_err"][i]), "nngp_rel_err": float(d["nngp_rel_err"][i])})
    job.write_csv("convergence", pd.DataFrame(rows))
    curves = []
    for d in job.read_each("linearized", LIN_KEYS):
        p = d.params
        df = pd.DataFrame({k: d[k] for k in LIN_KEYS})
        df["w_ratio"] = np.where(df["w_move"] > 0, df["w_dist"] / df["w_move"].where(df["w_move"] > 0), np.nan)
        df.insert(0, "lr", p["lr"])
        df.insert(0, "h", p["model"]["h"])
        df["diverged"] = bool(d.attrs.get("diverged", False))
        curves.append(df)
    job.write_csv("linearized", pd.concat(curves, ignore_index=True) if curves
                  else pd.DataFrame(columns=["h", *LIN_KEYS]))


def task(classes) -> str:
    """The two classes in words: "3 vs 8", or "even vs odd" for the even and the odd digits."""
    groups = [sorted(g) if isinstance(g, list) else [g] for g in classes]
    if groups == [[0, 2, 4, 6, 8], [1, 3, 5, 7, 9]]:
        return "even vs odd"
    return " vs ".join("{" + ",".join(map(str, g)) + "}" if len(g) > 1 else str(g[0]) for g in groups)


def slope(h, err) -> float:
    """Least-squares slope of log(err) vs log(h)."""
    h, err = np.asarray(h, float), np.asarray(err, float)
    ok = (h > 0) & (err > 0) & np.isfinite(err)
    return float(np.polyfit(np.log(h[ok]), np.log(err[ok]), 1)[0]) if ok.sum() >= 2 else float("nan")

