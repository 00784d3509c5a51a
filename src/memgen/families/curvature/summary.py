"""Curvature: inverse Hessian-vector products and influence functions (Koh & Liang 2017;
seed 003, whose finite-difference HVP and LiSSA damping memgen.curvature improves on).

The summary: the step files as tidy CSV tables:

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
from typing import Any

import numpy as np
import pandas as pd

from memgen import h5io


def _attr_json(d: h5io.H5Data, key: str) -> Any:
    return json.loads(d.attrs[key])


def _toy_tables(d: h5io.H5Data) -> tuple[pd.DataFrame, pd.DataFrame]:
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


def _model_tables(ds: h5io.H5Data, tr: h5io.H5Data, inf: h5io.H5Data, lo: h5io.H5Data, n_images: int):
    """The rows of one model from its train, influence and leave-one-out files."""
    model = tr.params["model"]["kind"]
    if tr.params["dataset"] != ds.params:
        raise h5io.H5Error(f"{tr.path}: trained on another data set than {ds.path}")
    if inf.params["train"] != tr.params or lo.params["influence"] != inf.params:
        raise h5io.H5Error(f"{inf.path}, {lo.path}: computed for another trained model than {tr.path}")
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


def _solver_table(d: h5io.H5Data) -> pd.DataFrame:
    methods = _attr_json(d, "methods")
    model = d.params["influence"]["train"]["model"]["kind"]
    return pd.DataFrame({"model": model, "method": [methods[c] for c in d["method_code"]], "hvps": d["hvps"],
                         "rel_error": d["rel_error"], "P": int(d.attrs["P"]), "lambda_max": float(d.attrs["lambda_max"]),
                         "damping": d.params["influence"]["damping"]})


def summary(job) -> None:
    """Tidy tables of the toy, the influence checks per model and the solver study
    (module doc)."""
    toy, paths = _toy_tables(job.read("toy"))
    ds = job.read("dataset")
    rows, infl, imgs = [], [], []
    models = zip(job.read_each("train", ("test_losses",)), job.read_each("influence", ("predicted", "selected")),
                 job.read_each("loo", ("selected", "actual", "predicted", "selected_top", "grad_norm")))
    for tr, inf, lo in models:
        r, i, im = _model_tables(ds, tr, inf, lo, job.params["n_images"])
        rows.append(r)
        infl.append(i)
        imgs.append(im)
    solvers = [_solver_table(d) for d in job.read_each("solvers", ("method_code", "hvps", "rel_error"))]
    tables = {"toy": toy, "paths": paths, "models": pd.DataFrame(rows), "influence": pd.concat(infl, ignore_index=True),
              "solvers": pd.concat(solvers or [pd.DataFrame()], ignore_index=True),
              "images": pd.concat(imgs, ignore_index=True)}
    for key, df in tables.items():
        job.write_csv(key, df)
