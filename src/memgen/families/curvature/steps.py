"""Run functions of the curvature family: inverse HVPs and influence functions
(memgen.curvature; Koh & Liang 2017, seed 003)."""

from __future__ import annotations

import numpy as np
import torch

from memgen import MemgenError
from memgen.progress import Progress, sublabel

def _cv_bce(out, y):
    """Mean logistic loss of logits ``out`` (n, 1) against labels y in {0, 1}."""
    return torch.nn.functional.binary_cross_entropy_with_logits(out.squeeze(-1), y)


def _cv_model(spec: dict, d: int) -> torch.nn.Module:
    """``logreg``: Linear(d, 1); ``mlp``: Linear(d, hidden) - tanh - Linear(hidden, 1);
    PyTorch's default init under ``torch.manual_seed(spec["seed"])``, float64."""
    torch.manual_seed(int(spec["seed"]))
    if spec["kind"] == "logreg":
        net = torch.nn.Linear(d, 1)
    elif spec["kind"] == "mlp":
        net = torch.nn.Sequential(torch.nn.Linear(d, spec["hidden"]), torch.nn.Tanh(), torch.nn.Linear(spec["hidden"], 1))
    else:
        raise MemgenError(f"curvature model kind: unknown '{spec['kind']}' (logreg, mlp)")
    return net.double()


def toy(job) -> None:
    """The seed's toy: L(w) = (y - w1 w2 x)^2 on one point, at w, right-hand side v.
    Exact / CG / LiSSA solutions of (H + damping I) x = v for every damping; LiSSA
    iterate paths for every scale (damping 0) and every damping (at ``damping_scale``).
    A scale the guard rejects is recorded as diverged (its message in the attribute
    ``messages``) with the unguarded iterates until they leave |x| <= ``bound``."""
    params = job.params
    import json

    from memgen import curvature as cv

    D = torch.float64
    x0, y0 = float(params["x"]), float(params["y"])
    w, v = torch.tensor(params["w"], dtype=D), torch.tensor(params["v"], dtype=D)
    hvp_fn = lambda u: cv.hvp(lambda ww: (y0 - ww[0] * ww[1] * x0) ** 2, w, u)  # noqa: E731
    H = cv.hessian_matrix(hvp_fn, v)
    dampings, scales, depth = params["dampings"], params["scales"], int(params["depth"])
    opts = {"exact": {}, "cg": {"tol": params["cg_tol"]}, "lissa": {"depth": int(params["lissa_depth"])}}
    sol = np.full((len(dampings), 3, len(v)), np.nan)
    hvps, resid = np.zeros((len(dampings), 3)), np.full((len(dampings), 3), np.nan)
    exact = np.stack([np.linalg.solve(H.numpy() + d * np.eye(len(v)), v.numpy()) for d in dampings])
    for i, d in enumerate(dampings):
        for j, method in enumerate(opts):
            x, info = cv.inverse_hvp(hvp_fn, v, method=method, damping=float(d), **opts[method])
            sol[i, j], hvps[i, j] = x.numpy(), info["hvps"]
            A = H + float(d) * torch.eye(len(v), dtype=D)
            resid[i, j] = float((A @ x - v).norm() / v.norm())

    def study(runs):
        paths = np.full((len(runs), depth, len(v)), np.nan)
        diverged, steps, messages, used_scale = np.zeros(len(runs), bool), np.zeros(len(runs), int), [], []
        for k, (s, d) in enumerate(runs):
            try:
                _, info = cv.inverse_hvp(hvp_fn, v, method="lissa", scale=float(s), damping=float(d), depth=depth,
                                         record="iterate")
                path, msg = info["path"][0].numpy(), ""
            except cv.LissaDiverged as exc:  # recorded, drawn until it leaves the window; never a crash
                path = cv.lissa_unguarded_path(hvp_fn, v, float(s), float(d), depth, params["bound"]).numpy()
                diverged[k], msg = True, str(exc)
            paths[k, :len(path)], steps[k] = path, len(path)
            messages.append(msg)
            used_scale.append(float(s))
        return paths, diverged, steps, messages

    sp, sd, ss, sm = study([(s, 0.0) for s in scales])
    dp, dd, ds, dm = study([(params["damping_scale"], d) for d in dampings])
    lam = np.linalg.eigvalsh(H.numpy())
    arrays = {"H": H, "eigenvalues": lam, "v": v, "w": w, "dampings": np.asarray(dampings, float),
              "solutions/x": sol, "solutions/hvps": hvps, "solutions/residual": resid, "solutions/exact": exact,
              "scale_study/scale": np.asarray(scales, float), "scale_study/path": sp, "scale_study/diverged": sd,
              "scale_study/steps": ss, "damping_study/path": dp, "damping_study/diverged": dd,
              "damping_study/steps": ds}
    job.write(arrays,
               attrs={"methods": json.dumps(list(opts)), "scale_messages": json.dumps(sm),
                      "damping_messages": json.dumps(dm), "lambda_max": float(lam[-1])})


