"""Steps shared by the network families: data sets, initialisation, gradient-flow
training to a margin, empirical NTK blocks, frozen-kernel runs (time-scale family)."""

from __future__ import annotations

from pathlib import Path

import torch

from memgen import MemgenError, data, h5io, kernels
from memgen.losses import Loss
from memgen.models import FC, FCSpec, FlatFC
from memgen.provenance import code_hash
from memgen.training import FlowConfig, KernelProblem, NetworkProblem, run
DTYPES = {"float64": torch.float64, "float32": torch.float32}


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise MemgenError("--device cuda: no CUDA device is available (use --device auto or cpu)")
    if device not in ("cpu", "cuda"):
        raise MemgenError(f"--device: unknown '{device}'; allowed: auto, cpu, cuda")
    return torch.device(device)


def _load_dataset(path, params, device, dtype) -> data.Dataset:
    return data.load(path, expect_params=params).to(device, dtype)


def _fc_spec(model_params: dict) -> FCSpec:
    return FCSpec(**model_params)


def dataset(inputs: dict, output: Path, params: dict, device: str = "cpu", **_) -> None:
    """Generate the data set ``params`` describes."""
    ds = data.make(params)
    data.save(ds, output, params, code_sha256=code_hash("dataset"))


INIT_SHAPES = {"w0": ("P",), "f0_train": ("n_train",), "f0_test": ("n_test",)}


def init(inputs: dict, output: Path, params: dict, device: str = "cpu", **_) -> None:
    """Initialise an FC network (seeded) and store w0 and f(w0) on train and test."""
    dtype = DTYPES[params["dtype"]]
    ds = _load_dataset(inputs["dataset"], params["dataset"], "cpu", dtype)
    net = FC(seed=params["seed"], dtype=dtype, **params["model"])
    with torch.no_grad():
        arrays = {"w0": net.flat_parameters(), "f0_train": net(ds.x_train), "f0_test": net(ds.x_test)}
    h5io.write(output, arrays, step="init", params=params, seed=params["seed"], code_sha256=code_hash("init"))


def _load_init(path, params, device, dtype):
    d = h5io.read(path, INIT_SHAPES, step="init", expect_params=params)
    spec = _fc_spec(params["model"])
    model = FlatFC(spec)
    if d["w0"].shape[0] != model.numel:
        raise h5io.H5Error(f"{path}: w0 has {d['w0'].shape[0]} entries, model {spec} needs {model.numel}")
    return model, torch.from_numpy(d["w0"]).to(device, dtype)


def _flow_config(params: dict) -> FlowConfig:
    f = params["flow"]
    return FlowConfig(alpha=params["alpha"], loss=Loss(**params["loss"]), normalization=f["normalization"],
                      max_dgrad=f["max_dgrad"], max_dout=f["max_dout"], tau=f["tau"],
                      max_time=f["max_time"], max_steps=f["max_steps"], max_wall=f["max_wall"],
                      checkpoint_step=f["checkpoint_step"])


def _write_run(output, result, params, step, extra=None):
    s = result.status
    attrs = {k: s[k] for k in ("converged", "diverged", "stop_reason", "t_fit", "step_fit",
                               "t_memorize", "step_memorize")}
    h5io.write(output, {**result.arrays(), **(extra or {})}, step=step, params=params,
               seed=params.get("init", params.get("ntk", {})).get("seed"), code_sha256=code_hash(step),
               attrs=attrs)


def train(inputs: dict, output: Path, params: dict, device: str = "cpu", resume_every_s: float = 300.0,
          progress: str | None = None, **_) -> None:
    """Gradient flow of F = alpha (f - f0) to the margin (memgen.training)."""
    dev = resolve_device(device)
    init_params = params["init"]
    dtype = DTYPES[init_params["dtype"]]
    ds = _load_dataset(inputs["dataset"], init_params["dataset"], dev, dtype)
    model, w0 = _load_init(inputs["init"], init_params, dev, dtype)
    cfg = _flow_config(params)
    problem = NetworkProblem(model, w0, ds.x_train, ds.y_train, ds.x_test, cfg)
    resume = Path(str(output) + ".resume")
    result = run(problem, cfg, ds.y_test, resume_path=resume, resume_every_s=resume_every_s,
                 resume_params=params, progress=progress)
    _write_run(output, result, params, "train")
    resume.unlink(missing_ok=True)


KERNEL_SHAPES = {"K_train_train": ("n_train", "n_train"), "K_test_train": ("n_test", "n_train"),
                 "K_test_test": ("n_test", "n_test")}


def ntk(inputs: dict, output: Path, params: dict, device: str = "cpu", progress: str | None = None, **_) -> None:
    """Empirical NTK blocks at initialisation (inputs: dataset, init) or at the end of
    training (also ``run``, whose ``w_final`` is used)."""
    dev = resolve_device(device)
    init_params = params["init"]
    dtype = DTYPES[init_params["dtype"]]
    ds = _load_dataset(inputs["dataset"], init_params["dataset"], dev, dtype)
    model, w = _load_init(inputs["init"], init_params, dev, dtype)
    if params.get("run") is not None:
        r = h5io.read(inputs["run"], {"w_final": (model.numel,)}, step="train", expect_params=params["run"])
        w = torch.from_numpy(r["w_final"]).to(dev, dtype)
    blocks = kernels.empirical_ntk_blocks(FC.from_flat(model.spec, w), ds.x_train, ds.x_test, progress=progress)
    h5io.write(output, dict(zip(KERNEL_SHAPES, blocks)), step="ntk", params=params,
               seed=init_params["seed"], code_sha256=code_hash("ntk"))


def kernel_train(inputs: dict, output: Path, params: dict, device: str = "cpu", progress: str | None = None,
                 **_) -> None:
    """Frozen-kernel (linearized) flow with the NTK at initialisation."""
    dev = resolve_device(device)
    ntk_params = params["ntk"]
    dtype = DTYPES[ntk_params["init"]["dtype"]]
    ds = _load_dataset(inputs["dataset"], ntk_params["init"]["dataset"], dev, dtype)
    k = h5io.read(inputs["ntk"], KERNEL_SHAPES, step="ntk", expect_params=ntk_params)
    if k["K_train_train"].shape[0] != len(ds.y_train) or k["K_test_train"].shape[0] != len(ds.y_test):
        raise h5io.H5Error(f"{inputs['ntk']}: kernel sizes do not match the data set {inputs['dataset']}")
    K = torch.from_numpy(k["K_train_train"]).to(dev, dtype)
    Kt = torch.from_numpy(k["K_test_train"]).to(dev, dtype)
    cfg = _flow_config(params)
    result = run(KernelProblem(K, Kt, ds.y_train, cfg), cfg, ds.y_test, progress=progress)
    _write_run(output, result, params, "kernel_train")


STEPS = {
    "dataset": (dataset, (), "generate a data set"),
    "init": (init, ("dataset",), "initialise a network"),
    "train": (train, ("dataset", "init"), "train F = alpha (f - f0) by gradient flow to the margin"),
    "ntk": (ntk, ("dataset", "init"), "empirical NTK blocks (optional input run: at the end of training)"),
    "kernel_train": (kernel_train, ("dataset", "ntk"), "frozen-kernel flow with the NTK at init"),
}
