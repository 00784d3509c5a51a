"""Run functions of the time-scale family: read inputs, call the library, write.

Initialisation of the FC (memgen.models), gradient flow to the margin
(memgen.training), empirical NTK blocks (memgen.kernels), frozen-kernel runs.
"""

from __future__ import annotations

import dataclasses

import torch

from memgen import h5io, kernels
from memgen.families.shared import load_dataset
from memgen.losses import Loss
from memgen.models import FC, FCSpec, FlatFC
from memgen.training import FlowConfig, KernelProblem, NetworkProblem, run

DTYPES = {"float64": torch.float64, "float32": torch.float32}


def init(job) -> None:
    """Initialise an FC network (seeded) and store w0 and f(w0) on train and test."""
    p = job.params
    dtype = DTYPES[p["dtype"]]
    ds = load_dataset(job, dtype=dtype)
    net = FC(seed=p["seed"], dtype=dtype, **p["model"])
    with torch.no_grad():
        job.write({"w0": net.flat_parameters(), "f0_train": net(ds.x_train), "f0_test": net(ds.x_test)},
                  seed=p["seed"])


def _network(job, device, dtype) -> tuple[FlatFC, torch.Tensor]:
    """The initialised network of input ``init`` and its flat parameters w0."""
    params = job.params["init"]
    model = FlatFC(FCSpec(**params["model"]))
    w0 = job.read("init", ("w0",))["w0"]
    if w0.shape[0] != model.numel:
        raise h5io.H5Error(f"{job.path('init')}: w0 has {w0.shape[0]} entries, model {model.spec} needs {model.numel}")
    return model, torch.from_numpy(w0).to(device, dtype)


def _flow_config(params: dict) -> FlowConfig:
    """FlowConfig of a step's params (a method's keys are absent for the other method:
    FlowConfig's defaults, unused by it, fill them)."""
    f = params["flow"]
    keys = {x.name for x in dataclasses.fields(FlowConfig)} - {"alpha", "loss"}
    return FlowConfig(alpha=params["alpha"], loss=Loss(**params["loss"]), **{k: f[k] for k in keys if k in f})


def _write_run(job, result, seed: int) -> None:
    job.write(result.arrays(), seed=seed, attrs={k: result.status[k] for k in job.step.attrs})


def train(job) -> None:
    """Gradient flow of F = alpha (f - f0) to the margin (memgen.training)."""
    dev = job.torch_device()
    init_params = job.params["init"]
    dtype = DTYPES[init_params["dtype"]]
    ds = load_dataset(job, device=dev, dtype=dtype)
    model, w0 = _network(job, dev, dtype)
    cfg = _flow_config(job.params)
    problem = NetworkProblem(model, w0, ds.x_train, ds.y_train, ds.x_test, cfg)
    result = run(problem, cfg, ds.y_test, resume_path=job.resume_path, resume_every_s=job.resume_every_s,
                 resume_params=job.params, progress=job.progress)
    _write_run(job, result, init_params["seed"])
    job.resume_path.unlink(missing_ok=True)


def ntk(job) -> None:
    """Empirical NTK blocks at initialisation (inputs: dataset, init) or at the end of
    training (also ``run``, whose ``w_final`` is used)."""
    dev = job.torch_device()
    init_params = job.params["init"]
    dtype = DTYPES[init_params["dtype"]]
    ds = load_dataset(job, device=dev, dtype=dtype)
    model, w = _network(job, dev, dtype)
    if "run" in job.step.inputs:
        w_final = job.read("run", ("w_final",))["w_final"]
        if w_final.shape != (model.numel,):
            raise h5io.H5Error(f"{job.path('run')}: w_final has shape {w_final.shape}, the model needs "
                               f"({model.numel},)")
        w = torch.from_numpy(w_final).to(dev, dtype)
    blocks = kernels.empirical_ntk_blocks(FC.from_flat(model.spec, w), ds.x_train, ds.x_test, progress=job.progress)
    job.write(dict(zip(("K_train_train", "K_test_train", "K_test_test"), blocks)), seed=init_params["seed"])


def kernel_train(job) -> None:
    """Frozen-kernel (linearized) flow with the NTK at initialisation."""
    dev = job.torch_device()
    init_params = job.params["ntk"]["init"]
    dtype = DTYPES[init_params["dtype"]]
    ds = load_dataset(job, device=dev, dtype=dtype)
    k = job.read("ntk", ("K_train_train", "K_test_train"))
    if k["K_train_train"].shape[0] != len(ds.y_train) or k["K_test_train"].shape[0] != len(ds.y_test):
        raise h5io.H5Error(f"{job.path('ntk')}: kernel sizes do not match the data set {job.path('dataset')}")
    K = torch.from_numpy(k["K_train_train"]).to(dev, dtype)
    Kt = torch.from_numpy(k["K_test_train"]).to(dev, dtype)
    cfg = _flow_config(job.params)
    result = run(KernelProblem(K, Kt, ds.y_train, cfg), cfg, ds.y_test, progress=job.progress)
    _write_run(job, result, init_params["seed"])
