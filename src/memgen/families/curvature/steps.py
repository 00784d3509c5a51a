"""Run functions of the curvature family: inverse HVPs and influence functions
(memgen.curvature, whose studies module holds the family's experiments; Koh & Liang
2017, seed 003)."""

from __future__ import annotations

import json

import numpy as np
import torch

from memgen import MemgenError, data
from memgen import curvature as cv
from memgen.progress import sublabel


def toy(job) -> None:
    """The seed's toy: L(w) = (y - w1 w2 x)^2 on one point, at w, right-hand side v.
    Exact / CG / LiSSA solutions of (H + damping I) x = v for every damping; LiSSA
    iterate paths for every scale (damping 0) and every damping (at ``damping_scale``).
    A scale the guard rejects is recorded as diverged (its message in the attribute
    ``messages``) with the unguarded iterates until they leave |x| <= ``bound``."""
    p = job.params
    w, v = torch.tensor(p["w"], dtype=torch.float64), torch.tensor(p["v"], dtype=torch.float64)
    hvp_fn = cv.toy_hvp(float(p["x"]), float(p["y"]), w)
    H = cv.hessian_matrix(hvp_fn, v)
    dampings, scales, depth = p["dampings"], p["scales"], int(p["depth"])
    opts = {"exact": {}, "cg": {"tol": p["cg_tol"]}, "lissa": {"depth": int(p["lissa_depth"])}}
    sol = cv.compare_solvers(hvp_fn, v, H, dampings, opts)
    sc = cv.lissa_paths(hvp_fn, v, [(s, 0.0) for s in scales], depth, p["bound"])
    dp = cv.lissa_paths(hvp_fn, v, [(p["damping_scale"], d) for d in dampings], depth, p["bound"])
    lam = np.linalg.eigvalsh(H.numpy())
    job.write({"H": H, "eigenvalues": lam, "v": v, "w": w, "dampings": np.asarray(dampings, float),
               "solutions/x": sol.x, "solutions/hvps": sol.hvps, "solutions/residual": sol.residual,
               "solutions/exact": sol.exact, "scale_study/scale": np.asarray(scales, float),
               "scale_study/path": sc.path, "scale_study/diverged": sc.diverged, "scale_study/steps": sc.steps,
               "damping_study/path": dp.path, "damping_study/diverged": dp.diverged, "damping_study/steps": dp.steps},
              attrs={"methods": json.dumps(list(opts)), "scale_messages": json.dumps(sc.messages),
                     "damping_messages": json.dumps(dp.messages), "lambda_max": float(lam[-1])})


def digits(job) -> None:
    """scikit-learn's 8x8 digits, two classes (``classes[0]`` -> label 0, ``classes[1]`` -> 1),
    pixels / 16 in [0, 1]; a seeded permutation gives ``n_train`` training and ``n_test``
    test points (0 = all the rest) (memgen.data.digits). ``index_*``: rows of sklearn's
    data set."""
    p = job.params
    ds = data.digits(int(p["n_train"]), int(p["n_test"]), p["classes"], p["seed"], labels="binary",
                     normalize=False)
    job.write({**ds.arrays(), "index_train": ds.meta["index_train"], "index_test": ds.meta["index_test"]},
              seed=p["seed"])


def _load(job, with_model: bool = True):
    """(x_train, y_train, x_test, y_test) of input ``dataset`` as float64 tensors, and
    the trained model of input ``train``."""
    ds = job.read("dataset", ("x_train", "y_train", "x_test", "y_test"))
    t = {k: torch.from_numpy(np.asarray(a, dtype=np.float64)) for k, a in ds.arrays.items()}
    xy = (t["x_train"], t["y_train"], t["x_test"], t["y_test"])
    if not with_model:
        return xy, None
    spec = job.params["train"]["model"]
    model = cv.classifier(spec["kind"], xy[0].shape[1], spec.get("hidden"), spec["seed"])
    w = job.read("train", ("w",))["w"]
    if w.shape != (cv.flat_params(model).numel(),):
        raise MemgenError(f"{job.path('train')}: w has shape {w.shape}, the model needs "
                          f"({cv.flat_params(model).numel()},)")
    cv.set_flat_params(model, torch.from_numpy(w))
    return xy, model


def train(job) -> None:
    """Train a classifier to the optimum of mean logistic loss + (l2/2)||w||^2 (full batch,
    Newton-CG or L-BFGS, float64); store w and every point's loss."""
    p = job.params
    (xtr, ytr, xte, yte), _ = _load(job, with_model=False)
    spec = p["model"]
    model = cv.classifier(spec["kind"], xtr.shape[1], spec.get("hidden"), spec["seed"])
    info = cv.fit(model, cv.logistic_loss, xtr, ytr, l2=p["l2"], **p["fit"], progress=job.progress)
    (out_tr, loss_tr, acc_tr), (out_te, loss_te, acc_te) = (cv.evaluate_classifier(model, xtr, ytr),
                                                            cv.evaluate_classifier(model, xte, yte))
    job.write({"w": cv.flat_params(model), "train_logits": out_tr, "test_logits": out_te, "train_losses": loss_tr,
               "test_losses": loss_te}, seed=spec["seed"],
              attrs={"grad_norm": info["grad_norm"], "iterations": info["iterations"], "objective": info["loss"],
                     "train_acc": acc_tr, "test_acc": acc_te})


