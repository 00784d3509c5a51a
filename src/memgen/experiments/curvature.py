"""Curvature: inverse Hessian-vector products and influence functions (Koh & Liang 2017;
seed 003, whose finite-difference HVP and LiSSA damping memgen.curvature improves on).

Builds every step's parameters from the ``curvature`` config block (the only place that
knows the block's layout) and summarises the step files into tidy CSV tables:

- ``toy``: the seed's toy (y = w1 w2 x on {(2, 1)} at (1, 1/3), v = (1, 1)): exact, CG
  and LiSSA solutions of (H + damping I) x = v per damping, and per LiSSA run of the two
  studies (scale, damping) its final iterate, steps and whether it diverged (the guard's
  message);
- ``paths``: the LiSSA iterates of both studies (one row per step);
- ``models``: per model (logreg, mlp): accuracy, the test point, CG iterations and
  residual, Pearson / Spearman R of predicted vs actual (leave-one-out) loss change;
- ``influence``: per model and checked training point, predicted and actual change;
- ``solvers``: relative error vs number of HVPs of CG and LiSSA runs;
- ``images``: the test image and the most helpful / harmful training images (pixels).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from memgen.experiments import write_csv
from memgen import MemgenError, h5io

FAMILY = "curvature"
MODELS = ("logreg", "mlp")
FIGURES = ("lissa_scale", "lissa_damping", "solver_accuracy", "influence_vs_loo", "helpful_harmful")
SUMMARIES = ("toy", "paths", "models", "influence", "solvers", "images")


def check(cv: dict) -> list[str]:
    """Problems a schema cannot express (keys relative to the ``curvature`` block)."""
    out = []
    toy = cv["toy"]
    for key in ("scales", "dampings"):
        if len(set(toy[key])) != len(toy[key]):
            out.append(f"toy.{key}: contains duplicates {toy[key]}")
    d = cv["digits"]
    if d["classes"][0] == d["classes"][1]:
        out.append(f"digits.classes: must be two different digits, got {d['classes']}")
    # each digit has ~180 images in sklearn's data set; the step reports the exact count
    if d["n_train"] + d["n_test"] > 350:
        out.append(f"digits.n_train + n_test: {d['n_train'] + d['n_test']} exceeds the ~350 images of two classes")
    n_check = cv["influence"]["n_top"] + cv["influence"]["n_random"]
    if n_check > d["n_train"]:
        out.append(f"influence.n_top + n_random: {n_check} exceeds digits.n_train = {d['n_train']}")
    if cv["solvers"]["batch_size"] > d["n_train"]:
        out.append(f"solvers.batch_size: {cv['solvers']['batch_size']} exceeds digits.n_train = {d['n_train']}")
    return out


# rules whose jobs request heavy_resources() (GPU when resources.gpu > 0)
HEAVY_RULES = frozenset({"cv_train", "cv_influence", "cv_loo", "cv_solvers"})


def plan_jobs(cv: dict) -> dict[str, int]:
    """Jobs per rule of workflow/rules/curvature.smk (the per-model steps once per model)."""
    return {"cv_toy": 1, "cv_digits": 1, **{f"cv_{step}": len(MODELS) for step in ("train", "influence", "loo",
                                                                                 "solvers")},
            "cv_summary": 1, "cv_figure": len(FIGURES)}


# ---------------------------------------------------------------- step params


def toy_params(cv: dict) -> dict:
    return {"x": 2.0, "y": 1.0, "w": [1.0, 1.0 / 3.0], "v": [1.0, 1.0], **cv["toy"]}


def digits_params(cv: dict) -> dict:
    return dict(cv["digits"])


def train_params(cv: dict, model: str) -> dict:
    if model not in MODELS:
        raise MemgenError(f"curvature: unknown model '{model}' ({', '.join(MODELS)})")
    m = cv[model]
    spec = {"kind": model, "seed": int(m["seed"])}
    if model == "mlp":
        spec["hidden"] = int(m["hidden"])
    return {"dataset": digits_params(cv), "model": spec, "l2": float(m["l2"]), "fit": dict(m["fit"])}


def influence_params(cv: dict, model: str) -> dict:
    inf = cv["influence"]
    return {"train": train_params(cv, model), "damping": float(cv[model]["damping"]), "test_index": inf["test_index"],
            "cg_tol": float(inf["cg_tol"]), "select": {k: inf[k] for k in ("n_top", "n_random", "seed")}}


def loo_params(cv: dict, model: str) -> dict:
    return {"influence": influence_params(cv, model), "fit": dict(cv[model]["fit"])}


def solvers_params(cv: dict, model: str) -> dict:
    s = cv["solvers"]
    return {"influence": influence_params(cv, model), "cg_tol": float(s["cg_tol"]),
            "lissa": {k: s[k] for k in ("depth", "record_every", "batch_size", "scale_factors", "seed")}}


# ---------------------------------------------------------------- summary


def _attr_json(d: h5io.H5Data, key: str) -> Any:
    return json.loads(d.attrs[key])


def _toy_tables(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    d = h5io.read(path, {"dampings": ("nd",), "solutions/x": ("nd", 3, 2), "solutions/hvps": ("nd", 3),
                         "solutions/residual": ("nd", 3), "solutions/exact": ("nd", 2),
                         "scale_study/scale": ("ns",), "scale_study/path": ("ns", "depth", 2),
                         "scale_study/diverged": ("ns",), "scale_study/steps": ("ns",),
                         "damping_study/path": ("nd", "depth", 2), "damping_study/diverged": ("nd",),
                         "damping_study/steps": ("nd",), "eigenvalues": (2,)}, step="curvature_toy")
    p = d.params
    lam = d["eigenvalues"]
    methods = _attr_json(d, "methods")
    rows, paths = [], []
    for i, damp in enumerate(d["dampings"]):
        ex = d["solutions/exact"][i]
        for j, m in enumerate(methods):
            x = d["solutions/x"][i, j]
            rows.append({"kind": "solve", "method": m, "damping": damp, "scale": np.nan, "x1": x[0], "x2": x[1],
                         "exact_x1": ex[0], "exact_x2": ex[1], "error": float(np.linalg.norm(x - ex)),
                         "residual": d["solutions/residual"][i, j], "hvps": d["solutions/hvps"][i, j],
                         "steps": np.nan, "diverged": False, "message": ""})
    studies = {"scale": [(s, 0.0) for s in d["scale_study/scale"]],
               "damping": [(p["damping_scale"], dm) for dm in d["dampings"]]}
    exact0 = d["solutions/exact"][list(d["dampings"]).index(0.0)] if 0.0 in list(d["dampings"]) else None
    for study, runs in studies.items():
        msgs = _attr_json(d, f"{study}_messages")
        for k, (s, damp) in enumerate(runs):
            n = int(d[f"{study}_study/steps"][k])
            path = d[f"{study}_study/path"][k, :n]
            ex = d["solutions/exact"][list(d["dampings"]).index(damp)] if study == "damping" else exact0
            if ex is None:  # scale study without damping 0 in the list: solve here
                ex = np.full(2, np.nan)
            last = path[-1]
            rows.append({"kind": f"{study}_study", "method": "lissa", "damping": damp, "scale": s, "x1": last[0],
                         "x2": last[1], "exact_x1": ex[0], "exact_x2": ex[1],
                         "error": float(np.linalg.norm(last - ex)), "residual": np.nan, "hvps": np.nan, "steps": n,
                         "diverged": bool(d[f"{study}_study/diverged"][k]), "message": msgs[k]})
            paths.append(pd.DataFrame({"study": study, "scale": s, "damping": damp, "step": np.arange(1, n + 1),
                                       "x1": path[:, 0], "x2": path[:, 1],
                                       "diverged": bool(d[f"{study}_study/diverged"][k])}))
    toy = pd.DataFrame(rows)
    toy["lambda_min"], toy["lambda_max"], toy["bound"] = lam[0], lam[-1], float(p["bound"])
    return toy, pd.concat(paths, ignore_index=True)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1]) if len(a) > 1 and np.std(a) > 0 and np.std(b) > 0 else float("nan")


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    rank = lambda x: np.argsort(np.argsort(x)).astype(float)  # noqa: E731
    return _pearson(rank(a), rank(b))


def _model_tables(dataset: Path, train: Path, influence: Path, loo: Path, n_images: int):
    tr = h5io.read(train, {"test_losses": ("m",)}, step="curvature_train")
    model = tr.params["model"]["kind"]
    ds = h5io.read(dataset, {"x_train": ("n", "d"), "y_train": ("n",), "x_test": ("m", "d"), "y_test": ("m",),
                             "index_train": ("n",), "index_test": ("m",)}, step="curvature_digits",
                   expect_params=tr.params["dataset"])
    inf = h5io.read(influence, {"predicted": ("n",), "selected": ("k",)}, step="curvature_influence")
    lo = h5io.read(loo, {"selected": ("k",), "actual": ("k",), "predicted": ("k",), "selected_top": ("k",),
                         "grad_norm": ("k",)}, step="curvature_loo", expect_params={"influence": inf.params,
                                                                                   "fit": tr.params["fit"]})
    if inf.params["train"] != tr.params:
        raise h5io.H5Error(f"{influence}: computed for another trained model than {train}")
    classes = ds.params["classes"]
    digit = lambda y: int(classes[int(y)])  # noqa: E731
    sel, act, pred = lo["selected"], lo["actual"], lo["predicted"]
    ti = int(inf.attrs["test_index"])
    infl = pd.DataFrame({"model": model, "train_index": sel, "digit": [digit(ds["y_train"][i]) for i in sel],
                         "selection": np.where(lo["selected_top"], "top", "random"), "predicted": pred,
                         "actual": act, "retrain_grad_norm": lo["grad_norm"]})
    row = {"model": model, "n_train": len(ds["y_train"]), "n_test": len(ds["y_test"]),
           "l2": tr.params["l2"], "damping": inf.params["damping"], "train_acc": tr.attrs["train_acc"],
           "test_acc": tr.attrs["test_acc"], "train_grad_norm": tr.attrs["grad_norm"], "test_index": ti,
           "test_digit": digit(ds["y_test"][ti]), "test_loss": float(inf.attrs["test_loss"]),
           "cg_iterations": int(inf.attrs["cg_iterations"]), "cg_residual": float(inf.attrs["cg_true_residual"]),
           "n_checked": len(sel), "n_top": int(lo["selected_top"].sum()),
           "pearson_r": _pearson(pred, act), "spearman_r": _spearman(pred, act),
           "pearson_r_top": _pearson(pred[lo["selected_top"]], act[lo["selected_top"]]),
           "slope": float(np.polyfit(act, pred, 1)[0]) if len(act) > 1 else float("nan"),
           "max_retrain_grad_norm": float(lo["grad_norm"].max()) if len(sel) else float("nan")}
    # images: the test image, the most helpful (removing them raises the test loss most:
    # largest predicted change) and most harmful (most negative) training images
    p = inf["predicted"]
    order = np.argsort(-p, kind="stable")
    picks = [("test", 0, ti, ds["x_test"][ti], ds["y_test"][ti], np.nan, int(ds["index_test"][ti]))]
    picks += [("helpful", r, i, ds["x_train"][i], ds["y_train"][i], p[i], int(ds["index_train"][i]))
              for r, i in enumerate(order[:n_images])]
    picks += [("harmful", r, i, ds["x_train"][i], ds["y_train"][i], p[i], int(ds["index_train"][i]))
              for r, i in enumerate(order[::-1][:n_images])]
    images = pd.DataFrame([{"model": model, "role": role, "rank": r, "index": int(i), "sklearn_index": sk,
                            "digit": digit(y), "predicted": pv, **{f"p{j:02d}": float(x[j]) for j in range(len(x))}}
                           for role, r, i, x, y, pv, sk in picks])
    return row, infl, images


def _solver_table(path: Path) -> pd.DataFrame:
    d = h5io.read(path, {"method_code": ("r",), "hvps": ("r",), "rel_error": ("r",)}, step="curvature_solvers")
    methods = _attr_json(d, "methods")
    model = d.params["influence"]["train"]["model"]["kind"]
    return pd.DataFrame({"model": model, "method": [methods[c] for c in d["method_code"]], "hvps": d["hvps"],
                         "rel_error": d["rel_error"], "P": int(d.attrs["P"]), "lambda_max": float(d.attrs["lambda_max"]),
                         "damping": d.params["influence"]["damping"]})


def summarize(inputs: dict[str, list[Path]], outputs: dict[str, Path]) -> None:
    """CLI entry: inputs toy, dataset, train, influence, loo, solvers (the last four
    aligned, one file per model) and n_images (optional, a number as a path);
    outputs toy, paths, models, influence, solvers, images."""
    missing = [k for k in SUMMARIES if k not in outputs]
    if missing:
        raise MemgenError(f"summary curvature: missing --output {', '.join(m + '=PATH' for m in missing)}")
    n_images = int(str(inputs.get("n_images", [5])[0]))
    toy, paths = _toy_tables(inputs["toy"][0])
    rows, infl, imgs = [], [], []
    for train, influence, loo in zip(inputs["train"], inputs["influence"], inputs["loo"]):
        r, i, im = _model_tables(inputs["dataset"][0], train, influence, loo, n_images)
        rows.append(r)
        infl.append(i)
        imgs.append(im)
    solvers = pd.concat([_solver_table(p) for p in inputs.get("solvers", [])] or [pd.DataFrame()], ignore_index=True)
    tables = {"toy": toy, "paths": paths, "models": pd.DataFrame(rows), "influence": pd.concat(infl, ignore_index=True),
              "solvers": solvers, "images": pd.concat(imgs, ignore_index=True)}
    for key, df in tables.items():
        write_csv(df, outputs[key])

