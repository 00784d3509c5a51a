"""Kernels at speed (issue 3; seeds 001 and 002): empirical vs infinite-width NTK,
kernel regression vs the trained network, and linearized vs real gradient descent.

Builds every step's parameters from the ``kernels`` config block (the only code that
knows its layout) and summarises the step outputs into tidy CSV tables.

The network everywhere is memgen's ``FC(d, h, L, activation="relu", normalize=False,
last_layer="ntk", bias=False)``, the network whose infinite-width kernels
:func:`memgen.kernels.analytic_kernels` gives.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from memgen.experiments import write_csv
from memgen import h5io

FAMILY = "kernels"
FIGURES = ("accuracy_vs_n", "ntk_convergence", "linearized_training")
DIMS = {"digits": 64, "cifar2": 3072}
METHODS = ("ntk", "nngp", "ntk_inf", "nngp_inf", "trained")


def check(kb: dict) -> list[str]:
    """Problems a schema cannot express (keys relative to the ``kernels`` block)."""
    out = []
    dg = kb["digits"]
    if len(set(dg["classes"])) != 2:
        out.append(f"digits.classes: need two different digits, got {dg['classes']}")
    need = max(max(kb["accuracy"]["n_train"]), kb["linearized"]["n_train"], kb["convergence"]["n_points"])
    if need + max(dg["n_test"], 1) > 330:  # the rarest digit pair has about 350 images
        out.append(f"accuracy.n_train / linearized.n_train / convergence.n_points: {need} training points plus "
                   f"digits.n_test={dg['n_test']} exceed the ~350 images of two digit classes")
    for key in ("accuracy.n_train", "accuracy.seeds", "convergence.widths", "convergence.seeds",
                "linearized.widths"):
        a, b = key.split(".")
        if len(set(kb[a][b])) != len(kb[a][b]):
            out.append(f"{key}: contains duplicates {kb[a][b]}")
    if len(set(kb["cifar"]["classes"])) != 2:
        out.append(f"cifar.classes: need two different classes, got {kb['cifar']['classes']}")
    out += _cifar_problems(kb["cifar"])
    return out


def _cifar_problems(c: dict) -> list[str]:
    """``cifar.enabled: true`` needs every batch under ``root`` (``auto`` skips CIFAR
    without them; nothing is downloaded)."""
    from memgen.data import CIFAR_FILES, cifar_missing

    if c["enabled"] is not True:
        return []
    root = Path(c["root"])
    missing = cifar_missing(c["root"])
    if not missing:
        return []
    what = "does not exist" if not root.is_dir() else f"lacks {', '.join(missing)}"
    return [f"cifar.root: {str(root)!r} ({root.resolve()}) {what}; cifar.enabled: true expects the CIFAR-10 "
            f"python batches {', '.join(CIFAR_FILES)} there (extract cifar-10-python.tar.gz; memgen does not "
            "download), or set cifar.enabled: auto to skip CIFAR when they are missing"]


def cifar_enabled(kb: dict) -> bool:
    """``cifar.enabled``: true, false, or "auto" (when the batches are under ``root``)."""
    from memgen.data import cifar_available

    e = kb["cifar"]["enabled"]
    return cifar_available(kb["cifar"]["root"]) if e == "auto" else bool(e)


def datasets(kb: dict) -> list[str]:
    return ["digits"] + (["cifar2"] if cifar_enabled(kb) else [])


def dataset_params(kb: dict, name: str) -> dict:
    if name == "digits":
        dg = kb["digits"]
        n = max(max(kb["accuracy"]["n_train"]), kb["linearized"]["n_train"], kb["convergence"]["n_points"])
        return {"name": "digits", "n_train": int(n), "n_test": int(dg["n_test"]),
                "classes": [int(c) for c in dg["classes"]], "seed": int(dg["seed"])}
    c = kb["cifar"]
    return {"name": "cifar2", "n_train": int(max(c["n_train"])), "n_test": int(c["n_test"]),
            "classes": [int(v) for v in c["classes"]], "seed": int(c["seed"]), "root": str(c["root"])}


def _model(d: int, h: int, L: int) -> dict:
    return {"d": int(d), "h": int(h), "L": int(L), "activation": "relu", "beta": 5.0, "normalize": False,
            "bias": False, "last_layer": "ntk"}


def accuracy_points(kb: dict) -> list[dict[str, Any]]:
    out = [{"ds": "digits", "n": n, "seed": s} for n in kb["accuracy"]["n_train"] for s in kb["accuracy"]["seeds"]]
    if cifar_enabled(kb):
        out += [{"ds": "cifar2", "n": n, "seed": s} for n in kb["cifar"]["n_train"] for s in kb["accuracy"]["seeds"]]
    return out


def convergence_widths(kb: dict) -> list[int]:
    """Widths of the kn_convergence jobs (one job per width, all seeds inside)."""
    return [int(h) for h in kb["convergence"]["widths"]]


def linearized_widths(kb: dict) -> list[int]:
    """Widths of the kn_linearized jobs (one job per width)."""
    return [int(h) for h in kb["linearized"]["widths"]]


def used_datasets(kb: dict) -> list[str]:
    """Datasets the workflow builds: digits (convergence, linearized) and those of the
    accuracy points."""
    return ["digits"] + sorted({p["ds"] for p in accuracy_points(kb)} - {"digits"})


# rules whose jobs request heavy_resources() (GPU when resources.gpu > 0)
HEAVY_RULES = frozenset({"kn_accuracy", "kn_convergence", "kn_linearized"})


def plan_jobs(kb: dict) -> dict[str, int]:
    """Jobs per rule of workflow/rules/kernels.smk for this block (same point lists)."""
    return {"kn_dataset": len(used_datasets(kb)), "kn_accuracy": len(accuracy_points(kb)),
            "kn_convergence": len(convergence_widths(kb)), "kn_linearized": len(linearized_widths(kb)),
            "kn_summary": 1, "kn_figure": len(FIGURES)}


def accuracy_name(ds: str, n: int, seed: int) -> str:
    return f"{ds}/n~{n}_seed~{seed}"


def accuracy_params(kb: dict, ds: str, n: int, seed: int) -> dict:
    a = kb["accuracy"]
    net = kb["cifar"] if ds == "cifar2" else a
    return {"dataset": dataset_params(kb, ds), "n_train": int(n), "seed": int(seed), "dtype": kb["dtype"],
            "model": _model(DIMS[ds], net["h"], net["L"]), "ridge_ntk": float(a["ridge_ntk"]),
            "ridge_nngp": float(a["ridge_nngp"]), "ridge_inf": float(a["ridge_inf"]),
            "train": {"lr": float(a["lr"]), "steps": int(a["steps"])}}


def convergence_params(kb: dict, h: int) -> dict:
    c = kb["convergence"]
    return {"dataset": dataset_params(kb, "digits"), "n_points": int(c["n_points"]), "dtype": kb["dtype"],
            "model": _model(DIMS["digits"], h, c["L"]), "seeds": [int(s) for s in c["seeds"]]}


def linearized_params(kb: dict, h: int) -> dict:
    li = kb["linearized"]
    return {"dataset": dataset_params(kb, "digits"), "n_train": int(li["n_train"]), "seed": int(li["seed"]),
            "dtype": kb["dtype"], "model": _model(DIMS["digits"], h, li["L"]), "lr": float(li["lr"]),
            "steps": int(li["steps"]), "checkpoints": int(li["checkpoints"])}


# ---------------------------------------------------------------- summary

ACC_SHAPES = {f"acc_{m}": () for m in METHODS}
CONV_SHAPES = {"ntk_rel_err": ("s",), "nngp_rel_err": ("s",), "seeds": ("s",)}
LIN_KEYS = ("step", "t", "loss_train", "loss_test", "lin_loss_train", "lin_loss_test", "w_dist", "w_move",
            "f_dist_train", "f_dist_test")
LIN_SHAPES = {k: ("c",) for k in LIN_KEYS}


def summarize(inputs: dict[str, list[Path]], outputs: dict[str, Path]) -> None:
    """CLI entry: inputs accuracy, convergence, linearized; outputs accuracy,
    convergence, linearized (CSV)."""
    rows = []
    for path in inputs.get("accuracy", []):
        d = h5io.read(path, ACC_SHAPES, step="kernel_accuracy")
        p = d.params
        base = {"dataset": p["dataset"]["name"], "n_train": p["n_train"], "seed": p["seed"],
                "h": p["model"]["h"], "L": p["model"]["L"]}
        # diverged: GD of the trained network blew up (its accuracy is NaN); kernel methods never do
        rows += [{**base, "method": m, "accuracy": float(d[f"acc_{m}"]),
                  "diverged": m == "trained" and bool(d.attrs.get("diverged", False))} for m in METHODS]
    write_csv(pd.DataFrame(rows, columns=["dataset", "n_train", "seed", "h", "L", "method", "accuracy", "diverged"]),
               outputs["accuracy"])
    rows = []
    for path in inputs.get("convergence", []):
        d = h5io.read(path, CONV_SHAPES, step="ntk_convergence")
        p = d.params
        for i, s in enumerate(d["seeds"]):
            rows.append({"h": p["model"]["h"], "L": p["model"]["L"], "seed": int(s), "n_points": p["n_points"],
                         "ntk_rel_err": float(d["ntk_rel_err"][i]), "nngp_rel_err": float(d["nngp_rel_err"][i])})
    write_csv(pd.DataFrame(rows), outputs["convergence"])
    curves = []
    for path in inputs.get("linearized", []):
        d = h5io.read(path, LIN_SHAPES, step="linearized_training")
        p = d.params
        df = pd.DataFrame({k: d[k] for k in LIN_KEYS})
        df["w_ratio"] = np.where(df["w_move"] > 0, df["w_dist"] / df["w_move"].where(df["w_move"] > 0), np.nan)
        df.insert(0, "lr", p["lr"])
        df.insert(0, "h", p["model"]["h"])
        df["diverged"] = bool(d.attrs.get("diverged", False))
        curves.append(df)
    write_csv(pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(columns=["h", *LIN_KEYS]),
               outputs["linearized"])


def slope(h, err) -> float:
    """Least-squares slope of log(err) vs log(h)."""
    h, err = np.asarray(h, float), np.asarray(err, float)
    ok = (h > 0) & (err > 0) & np.isfinite(err)
    return float(np.polyfit(np.log(h[ok]), np.log(err[ok]), 1)[0]) if ok.sum() >= 2 else float("nan")

