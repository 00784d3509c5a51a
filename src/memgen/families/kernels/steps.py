"""Run functions of the kernels family: NTK/NNGP regression, convergence to the
infinite-width kernels, linearized vs real GD (memgen.kernels.studies)."""

from __future__ import annotations

import numpy as np
import torch

from memgen import MemgenError
from memgen.families.shared import load_dataset
from memgen.kernels import studies
from memgen.models import FC

DTYPES = {"float64": torch.float64, "float32": torch.float32}


def _kernels_data(job, n_train: int):
    """The first ``n_train`` training points and the test set of input ``dataset``, on the job's device."""
    ds = load_dataset(job, dtype=DTYPES[job.params["dtype"]])
    if n_train > len(ds.y_train):
        raise MemgenError(f"{job.path('dataset')}: has {len(ds.y_train)} training points, step needs {n_train}")
    dev = job.torch_device()
    return (v.to(dev) for v in (ds.x_train[:n_train], ds.y_train[:n_train], ds.x_test, ds.y_test))


def _network(job):
    p = job.params
    return FC(seed=p["seed"], dtype=DTYPES[p["dtype"]], **p["model"]).to(job.torch_device())


def accuracy(job) -> None:
    """Test accuracy (sign of the prediction vs +-1 labels) on the first ``n_train``
    points of the data set: empirical-NTK regression and the seed-002 NNGP predictor of a
    seeded FC, infinite-width NTK / NNGP kernel regression, and the FC trained by GD
    (memgen.kernels.studies.accuracy_comparison)."""
    p = job.params
    x, y, xt, yt = _kernels_data(job, p["n_train"])
    acc, diverged = studies.accuracy_comparison(_network(job), x, y, xt, yt, ridge_ntk=p["ridge_ntk"],
                                                ridge_nngp=p["ridge_nngp"], ridge_inf=p["ridge_inf"],
                                                lr=p["train"]["lr"], steps=p["train"]["steps"], progress=job.progress)
    job.write({f"acc_{k}": np.float64(v) for k, v in acc.items()}, seed=p["seed"], attrs={"diverged": diverged})


def convergence(job) -> None:
    """Relative Frobenius error of the empirical NTK and NNGP (last hidden features,
    a.a'/h) of seeded FCs against the infinite-width kernels, on ``n_points`` points
    (memgen.kernels.studies.convergence_errors)."""
    p = job.params
    x = next(_kernels_data(job, p["n_points"]))
    with job.resume_point() as resume:  # after each seed
        ntk_err, nngp_err = studies.convergence_errors(p["model"], p["seeds"], x, DTYPES[p["dtype"]],
                                                       progress=job.progress, resume=resume)
    job.write({"ntk_rel_err": ntk_err, "nngp_rel_err": nngp_err, "seeds": np.array(p["seeds"], dtype=np.int64)},
              seed=p["seeds"][0])
    resume.done()


def linearized(job) -> None:
    """GD on (1/2n) sum (f - y)^2 of a seeded FC and of its linearization at init (NTK,
    seed 001): losses on train/test and ||w_lin(t) - w(t)|| at log-spaced steps
    (memgen.kernels.studies.linearized_vs_gd)."""
    p = job.params
    x, y, xt, yt = _kernels_data(job, p["n_train"])
    steps = p["steps"]
    record = np.unique(np.round(np.concatenate([[0], np.geomspace(1, steps, p["checkpoints"])]))).astype(int)
    r = studies.linearized_vs_gd(_network(job), x, y, xt, yt, p["lr"], steps, record, progress=job.progress)
    job.write({k: getattr(r, k) for k in job.step.datasets}, seed=p["seed"], attrs={"diverged": r.diverged})