def digits(job) -> None:
    """scikit-learn's 8x8 digits, two classes (``classes[0]`` -> label 0, ``classes[1]`` -> 1),
    pixels / 16 in [0, 1]; a seeded permutation gives ``n_train`` training and ``n_test``
    test points (0 = all the rest). ``index_*``: rows of sklearn's data set."""
    params = job.params
    from sklearn.datasets import load_digits

    raw = load_digits()
    c0, c1 = (int(c) for c in params["classes"])
    rows = np.flatnonzero(np.isin(raw.target, (c0, c1)))
    perm = np.random.default_rng(params["seed"]).permutation(rows)
    n_tr = int(params["n_train"])
    n_te = len(rows) - n_tr if params["n_test"] == 0 else int(params["n_test"])
    if n_tr < 1 or n_te < 1 or n_tr + n_te > len(rows):
        raise MemgenError(f"curvature digits: n_train={n_tr} + n_test={params['n_test']} exceeds the {len(rows)} "
                          f"images of classes {c0}, {c1}")
    tr, te = perm[:n_tr], perm[n_tr:n_tr + n_te]
    pick = lambda idx: (raw.data[idx] / 16.0, (raw.target[idx] == c1).astype(np.float64))  # noqa: E731
    (xtr, ytr), (xte, yte) = pick(tr), pick(te)
    job.write({"x_train": xtr, "y_train": ytr, "x_test": xte, "y_test": yte, "index_train": tr,
                        "index_test": te}, seed=params["seed"])


def _cv_load(job, with_model: bool = True):
    """(x_train, y_train, x_test, y_test) as float64 tensors, and the trained model of input ``train``."""
    ds = job.read("dataset", ("x_train", "y_train", "x_test", "y_test"))
    t = {k: torch.from_numpy(np.asarray(a, dtype=np.float64)) for k, a in ds.arrays.items()}
    data = (t["x_train"], t["y_train"], t["x_test"], t["y_test"])
    if not with_model:
        return data, None
    from memgen import curvature as cv

    model = _cv_model(job.params["train"]["model"], data[0].shape[1])
    w = job.read("train", ("w",))["w"]
    if w.shape != (cv.flat_params(model).numel(),):
        raise MemgenError(f"{job.path('train')}: w has shape {w.shape}, the model needs ({cv.flat_params(model).numel()},)")
    cv.set_flat_params(model, torch.from_numpy(w))
    return data, model


