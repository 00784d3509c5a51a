"""Curvature: inverse HVPs and influence functions (memgen.curvature)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from memgen import MemgenError, data, h5io
from memgen import curvature as cv
from memgen.progress import sublabel
from memgen.provenance import code_hash

# Inverse Hessian-vector products and influence functions (Koh & Liang 2017; seed 003).
# Library: memgen.curvature (its studies module holds the family's experiments). Params
# are built by memgen.experiments.curvature.


def _cv_model(spec: dict, d: int) -> torch.nn.Module:
    return cv.classifier(spec["kind"], d, spec.get("hidden"), spec["seed"])


def curvature_toy(inputs: dict, output: Path, params: dict, device: str = "cpu", **_) -> None:
    """The seed's toy: L(w) = (y - w1 w2 x)^2 on one point, at w, right-hand side v.
    Exact / CG / LiSSA solutions of (H + damping I) x = v for every damping; LiSSA
    iterate paths for every scale (damping 0) and every damping (at ``damping_scale``).
    A scale the guard rejects is recorded as diverged (its message in the attribute
    ``messages``) with the unguarded iterates until they leave |x| <= ``bound``."""
    w, v = torch.tensor(params["w"], dtype=torch.float64), torch.tensor(params["v"], dtype=torch.float64)
    hvp_fn = cv.toy_hvp(float(params["x"]), float(params["y"]), w)
    H = cv.hessian_matrix(hvp_fn, v)
    dampings, scales, depth = params["dampings"], params["scales"], int(params["depth"])
    opts = {"exact": {}, "cg": {"tol": params["cg_tol"]}, "lissa": {"depth": int(params["lissa_depth"])}}
    sol = cv.compare_solvers(hvp_fn, v, H, dampings, opts)
    sc = cv.lissa_paths(hvp_fn, v, [(s, 0.0) for s in scales], depth, params["bound"])
    dp = cv.lissa_paths(hvp_fn, v, [(params["damping_scale"], d) for d in dampings], depth, params["bound"])
    lam = np.linalg.eigvalsh(H.numpy())
    arrays = {"H": H, "eigenvalues": lam, "v": v, "w": w, "dampings": np.asarray(dampings, float),
              "solutions/x": sol.x, "solutions/hvps": sol.hvps, "solutions/residual": sol.residual,
              "solutions/exact": sol.exact, "scale_study/scale": np.asarray(scales, float),
              "scale_study/path": sc.path, "scale_study/diverged": sc.diverged, "scale_study/steps": sc.steps,
              "damping_study/path": dp.path, "damping_study/diverged": dp.diverged, "damping_study/steps": dp.steps}
    h5io.write(output, arrays, step="curvature_toy", params=params, code_sha256=code_hash("curvature_toy"),
               attrs={"methods": json.dumps(list(opts)), "scale_messages": json.dumps(sc.messages),
                      "damping_messages": json.dumps(dp.messages), "lambda_max": float(lam[-1])})


def curvature_digits(inputs: dict, output: Path, params: dict, device: str = "cpu", **_) -> None:
    """scikit-learn's 8x8 digits, two classes (``classes[0]`` -> label 0, ``classes[1]`` -> 1),
    pixels / 16 in [0, 1]; a seeded permutation gives ``n_train`` training and ``n_test``
    test points (0 = all the rest) (memgen.data.digits). ``index_*``: rows of sklearn's
    data set."""
    ds = data.digits(int(params["n_train"]), int(params["n_test"]), params["classes"], params["seed"],
                     labels="binary", normalize=False)
    h5io.write(output, {"x_train": ds.x_train, "y_train": ds.y_train, "x_test": ds.x_test, "y_test": ds.y_test,
                        "index_train": ds.meta["index_train"], "index_test": ds.meta["index_test"]},
               step="curvature_digits", params=params, seed=params["seed"], code_sha256=code_hash("curvature_digits"))


CV_DIGITS_SHAPES = {"x_train": ("n_train", "d"), "y_train": ("n_train",), "x_test": ("n_test", "d"),
                    "y_test": ("n_test",)}


def _cv_load(inputs: dict, train_params: dict, with_model: bool = True):
    """(x_train, y_train, x_test, y_test) as float64 tensors, and the trained model."""
    ds = h5io.read(inputs["dataset"], CV_DIGITS_SHAPES, step="curvature_digits", expect_params=train_params["dataset"])
    t = {k: torch.from_numpy(np.asarray(a, dtype=np.float64)) for k, a in ds.arrays.items()}
    xy = (t["x_train"], t["y_train"], t["x_test"], t["y_test"])
    if not with_model:
        return xy, None
    model = _cv_model(train_params["model"], xy[0].shape[1])
    r = h5io.read(inputs["train"], {"w": (cv.flat_params(model).numel(),)}, step="curvature_train",
                  expect_params=train_params)
    cv.set_flat_params(model, torch.from_numpy(r["w"]))
    return xy, model


def curvature_train(inputs: dict, output: Path, params: dict, device: str = "cpu", progress: str | None = None,
                    **_) -> None:
    """Train a classifier to the optimum of mean logistic loss + (l2/2)||w||^2 (full batch,
    Newton-CG or L-BFGS, float64); store w and every point's loss."""
    (xtr, ytr, xte, yte), _ = _cv_load(inputs, params, with_model=False)
    model = _cv_model(params["model"], xtr.shape[1])
    info = cv.fit(model, cv.logistic_loss, xtr, ytr, l2=params["l2"], **params["fit"], progress=progress)
    (out_tr, loss_tr, acc_tr), (out_te, loss_te, acc_te) = (cv.evaluate_classifier(model, xtr, ytr),
                                                            cv.evaluate_classifier(model, xte, yte))
    arrays = {"w": cv.flat_params(model), "train_logits": out_tr, "test_logits": out_te, "train_losses": loss_tr,
              "test_losses": loss_te}
    h5io.write(output, arrays, step="curvature_train", params=params, seed=params["model"]["seed"],
               code_sha256=code_hash("curvature_train"),
               attrs={"grad_norm": info["grad_norm"], "iterations": info["iterations"], "objective": info["loss"],
                      "train_acc": acc_tr, "test_acc": acc_te})