def _test_index(params: dict, test_losses: np.ndarray) -> int:
    """The configured test point, or (null) the test point with the highest loss."""
    i = params["test_index"]
    if i is None:
        return int(np.argmax(test_losses))
    if not 0 <= i < len(test_losses):
        raise MemgenError(f"curvature influence: test_index {i} is not in [0, {len(test_losses)})")
    return int(i)


def influence(job) -> None:
    """Predicted change of one test point's loss on removing each training point,
    (1/n) g_test^T (H + damping I)^{-1} g_i (memgen.curvature.influence_on_test_loss, CG),
    and the training points to check by retraining: the ``n_top`` largest |prediction|
    and ``n_random`` others drawn with ``seed``."""
    p = job.params
    (xtr, ytr, xte, yte), model = _load(job)
    losses = job.read("train", ("test_losses",))["test_losses"]
    ti = _test_index(p, losses)
    inf = cv.influence_on_test_loss(model, cv.logistic_loss, xtr, ytr, xte[ti:ti + 1], yte[ti:ti + 1],
                                    damping=p["damping"], method="cg", l2=p["train"]["l2"], cache_graph=True,
                                    vectorized=False, tol=p["cg_tol"], progress=sublabel(job.progress, "cg"))
    pred = inf.removal_change.numpy()
    sel = p["select"]
    selected, is_top = cv.select_for_retraining(pred, sel["n_top"], sel["n_random"], sel["seed"])
    job.write({"predicted": pred, "up_loss": inf.up_loss, "s_test": inf.s_test, "test_grad": inf.test_grad,
               "selected": selected, "selected_top": is_top,
               "cg_residual_history": np.asarray(inf.info["residual_history"])}, seed=sel["seed"],
              attrs={"test_index": ti, "test_loss": float(losses[ti]), "test_label": float(yte[ti]),
                     "cg_iterations": inf.info["iterations"], "cg_residual": inf.info["residual"],
                     "cg_true_residual": inf.info["true_residual"]})


def loo(job) -> None:
    """Actual change of the test loss on removing each selected training point: retrain
    on the other n - 1 points (warm start at the trained w, memgen.curvature.leave_one_out)."""
    p = job.params
    (xtr, ytr, xte, yte), model = _load(job)
    inf = job.read("influence", ("predicted", "selected", "selected_top"))
    ti = int(inf.attrs["test_index"])
    sel = inf["selected"]
    with job.resume_point() as resume:  # after each retraining
        actual, infos = cv.leave_one_out(model, cv.logistic_loss, xtr, ytr, xte[ti:ti + 1], yte[ti:ti + 1], sel,
                                         l2=p["train"]["l2"], progress=job.progress, resume=resume, **p["fit"])
    grad_norms = [i["grad_norm"] for i in infos]
    job.write({"selected": sel, "actual": actual, "predicted": inf["predicted"][sel],
               "selected_top": inf["selected_top"], "grad_norm": np.asarray(grad_norms),
               "iterations": np.asarray([i["iterations"] for i in infos])},
              attrs={"test_index": ti, "max_grad_norm": float(max(grad_norms, default=0.0))})
    resume.done()


def solvers(job) -> None:
    """Accuracy vs number of HVPs of CG and LiSSA on (H + damping I) x = g_test, the
    influence system: relative error against a dense solve after every CG iteration and
    every ``record_every`` LiSSA steps (full batch at scale ``scale_factor`` (lambda_max +
    damping); mini-batch Hessians of ``batch_size`` points, counted as batch_size / n of
    a full HVP). The power iteration that sets the LiSSA scale is counted too."""
    p = job.params
    (xtr, ytr, _, _), model = _load(job)
    v = torch.from_numpy(job.read("influence", ("test_grad",))["test_grad"])
    lp = p["lissa"]
    acc = cv.solver_accuracy(model, cv.logistic_loss, xtr, ytr, v, l2=p["train"]["l2"],
                             damping=p["influence"]["damping"], cg_tol=p["cg_tol"], scale_factors=lp["scale_factors"],
                             batch_size=lp["batch_size"], depth=lp["depth"], record_every=lp["record_every"],
                             seed=lp["seed"], progress=job.progress)
    job.write({"method_code": acc.method_code, "hvps": acc.hvps, "rel_error": acc.rel_error,
               "reference": acc.reference},
              attrs={"methods": json.dumps(acc.methods), "lambda_max": acc.lambda_max,
                     "cg_iterations": acc.cg_info["iterations"], "cg_true_residual": acc.cg_info["true_residual"],
                     "P": int(v.numel())})