def train(job) -> None:
    """Train a classifier to the optimum of mean logistic loss + (l2/2)||w||^2 (full batch,
    Newton-CG or L-BFGS, float64); store w and every point's loss."""
    params, progress = job.params, job.progress
    from memgen import curvature as cv

    (xtr, ytr, xte, yte), _ = _cv_load(job, with_model=False)
    model = _cv_model(params["model"], xtr.shape[1])
    info = cv.fit(model, _cv_bce, xtr, ytr, l2=params["l2"], **params["fit"],
                  progress=progress)
    with torch.no_grad():
        out_tr, out_te = model(xtr).squeeze(-1), model(xte).squeeze(-1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits
        arrays = {"w": cv.flat_params(model), "train_logits": out_tr, "test_logits": out_te,
                  "train_losses": loss(out_tr, ytr, reduction="none"), "test_losses": loss(out_te, yte, reduction="none")}
    acc = lambda o, y: float(((o > 0).double() == y).double().mean())  # noqa: E731
    job.write(arrays, seed=params["model"]["seed"],
               attrs={"grad_norm": info["grad_norm"], "iterations": info["iterations"], "objective": info["loss"],
                      "train_acc": acc(out_tr, ytr), "test_acc": acc(out_te, yte)})


def _cv_test_index(params: dict, test_losses: np.ndarray) -> int:
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
    params, progress = job.params, job.progress
    from memgen import curvature as cv

    tp = params["train"]
    (xtr, ytr, xte, yte), model = _cv_load(job)
    r = job.read("train", ("test_losses",))
    ti = _cv_test_index(params, r["test_losses"])
    inf = cv.influence_on_test_loss(model, _cv_bce, xtr, ytr, xte[ti:ti + 1], yte[ti:ti + 1], damping=params["damping"],
                                    method="cg", l2=tp["l2"], cache_graph=True, vectorized=False, tol=params["cg_tol"],
                                    progress=sublabel(progress, "cg"))
    pred = inf.removal_change.numpy()
    n = len(pred)
    sel = params["select"]
    top = np.argsort(-np.abs(pred), kind="stable")[:min(sel["n_top"], n)]
    rest = np.setdiff1d(np.arange(n), top)
    rnd = np.sort(np.random.default_rng(sel["seed"]).choice(rest, min(sel["n_random"], len(rest)), replace=False))
    selected = np.concatenate([top, rnd]).astype(np.int64)
    job.write({"predicted": pred, "up_loss": inf.up_loss, "s_test": inf.s_test, "test_grad": inf.test_grad,
                        "selected": selected, "selected_top": np.r_[np.ones(len(top)), np.zeros(len(rnd))].astype(bool),
                        "cg_residual_history": np.asarray(inf.info["residual_history"])}, seed=sel["seed"],
               attrs={"test_index": ti, "test_loss": float(r["test_losses"][ti]), "test_label": float(yte[ti]),
                      "cg_iterations": inf.info["iterations"], "cg_residual": inf.info["residual"],
                      "cg_true_residual": inf.info["true_residual"]})


def loo(job) -> None:
    """Actual change of the test loss on removing each selected training point: retrain
    on the other n - 1 points (warm start at the trained w, memgen.curvature.leave_one_out)."""
    params, progress = job.params, job.progress
    from memgen import curvature as cv

    tp = params["train"]
    (xtr, ytr, xte, yte), model = _cv_load(job)
    inf = job.read("influence", ("predicted", "selected", "selected_top"))
    ti = int(inf.attrs["test_index"])
    sel = inf["selected"]
    actual, grad_norms, iters = [], [], []
    bar = Progress(progress, len(sel), unit="retrain",
                   message=f"leave-one-out retrainings of {len(ytr)} points")
    for k, i in enumerate(sel):
        a, infos = cv.leave_one_out(model, _cv_bce, xtr, ytr, xte[ti:ti + 1], yte[ti:ti + 1], [int(i)], l2=tp["l2"],
                                    **params["fit"])
        actual.append(float(a[0]))
        grad_norms.append(infos[0]["grad_norm"])
        iters.append(infos[0]["iterations"])
        bar.update(k + 1, f"point {int(i)} actual {actual[-1]:.4g} predicted {float(inf['predicted'][i]):.4g} "
                          f"grad {grad_norms[-1]:.2g}")
    bar.finish()
    job.write({"selected": sel, "actual": np.asarray(actual), "predicted": inf["predicted"][sel],
                        "selected_top": inf["selected_top"], "grad_norm": np.asarray(grad_norms),
                        "iterations": np.asarray(iters)},
               attrs={"test_index": ti, "max_grad_norm": float(max(grad_norms, default=0.0))})


def solvers(job) -> None:
    """Accuracy vs number of HVPs of CG and LiSSA on (H + damping I) x = g_test, the
    influence system: relative error against a dense solve after every CG iteration and
    every ``record_every`` LiSSA steps (full batch at scale ``scale_factor`` (lambda_max +
    damping); mini-batch Hessians of ``batch_size`` points, counted as batch_size / n of
    a full HVP). The power iteration that sets the LiSSA scale is counted too."""
    params, progress = job.params, job.progress
    import json

    from memgen import curvature as cv

    ip, tp = params["influence"], params["train"]
    (xtr, ytr, xte, yte), model = _cv_load(job)
    inf = job.read("influence", ("test_grad",))
    v = torch.from_numpy(inf["test_grad"])
    l2, damping, n = tp["l2"], ip["damping"], len(ytr)
    data_hvp = cv.make_module_hvp(model, _cv_bce, [(xtr, ytr)], cache_graph=True)
    hvp_fn = lambda u: data_hvp(u) + l2 * u  # noqa: E731  (Hessian of the regularized objective)
    ref, _ = cv.inverse_hvp(hvp_fn, v, method="exact", damping=damping, progress=sublabel(progress, "exact"))
    err = lambda x: float((x - ref).norm() / ref.norm())  # noqa: E731
    rows = {"method": [], "hvps": [], "rel_error": []}

    def add(method, hvps, e):
        rows["method"].append(method)
        rows["hvps"].append(float(hvps))
        rows["rel_error"].append(e)

    add("cg", 0, 1.0)
    _, cg_info = cv.inverse_hvp(hvp_fn, v, method="cg", damping=damping, tol=params["cg_tol"],
                                callback=lambda k, x: add("cg", k, err(x)), progress=sublabel(progress, "cg"))
    lp = params["lissa"]
    lam, pinfo = cv.top_eigenvalue(hvp_fn, v, iters=200, tol=1e-6, return_info=True)
    runs = [(f"lissa_full_x{f:g}", None, f * (lam + damping), 1.0) for f in lp["scale_factors"]]
    bs = int(lp["batch_size"])
    if bs < n:
        batches = [(xtr[i:i + bs], ytr[i:i + bs]) for i in range(0, n, bs)]
        bh = [lambda u, f=f: f(u) + l2 * u for f in cv.make_batch_hvps(model, _cv_bce, batches, cache_graph=True)]
        lam_b = max(cv.top_eigenvalue(f, v, iters=200, tol=1e-6) for f in bh)
        runs.append((f"lissa_batch{bs}_x{lp['scale_factors'][0]:g}", bh, lp["scale_factors"][0] * (lam_b + damping),
                     bs / n))
    for name, batch_hvps, scale, cost in runs:
        add(name, pinfo["hvps"], 1.0)
        _, info = cv.inverse_hvp(hvp_fn, v, method="lissa", damping=damping, scale=scale, depth=int(lp["depth"]),
                                 batch_hvps=batch_hvps, lambda_max=lam, record="iterate",
                                 record_every=int(lp["record_every"]), seed=int(lp["seed"]),
                                 progress=sublabel(progress, name))
        for j, xj in zip(info["path_steps"], info["path"][0]):
            add(name, pinfo["hvps"] + cost * j, err(xj))
    methods = sorted(set(rows["method"]))
    code = np.array([methods.index(m) for m in rows["method"]])
    job.write({"method_code": code, "hvps": np.asarray(rows["hvps"]), "rel_error": np.asarray(rows["rel_error"]),
                        "reference": ref},
               attrs={"methods": json.dumps(methods), "lambda_max": float(lam), "cg_iterations": cg_info["iterations"],
                      "cg_true_residual": cg_info["true_residual"], "P": int(v.numel())})