def _cv_test_index(params: dict, test_losses: np.ndarray) -> int:
    """The configured test point, or (null) the test point with the highest loss."""
    i = params["test_index"]
    if i is None:
        return int(np.argmax(test_losses))
    if not 0 <= i < len(test_losses):
        raise MemgenError(f"curvature influence: test_index {i} is not in [0, {len(test_losses)})")
    return int(i)


def curvature_influence(inputs: dict, output: Path, params: dict, device: str = "cpu",
                        progress: str | None = None, **_) -> None:
    """Predicted change of one test point's loss on removing each training point,
    (1/n) g_test^T (H + damping I)^{-1} g_i (memgen.curvature.influence_on_test_loss, CG),
    and the training points to check by retraining: the ``n_top`` largest |prediction|
    and ``n_random`` others drawn with ``seed``."""
    tp = params["train"]
    (xtr, ytr, xte, yte), model = _cv_load(inputs, tp)
    r = h5io.read(inputs["train"], {"test_losses": (None,)}, step="curvature_train", expect_params=tp)
    ti = _cv_test_index(params, r["test_losses"])
    inf = cv.influence_on_test_loss(model, cv.logistic_loss, xtr, ytr, xte[ti:ti + 1], yte[ti:ti + 1],
                                    damping=params["damping"], method="cg", l2=tp["l2"], cache_graph=True,
                                    vectorized=False, tol=params["cg_tol"], progress=sublabel(progress, "cg"))
    pred = inf.removal_change.numpy()
    sel = params["select"]
    selected, is_top = cv.select_for_retraining(pred, sel["n_top"], sel["n_random"], sel["seed"])
    h5io.write(output, {"predicted": pred, "up_loss": inf.up_loss, "s_test": inf.s_test, "test_grad": inf.test_grad,
                        "selected": selected, "selected_top": is_top,
                        "cg_residual_history": np.asarray(inf.info["residual_history"])},
               step="curvature_influence", params=params, seed=sel["seed"], code_sha256=code_hash("curvature_influence"),
               attrs={"test_index": ti, "test_loss": float(r["test_losses"][ti]), "test_label": float(yte[ti]),
                      "cg_iterations": inf.info["iterations"], "cg_residual": inf.info["residual"],
                      "cg_true_residual": inf.info["true_residual"]})


