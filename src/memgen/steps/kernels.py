"""Kernels family: NTK/NNGP regression, convergence to the analytic kernel, linearized GD."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from memgen import MemgenError, h5io
from memgen.kernels import studies
from memgen.models import FC
from memgen.provenance import code_hash
from memgen.steps.core import DTYPES, _load_dataset, resolve_device


def _kernels_data(inputs, params, dtype, n_train=None):
    ds = _load_dataset(inputs["dataset"], params["dataset"], "cpu", dtype)
    n = len(ds.y_train) if n_train is None else n_train
    if n > len(ds.y_train):
        raise MemgenError(f"{inputs['dataset']}: has {len(ds.y_train)} training points, step needs {n}")
    return ds.x_train[:n], ds.y_train[:n], ds.x_test, ds.y_test


def kernel_accuracy(inputs: dict, output: Path, params: dict, device: str = "cpu", progress: str | None = None,
                    **_) -> None:
    """Test accuracy (sign of the prediction vs +-1 labels) on the first ``n_train``
    points of the data set: empirical-NTK regression and the seed-002 NNGP predictor of a
    seeded FC, infinite-width NTK / NNGP kernel regression, and the FC trained by GD
    (memgen.kernels.studies.accuracy_comparison)."""
    dev = resolve_device(device)
    dtype = DTYPES[params["dtype"]]
    x, y, xt, yt = (v.to(dev) for v in _kernels_data(inputs, params, dtype, params["n_train"]))
    net = FC(seed=params["seed"], dtype=dtype, **params["model"]).to(dev)
    acc, diverged = studies.accuracy_comparison(net, x, y, xt, yt, ridge_ntk=params["ridge_ntk"],
                                                ridge_nngp=params["ridge_nngp"], ridge_inf=params["ridge_inf"],
                                                lr=params["train"]["lr"], steps=params["train"]["steps"],
                                                progress=progress)
    h5io.write(output, {f"acc_{k}": np.float64(v) for k, v in acc.items()}, step="kernel_accuracy",
               params=params, seed=params["seed"], code_sha256=code_hash("kernel_accuracy"),
               attrs={"diverged": diverged})


def ntk_convergence(inputs: dict, output: Path, params: dict, device: str = "cpu", progress: str | None = None,
                    **_) -> None:
    """Relative Frobenius error of the empirical NTK and NNGP (last hidden features,
    a.a'/h) of seeded FCs against the infinite-width kernels, on ``n_points`` points
    (memgen.kernels.studies.convergence_errors)."""
    dev = resolve_device(device)
    dtype = DTYPES[params["dtype"]]
    x = _kernels_data(inputs, params, dtype, params["n_points"])[0].to(dev)
    ntk_err, nngp_err = studies.convergence_errors(params["model"], params["seeds"], x, dtype, progress=progress)
    h5io.write(output, {"ntk_rel_err": ntk_err, "nngp_rel_err": nngp_err,
                        "seeds": np.array(params["seeds"], dtype=np.int64)}, step="ntk_convergence",
               params=params, seed=params["seeds"][0], code_sha256=code_hash("ntk_convergence"))


def linearized_training(inputs: dict, output: Path, params: dict, device: str = "cpu",
                        progress: str | None = None, **_) -> None:
    """GD on (1/2n) sum (f - y)^2 of a seeded FC and of its linearization at init (NTK,
    seed 001): losses on train/test and ||w_lin(t) - w(t)|| at log-spaced steps
    (memgen.kernels.studies.linearized_vs_gd)."""
    dev = resolve_device(device)
    dtype = DTYPES[params["dtype"]]
    x, y, xt, yt = (v.to(dev) for v in _kernels_data(inputs, params, dtype, params["n_train"]))
    net = FC(seed=params["seed"], dtype=dtype, **params["model"]).to(dev)
    steps = params["steps"]
    record = np.unique(np.round(np.concatenate([[0], np.geomspace(1, steps, params["checkpoints"])]))).astype(int)
    r = studies.linearized_vs_gd(net, x, y, xt, yt, params["lr"], steps, record, progress=progress)
    arrays = {"loss_train": r.loss_train, "loss_test": r.loss_test, "w_dist": r.w_dist, "w_move": r.w_move,
              "f_dist_train": r.f_dist_train, "f_dist_test": r.f_dist_test, "step": r.step, "t": r.t,
              "lin_loss_train": r.lin_loss_train, "lin_loss_test": r.lin_loss_test}
    h5io.write(output, arrays, step="linearized_training", params=params, seed=params["seed"],
               code_sha256=code_hash("linearized_training"), attrs={"diverged": r.diverged})


STEPS = {
    "kernel_accuracy": (kernel_accuracy, ("dataset",), "test accuracy of NTK/NNGP regression and the trained FC"),
    "ntk_convergence": (ntk_convergence, ("dataset",), "empirical vs infinite-width NTK/NNGP error at one width"),
    "linearized_training": (linearized_training, ("dataset",), "GD of an FC vs its linearization (seed 001)"),
}
