"""Kernels family: NTK/NNGP regression, convergence to the analytic kernel, linearized GD."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from memgen import MemgenError, h5io, kernels
from memgen.models import FC, FlatFC
from memgen.progress import Progress, sublabel
from memgen.provenance import code_hash
from memgen.steps.core import DTYPES, _load_dataset, resolve_device


def _gd_mse(model: FlatFC, w: torch.Tensor, x: torch.Tensor, y: torch.Tensor, lr: float, steps: int,
            record=(), on_record=None, progress: str | None = None):
    """Discrete GD on (1/2n) sum (f(x) - y)^2 from ``w``; ``on_record(step, w, f)`` at the
    steps in ``record``; progress lines labelled ``progress`` (None: silent). Returns
    (w, f, diverged)."""
    n = len(y)
    record = set(int(r) for r in record)
    f = None
    bar = Progress(progress, steps, unit="step", message=f"GD on {n} points, lr={lr:g}")
    for k in range(steps + 1):
        f, cache = model.forward(w, x)
        if not torch.isfinite(f).all():
            bar.finish(k, "diverged")
            return w, f, True
        if k in record and on_record is not None:
            on_record(k, w, f)
        if k == steps:
            break
        w = w - lr * model.vjp(cache, (f - y) / n)
        if bar.due():
            bar.update(k + 1, f"train loss {float(((f - y) ** 2).mean() / 2):.4g}")
    bar.finish(steps, lambda: f"train loss {float(((f - y) ** 2).mean() / 2):.4g}")
    return w, f, False


def _kernels_data(inputs, params, dtype, n_train=None):
    ds = _load_dataset(inputs["dataset"], params["dataset"], "cpu", dtype)
    n = len(ds.y_train) if n_train is None else n_train
    if n > len(ds.y_train):
        raise MemgenError(f"{inputs['dataset']}: has {len(ds.y_train)} training points, step needs {n}")
    return ds.x_train[:n], ds.y_train[:n], ds.x_test, ds.y_test


def _accuracy(pred: torch.Tensor, y: torch.Tensor) -> float:
    return float((torch.sign(pred) == y).to(torch.float64).mean()) if torch.isfinite(pred).all() else float("nan")


def kernel_accuracy(inputs: dict, output: Path, params: dict, device: str = "cpu", progress: str | None = None,
                    **_) -> None:
    """Test accuracy (sign of the prediction vs +-1 labels) on the first ``n_train``
    points of the data set: empirical-NTK regression and the seed-002 NNGP predictor of a
    seeded FC, infinite-width NTK / NNGP kernel regression, and the FC trained by GD."""
    dev = resolve_device(device)
    dtype = DTYPES[params["dtype"]]
    x, y, xt, yt = (v.to(dev) for v in _kernels_data(inputs, params, dtype, params["n_train"]))
    net = FC(seed=params["seed"], dtype=dtype, **params["model"]).to(dev)
    acc = {"ntk": _accuracy(kernels.ntk_regression(net, x, y, xt, params["ridge_ntk"]), yt),
           "nngp": _accuracy(kernels.nngp_predictor(net, x, y, xt, params["ridge_nngp"])[1], yt)}
    L = params["model"]["L"]
    ktt_nngp, ktt_ntk = kernels.analytic_kernels(x, None, L)
    kst_nngp, kst_ntk = kernels.analytic_kernels(xt, x, L)
    acc["ntk_inf"] = _accuracy(kernels.kernel_regression(ktt_ntk, kst_ntk, y, params["ridge_inf"]), yt)
    acc["nngp_inf"] = _accuracy(kernels.kernel_regression(ktt_nngp, kst_nngp, y, params["ridge_inf"]), yt)
    flat = net.flat()
    w, _, diverged = _gd_mse(flat, net.flat_parameters(), x, y, params["train"]["lr"], params["train"]["steps"],
                             progress=progress)
    with torch.no_grad():
        acc["trained"] = float("nan") if diverged else _accuracy(flat.forward(w, xt, keep=False)[0], yt)
    h5io.write(output, {f"acc_{k}": np.float64(v) for k, v in acc.items()}, step="kernel_accuracy",
               params=params, seed=params["seed"], code_sha256=code_hash("kernel_accuracy"),
               attrs={"diverged": diverged})


def ntk_convergence(inputs: dict, output: Path, params: dict, device: str = "cpu", progress: str | None = None,
                    **_) -> None:
    """Relative Frobenius error of the empirical NTK and NNGP (last hidden features,
    a.a'/h) of seeded FCs against the infinite-width kernels, on ``n_points`` points."""
    dev = resolve_device(device)
    dtype = DTYPES[params["dtype"]]
    x = _kernels_data(inputs, params, dtype, params["n_points"])[0].to(dev)
    nngp_inf, ntk_inf = kernels.analytic_kernels(x, None, params["model"]["L"])
    ntk_err, nngp_err = [], []
    bar = Progress(progress, len(params["seeds"]), unit="seed",
                   message=f"h={params['model']['h']}, {len(x)} points")
    for k, seed in enumerate(params["seeds"]):
        net = FC(seed=seed, dtype=dtype, **params["model"]).to(dev)
        ntk_err.append(kernels.relative_change(ntk_inf, kernels.empirical_ntk(net, x)))
        a = kernels.last_hidden_features(net, x)
        nngp_err.append(kernels.relative_change(nngp_inf, a @ a.t()))
        bar.update(k + 1, f"seed {seed}: NTK error {ntk_err[-1]:.3g}")
    bar.finish()
    h5io.write(output, {"ntk_rel_err": np.array(ntk_err), "nngp_rel_err": np.array(nngp_err),
                        "seeds": np.array(params["seeds"], dtype=np.int64)}, step="ntk_convergence",
               params=params, seed=params["seeds"][0], code_sha256=code_hash("ntk_convergence"))


def linearized_training(inputs: dict, output: Path, params: dict, device: str = "cpu",
                        progress: str | None = None, **_) -> None:
    """GD on (1/2n) sum (f - y)^2 of a seeded FC and of its linearization at init (NTK,
    seed 001): losses on train/test and ||w_lin(t) - w(t)|| at log-spaced steps."""
    from memgen.dynamics import linearized_predictions, linearized_weights

    dev = resolve_device(device)
    dtype = DTYPES[params["dtype"]]
    x, y, xt, yt = (v.to(dev) for v in _kernels_data(inputs, params, dtype, params["n_train"]))
    net = FC(seed=params["seed"], dtype=dtype, **params["model"]).to(dev)
    flat, w0 = net.flat(), net.flat_parameters()
    lr, steps = params["lr"], params["steps"]
    record = np.unique(np.round(np.concatenate([[0], np.geomspace(1, steps, params["checkpoints"])]))).astype(int)
    Ktt, Kst, _ = kernels.empirical_ntk_blocks(net, x, xt, progress=sublabel(progress, "ntk"))
    with torch.no_grad():
        f0, f0t = flat.forward(w0, x, keep=False)[0], flat.forward(w0, xt, keep=False)[0]
    t = torch.as_tensor(record, dtype=dtype)
    Ftr, Fte = linearized_predictions(Ktt, Kst, f0, f0t, y, t, lr=lr, continuous=False)
    vjp = kernels.model_vjp(net, x)
    rows = {k: [] for k in ("loss_train", "loss_test", "w_dist", "w_move", "f_dist_train", "f_dist_test")}
    index = {int(s): i for i, s in enumerate(record)}

    def on_record(k, w, f):
        i = index[k]
        ft = flat.forward(w, xt, keep=False)[0]
        w_lin = linearized_weights(w0, vjp, Ktt, f0, y, t[i:i + 1], lr=lr, continuous=False)[0]
        rows["loss_train"].append(float(((f - y) ** 2).mean() / 2))
        rows["loss_test"].append(float(((ft - yt) ** 2).mean() / 2))
        rows["w_dist"].append(float((w_lin - w).norm()))
        rows["w_move"].append(float((w - w0).norm()))
        rows["f_dist_train"].append(float((Ftr[i] - f).norm() / (f - y).norm().clamp_min(1e-300)))
        rows["f_dist_test"].append(float((Fte[i] - ft).norm() / ft.norm().clamp_min(1e-300)))

    with torch.no_grad():
        _, _, diverged = _gd_mse(flat, w0, x, y, lr, steps, record, on_record, progress=progress)
    m = len(rows["loss_train"])
    arrays = {k: np.array(v) for k, v in rows.items()}
    arrays.update({"step": record[:m], "t": record[:m] * lr,
                   "lin_loss_train": (((Ftr[:m] - y) ** 2).mean(1) / 2),
                   "lin_loss_test": (((Fte[:m] - yt) ** 2).mean(1) / 2)})
    h5io.write(output, arrays, step="linearized_training", params=params, seed=params["seed"],
               code_sha256=code_hash("linearized_training"), attrs={"diverged": diverged})


STEPS = {
    "kernel_accuracy": (kernel_accuracy, ("dataset",), "test accuracy of NTK/NNGP regression and the trained FC"),
    "ntk_convergence": (ntk_convergence, ("dataset",), "empirical vs infinite-width NTK/NNGP error at one width"),
    "linearized_training": (linearized_training, ("dataset",), "GD of an FC vs its linearization (seed 001)"),
}