CV_INFLUENCE_SHAPES = {"predicted": ("n_train",), "selected": ("k",), "selected_top": ("k",)}


def curvature_loo(inputs: dict, output: Path, params: dict, device: str = "cpu", progress: str | None = None,
                  **_) -> None:
    """Actual change of the test loss on removing each selected training point: retrain
    on the other n - 1 points (warm start at the trained w, memgen.curvature.leave_one_out)."""
    ip = params["influence"]
    tp = ip["train"]
    (xtr, ytr, xte, yte), model = _cv_load(inputs, tp)
    inf = h5io.read(inputs["influence"], CV_INFLUENCE_SHAPES, step="curvature_influence", expect_params=ip)
    ti = int(inf.attrs["test_index"])
    sel = inf["selected"]
    actual, infos = cv.leave_one_out(model, cv.logistic_loss, xtr, ytr, xte[ti:ti + 1], yte[ti:ti + 1], sel,
                                     l2=tp["l2"], progress=progress, **params["fit"])
    grad_norms = [i["grad_norm"] for i in infos]
    h5io.write(output, {"selected": sel, "actual": actual, "predicted": inf["predicted"][sel],
                        "selected_top": inf["selected_top"], "grad_norm": np.asarray(grad_norms),
                        "iterations": np.asarray([i["iterations"] for i in infos])},
               step="curvature_loo", params=params, code_sha256=code_hash("curvature_loo"),
               attrs={"test_index": ti, "max_grad_norm": float(max(grad_norms, default=0.0))})


def curvature_solvers(inputs: dict, output: Path, params: dict, device: str = "cpu",
                      progress: str | None = None, **_) -> None:
    """Accuracy vs number of HVPs of CG and LiSSA on (H + damping I) x = g_test, the
    influence system: relative error against a dense solve after every CG iteration and
    every ``record_every`` LiSSA steps (full batch at scale ``scale_factor`` (lambda_max +
    damping); mini-batch Hessians of ``batch_size`` points, counted as batch_size / n of
    a full HVP). The power iteration that sets the LiSSA scale is counted too."""
    ip = params["influence"]
    tp = ip["train"]
    (xtr, ytr, _, _), model = _cv_load(inputs, tp)
    inf = h5io.read(inputs["influence"], {"test_grad": (None,)}, step="curvature_influence", expect_params=ip)
    v = torch.from_numpy(inf["test_grad"])
    lp = params["lissa"]
    acc = cv.solver_accuracy(model, cv.logistic_loss, xtr, ytr, v, l2=tp["l2"], damping=ip["damping"],
                             cg_tol=params["cg_tol"], scale_factors=lp["scale_factors"], batch_size=lp["batch_size"],
                             depth=lp["depth"], record_every=lp["record_every"], seed=lp["seed"], progress=progress)
    h5io.write(output, {"method_code": acc.method_code, "hvps": acc.hvps, "rel_error": acc.rel_error,
                        "reference": acc.reference},
               step="curvature_solvers", params=params, code_sha256=code_hash("curvature_solvers"),
               attrs={"methods": json.dumps(acc.methods), "lambda_max": acc.lambda_max,
                      "cg_iterations": acc.cg_info["iterations"], "cg_true_residual": acc.cg_info["true_residual"],
                      "P": int(v.numel())})


STEPS = {
    "curvature_toy": (curvature_toy, (), "curvature: the seed's toy, exact/CG/LiSSA and LiSSA paths"),
    "curvature_digits": (curvature_digits, (), "curvature: two classes of sklearn digits in [0, 1]"),
    "curvature_train": (curvature_train, ("dataset",), "curvature: train logistic regression / MLP to the optimum"),
    "curvature_influence": (curvature_influence, ("dataset", "train"), "curvature: influence of every training point"),
    "curvature_loo": (curvature_loo, ("dataset", "train", "influence"), "curvature: leave-one-out retraining"),
    "curvature_solvers": (curvature_solvers, ("dataset", "train", "influence"), "curvature: CG vs LiSSA accuracy"),
}
