"""File-level steps: read HDF5 inputs, call the library, write one HDF5 output.

Each step takes ``inputs`` (name -> path), one ``output`` path and a ``params`` dict
that is written verbatim into the output's provenance. Params nest: a step's params
hold the params of the files it reads (``train`` holds ``init`` which holds
``dataset``), and every input is checked against them (``params_sha256``), so an
intermediate produced by other parameters is refused instead of silently used.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
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
          **_) -> None:
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
                 resume_params=params, label=f"train {Path(output).stem}")
    _write_run(output, result, params, "train")
    resume.unlink(missing_ok=True)


KERNEL_SHAPES = {"K_train_train": ("n_train", "n_train"), "K_test_train": ("n_test", "n_train"),
                 "K_test_test": ("n_test", "n_test")}


def ntk(inputs: dict, output: Path, params: dict, device: str = "cpu", **_) -> None:
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
    blocks = kernels.ntk_blocks(model, w, ds.x_train, ds.x_test)
    h5io.write(output, dict(zip(KERNEL_SHAPES, blocks)), step="ntk", params=params,
               seed=init_params["seed"], code_sha256=code_hash("ntk"))


def kernel_train(inputs: dict, output: Path, params: dict, device: str = "cpu", **_) -> None:
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
    result = run(KernelProblem(K, Kt, ds.y_train, cfg), cfg, ds.y_test, label=f"kernel {Path(output).stem}")
    _write_run(output, result, params, "kernel_train")


STEPS = {
    "dataset": (dataset, (), "generate a data set"),
    "init": (init, ("dataset",), "initialise a network"),
    "train": (train, ("dataset", "init"), "train F = alpha (f - f0) by gradient flow to the margin"),
    "ntk": (ntk, ("dataset", "init"), "empirical NTK blocks (optional input run: at the end of training)"),
    "kernel_train": (kernel_train, ("dataset", "ntk"), "frozen-kernel flow with the NTK at init"),
}


# ---------------------------------------------------------------- double descent (issue 5)
# Linear teacher, GD on linear models / two-layer linear networks (memgen.linear) and
# their theory (memgen.theory); params built by memgen.experiments.double_descent.


def _one_blas_thread():
    """Small batched LAPACK/BLAS calls run fastest (and do not fight over shared cores)
    with one BLAS thread."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


def _dd_problem(d: dict):
    from memgen import linear

    return linear.two_group_teacher(d["d_fast"], d["d_slow"], d["kappa"], d["theta_fast"], d["theta_slow"])


def dd_linear(inputs: dict, output: Path, params: dict, device: str = "cpu", **_) -> None:
    """Linear GD on ``draws`` independent data sets of the two-group teacher; population
    risk and per-group relative weight errors at the logged steps."""
    from memgen import linear

    d = params["data"]
    s, theta = _dd_problem(d)
    steps = linear.logged_steps(params["steps"], params["n_logged"])
    lr = params["lr"] if params["schedule"] == "uniform" else linear.per_group_step_sizes(s, params["rate"])
    with _one_blas_thread():
        X, y = linear.linear_teacher(d["n"], len(s), s, theta, d["noise_std"], seed=params["seed"],
                                     decoupled=d["decoupled"], batch=params["draws"])
        W = linear.linear_gd(X, y, params["steps"], lr, record=steps)  # (K, draws, d)
    arrays = {"step": steps, "risk": linear.population_risk(W, s, theta, d["noise_std"]),
              "werr": linear.group_weight_error(W, theta, (d["d_fast"], d["d_slow"])),
              "s": s, "theta": theta, "lr": torch.as_tensor(lr, dtype=torch.float64).expand(len(s))}
    h5io.write(output, arrays, step="dd_linear", params=params, seed=params["seed"],
               code_sha256=code_hash("dd_linear"))


def dd_theory_linear(inputs: dict, output: Path, params: dict, device: str = "cpu", **_) -> None:
    """Closed-form risk, per-group risk contributions and per-group relative weight errors
    of linear GD with one step size and with per-group step sizes."""
    from memgen import linear, theory

    d = params["data"]
    s, theta = _dd_problem(d)
    d1 = d["d_fast"]
    steps = linear.logged_steps(params["steps"], params["n_logged"])
    s2, th2 = (s**2).numpy(), (theta**2).numpy()
    arrays = {"step": steps, "noise_var": np.float64(d["noise_std"] ** 2)}
    for sched, lr in (("uniform", params["lr"]), ("per_group", linear.per_group_step_sizes(s, params["rate"]))):
        args = (steps, s, theta, d["noise_std"], d["n"], lr)
        E = theory.linear_gd_weight_error(*args)  # (K, d)
        arrays[f"risk_{sched}"] = theory.linear_gd_risk(*args)
        arrays[f"risk_fast_{sched}"] = (s2[:d1] * E[:, :d1]).sum(-1)
        arrays[f"risk_slow_{sched}"] = (s2[d1:] * E[:, d1:]).sum(-1)
        rel = E / th2
        arrays[f"werr_{sched}"] = np.stack([rel[:, :d1].mean(-1), rel[:, d1:].mean(-1)], axis=-1)
    h5io.write(output, arrays, step="dd_theory_linear", params=params, code_sha256=code_hash("dd_theory_linear"))


def dd_two_layer(inputs: dict, output: Path, params: dict, device: str = "cpu", **_) -> None:
    """GD on the two-layer linear network f(x) = v^T W x (one data draw): risk, loss,
    end-to-end weights and per-group weight errors at the logged steps; the data, both
    layers at init and at the end, and the Jacobian spectrum at init and at the end."""
    from memgen import linear

    d = params["data"]
    s, theta = _dd_problem(d)
    with _one_blas_thread():
        X, y = linear.linear_teacher(d["n"], len(s), s, theta, d["noise_std"], seed=params["data_seed"],
                                     decoupled=d["decoupled"])
        run = linear.train_two_layer(X, y, s, theta, d["noise_std"], params["steps"], params["lr"],
                                     p=params["hidden"], init=params["init"], scale=params["scale"],
                                     seed=params["init_seed"])
        k = torch.from_numpy(linear.logged_steps(params["steps"], params["n_logged"]))
        sv0, share0 = linear.jacobian_spectrum(X, run.W0, run.v0)
        sv1, share1 = linear.jacobian_spectrum(X, run.W, run.v)
    w = run.w[k]
    arrays = {"step": k, "risk": run.risk[k], "loss": run.loss[k], "w": w,
              "werr": linear.group_weight_error(w, theta, (d["d_fast"], d["d_slow"])),
              "X": X, "y": y, "W0": run.W0, "v0": run.v0, "W": run.W, "v": run.v, "s": s, "theta": theta,
              "jac_sv_init": sv0, "jac_share_init": share0, "jac_sv_final": sv1, "jac_share_final": share1}
    h5io.write(output, arrays, step="dd_two_layer", params=params, seed=params["init_seed"],
               code_sha256=code_hash("dd_two_layer"), attrs={"diverged": bool(not torch.isfinite(run.risk).all())})


def dd_theory_two_layer(inputs: dict, output: Path, params: dict, device: str = "cpu", **_) -> None:
    """The reduced (u, z) ODE (started on the network's growing mode for a Gaussian init,
    on its exact rank-one state otherwise) and the linearised (lazy) network, for the
    training set and initial layers of a ``dd_two_layer`` run."""
    from memgen import linear, theory

    rp = params["run"]
    r = h5io.read(inputs["run"], {"step": ("K",), "X": ("n", "d"), "y": ("n",), "W0": ("p", "d"), "v0": ("p",)},
                  step="dd_two_layer", expect_params=rp)
    d = rp["data"]
    s, theta = _dd_problem(d)
    X, y, steps = r["X"], r["y"], r["step"].astype(np.float64)
    n = X.shape[0]
    A, b = X.T @ X / n, X.T @ y / n
    if rp["init"] == "gaussian":
        u0, z0 = theory.growing_mode_state(r["W0"], r["v0"], b)
    else:
        u0, z0 = theory.rank_one_state(r["W0"], r["v0"])
    with _one_blas_thread():
        u, z = theory.two_layer_ode(steps, A, b, u0, z0, rp["lr"])
        w_lazy = theory.lazy_two_layer(steps, A, b, r["W0"], r["v0"], rp["lr"])
    sizes = (d["d_fast"], d["d_slow"])
    arrays = {"step": r["step"]}
    for name, w in (("ode", u[:, None] * z), ("lazy", w_lazy)):
        arrays[f"risk_{name}"] = linear.population_risk(w, s, theta, d["noise_std"])
        arrays[f"werr_{name}"] = linear.group_weight_error(w, theta, sizes)
        arrays[f"w_{name}"] = w
    h5io.write(output, arrays, step="dd_theory_two_layer", params=params,
               code_sha256=code_hash("dd_theory_two_layer"))


def dd_modelwise(inputs: dict, output: Path, params: dict, device: str = "cpu", **_) -> None:
    """Model-wise double descent, empirically: isotropic Gaussian features x in R^p,
    y = x.theta + eps, ||theta||^2 = snr sigma^2, n = round(ratio p) samples, ``draws``
    data sets per ratio (shared across SNRs). Test risk ||theta_hat - theta||^2 + sigma^2 of
    min-norm least squares and of gradient flow from 0 on 1/(2n)||Xw - y||^2 stopped at
    the time (on a log grid) minimising the risk averaged over draws (oracle early stopping)."""
    p, sigma, draws = int(params["p"]), float(params["noise_std"]), int(params["draws"])
    ratios, snrs = params["ratios"], params["snrs"]
    rng = np.random.default_rng(int(params["seed"]))
    u = rng.standard_normal(p)
    u /= np.linalg.norm(u)
    times = np.r_[0.0, np.geomspace(params["t_min"], params["t_max"], int(params["n_times"]))]
    S, R = len(snrs), len(ratios)
    mn, es = np.empty((S, R, draws)), np.empty((S, R, draws))
    t_stop, ratio_used = np.empty((S, R)), np.empty(R)
    with _one_blas_thread():
        for j, ratio in enumerate(ratios):
            n = int(round(float(ratio) * p))
            ratio_used[j] = n / p
            X = rng.standard_normal((draws, n, p))
            eps = sigma * rng.standard_normal((draws, n))
            Xt = np.swapaxes(X, 1, 2)
            lam, V = np.linalg.eigh(Xt @ X / n)  # (draws, p), (draws, p, p)
            lam = np.clip(lam, 0.0, None)
            pos = lam > 1e-10 * lam.max(-1, keepdims=True)
            for i, snr in enumerate(snrs):
                theta = np.sqrt(float(snr)) * sigma * u
                y = X @ theta + eps
                bv = np.einsum("bji,bj->bi", V, np.einsum("bji,bj->bi", X, y) / n)  # V^T X^T y / n
                c = np.einsum("bji,j->bi", V, theta)  # V^T theta
                safe = np.where(pos, lam, 1.0)
                # min-norm least squares: coefficient bv / lam on the row space, 0 elsewhere
                mn[i, j] = (((np.where(pos, bv / safe, 0.0)) - c) ** 2).sum(-1) + sigma**2
                # gradient flow from 0: coefficient (1 - exp(-lam t)) / lam * bv
                g = np.where(pos[:, None, :], -np.expm1(-lam[:, None, :] * times[None, :, None]) / safe[:, None, :],
                             times[None, :, None])
                curve = ((g * bv[:, None, :] - c[:, None, :]) ** 2).sum(-1) + sigma**2  # (draws, T)
                best = int(np.argmin(curve.mean(0)))
                es[i, j], t_stop[i, j] = curve[:, best], times[best]
    h5io.write(output, {"ratio": ratio_used, "snr": np.asarray(snrs, dtype=np.float64), "risk_min_norm": mn,
                        "risk_early_stopped": es, "t_stop": t_stop, "times": times},
               step="dd_modelwise", params=params, seed=params["seed"], code_sha256=code_hash("dd_modelwise"))


def dd_theory_modelwise(inputs: dict, output: Path, params: dict, device: str = "cpu", **_) -> None:
    """Model-wise theory: exact finite-p min-norm risk at every integer n with
    n/p in [ratio_min, ratio_max] (inf at |n - p| <= 1), and on a grid of n_grid ratios the
    proportional-limit min-norm and optimally early-stopped gradient-flow risks."""
    from memgen import theory

    p, sigma = int(params["p"]), float(params["noise_std"])
    ns = np.arange(max(1, int(np.floor(params["ratio_min"] * p))), int(np.ceil(params["ratio_max"] * p)) + 1)
    ratio = ns / p
    ratio_asym = np.linspace(params["ratio_min"], params["ratio_max"], int(params["n_grid"]))
    snrs = np.asarray(params["snrs"], dtype=np.float64)
    mn = np.stack([theory.modelwise_risk(ratio, snr, sigma, p=p) for snr in snrs])
    mn_asym = np.stack([theory.modelwise_risk(ratio_asym, snr, sigma) for snr in snrs])
    es, ts = zip(*(theory.early_stopped_modelwise_risk(ratio_asym, snr, sigma, quad=params["quad"], return_times=True)
                   for snr in snrs))
    h5io.write(output, {"snr": snrs, "ratio": ratio, "risk_min_norm": mn, "ratio_asym": ratio_asym,
                        "risk_min_norm_asym": mn_asym, "risk_early_stopped": np.stack(es), "t_stop": np.stack(ts)},
               step="dd_theory_modelwise", params=params, code_sha256=code_hash("dd_theory_modelwise"))


STEPS.update({
    "dd_linear": (dd_linear, (), "double descent: linear GD over many data draws (one step-size schedule)"),
    "dd_theory_linear": (dd_theory_linear, (), "double descent: closed-form risk of linear GD"),
    "dd_two_layer": (dd_two_layer, (), "double descent: GD on a two-layer linear network"),
    "dd_theory_two_layer": (dd_theory_two_layer, ("run",), "double descent: reduced ODE and lazy network"),
    "dd_modelwise": (dd_modelwise, (), "double descent: min-norm and early-stopped risk vs n/p"),
    "dd_theory_modelwise": (dd_theory_modelwise, (), "double descent: model-wise theory curves"),
})


# ---------------------------------------------------------------- kernels family (issue 3)


def _gd_mse(model: FlatFC, w: torch.Tensor, x: torch.Tensor, y: torch.Tensor, lr: float, steps: int,
            record=(), on_record=None):
    """Discrete GD on (1/2n) sum (f(x) - y)^2 from ``w``; ``on_record(step, w, f)`` at the
    steps in ``record``. Returns (w, f, diverged)."""
    n = len(y)
    record = set(int(r) for r in record)
    f = None
    for k in range(steps + 1):
        f, cache = model.forward(w, x)
        if not torch.isfinite(f).all():
            return w, f, True
        if k in record and on_record is not None:
            on_record(k, w, f)
        if k == steps:
            break
        w = w - lr * model.vjp(cache, (f - y) / n)
    return w, f, False


def _kernels_data(inputs, params, dtype, n_train=None):
    ds = _load_dataset(inputs["dataset"], params["dataset"], "cpu", dtype)
    n = len(ds.y_train) if n_train is None else n_train
    if n > len(ds.y_train):
        raise MemgenError(f"{inputs['dataset']}: has {len(ds.y_train)} training points, step needs {n}")
    return ds.x_train[:n], ds.y_train[:n], ds.x_test, ds.y_test


def _accuracy(pred: torch.Tensor, y: torch.Tensor) -> float:
    return float((torch.sign(pred) == y).to(torch.float64).mean()) if torch.isfinite(pred).all() else float("nan")


def kernel_accuracy(inputs: dict, output: Path, params: dict, device: str = "cpu", **_) -> None:
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
    w, _, diverged = _gd_mse(flat, net.flat_parameters(), x, y, params["train"]["lr"], params["train"]["steps"])
    with torch.no_grad():
        acc["trained"] = float("nan") if diverged else _accuracy(flat.forward(w, xt, keep=False)[0], yt)
    h5io.write(output, {f"acc_{k}": np.float64(v) for k, v in acc.items()}, step="kernel_accuracy",
               params=params, seed=params["seed"], code_sha256=code_hash("kernel_accuracy"),
               attrs={"diverged": diverged})


def ntk_convergence(inputs: dict, output: Path, params: dict, device: str = "cpu", **_) -> None:
    """Relative Frobenius error of the empirical NTK and NNGP (last hidden features,
    a.a'/h) of seeded FCs against the infinite-width kernels, on ``n_points`` points."""
    dev = resolve_device(device)
    dtype = DTYPES[params["dtype"]]
    x = _kernels_data(inputs, params, dtype, params["n_points"])[0].to(dev)
    nngp_inf, ntk_inf = kernels.analytic_kernels(x, None, params["model"]["L"])
    ntk_err, nngp_err = [], []
    for seed in params["seeds"]:
        net = FC(seed=seed, dtype=dtype, **params["model"]).to(dev)
        ntk_err.append(kernels.relative_change(ntk_inf, kernels.empirical_ntk(net, x)))
        a = kernels.last_hidden_features(net, x)
        nngp_err.append(kernels.relative_change(nngp_inf, a @ a.t()))
    h5io.write(output, {"ntk_rel_err": np.array(ntk_err), "nngp_rel_err": np.array(nngp_err),
                        "seeds": np.array(params["seeds"], dtype=np.int64)}, step="ntk_convergence",
               params=params, seed=params["seeds"][0], code_sha256=code_hash("ntk_convergence"))


def linearized_training(inputs: dict, output: Path, params: dict, device: str = "cpu", **_) -> None:
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
    Ktt, Kst, _ = kernels.ntk_blocks(flat, w0, x, xt)
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
        _, _, diverged = _gd_mse(flat, w0, x, y, lr, steps, record, on_record)
    m = len(rows["loss_train"])
    arrays = {k: np.array(v) for k, v in rows.items()}
    arrays.update({"step": record[:m], "t": record[:m] * lr,
                   "lin_loss_train": (((Ftr[:m] - y) ** 2).mean(1) / 2),
                   "lin_loss_test": (((Fte[:m] - yt) ** 2).mean(1) / 2)})
    h5io.write(output, arrays, step="linearized_training", params=params, seed=params["seed"],
               code_sha256=code_hash("linearized_training"), attrs={"diverged": diverged})


STEPS.update({
    "kernel_accuracy": (kernel_accuracy, ("dataset",), "test accuracy of NTK/NNGP regression and the trained FC"),
    "ntk_convergence": (ntk_convergence, ("dataset",), "empirical vs infinite-width NTK/NNGP error at one width"),
    "linearized_training": (linearized_training, ("dataset",), "GD of an FC vs its linearization (seed 001)"),
})


# ---------------------------------------------------------------- curvature (issue 4)
# Inverse Hessian-vector products and influence functions (Koh & Liang 2017; seed 003).
# Library: memgen.curvature. Params are built by memgen.experiments.curvature.

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


def curvature_toy(inputs: dict, output: Path, params: dict, device: str = "cpu", **_) -> None:
    """The seed's toy: L(w) = (y - w1 w2 x)^2 on one point, at w, right-hand side v.
    Exact / CG / LiSSA solutions of (H + damping I) x = v for every damping; LiSSA
    iterate paths for every scale (damping 0) and every damping (at ``damping_scale``).
    A scale the guard rejects is recorded as diverged (its message in the attribute
    ``messages``) with the unguarded iterates until they leave |x| <= ``bound``."""
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
    h5io.write(output, arrays, step="curvature_toy", params=params, code_sha256=code_hash("curvature_toy"),
               attrs={"methods": json.dumps(list(opts)), "scale_messages": json.dumps(sm),
                      "damping_messages": json.dumps(dm), "lambda_max": float(lam[-1])})


def curvature_digits(inputs: dict, output: Path, params: dict, device: str = "cpu", **_) -> None:
    """scikit-learn's 8x8 digits, two classes (``classes[0]`` -> label 0, ``classes[1]`` -> 1),
    pixels / 16 in [0, 1]; a seeded permutation gives ``n_train`` training and ``n_test``
    test points (0 = all the rest). ``index_*``: rows of sklearn's data set."""
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
    h5io.write(output, {"x_train": xtr, "y_train": ytr, "x_test": xte, "y_test": yte, "index_train": tr,
                        "index_test": te}, step="curvature_digits", params=params, seed=params["seed"],
               code_sha256=code_hash("curvature_digits"))


CV_DIGITS_SHAPES = {"x_train": ("n_train", "d"), "y_train": ("n_train",), "x_test": ("n_test", "d"),
                    "y_test": ("n_test",)}


def _cv_load(inputs: dict, train_params: dict, with_model: bool = True):
    """(x_train, y_train, x_test, y_test) as float64 tensors, and the trained model."""
    ds = h5io.read(inputs["dataset"], CV_DIGITS_SHAPES, step="curvature_digits", expect_params=train_params["dataset"])
    t = {k: torch.from_numpy(np.asarray(a, dtype=np.float64)) for k, a in ds.arrays.items()}
    data = (t["x_train"], t["y_train"], t["x_test"], t["y_test"])
    if not with_model:
        return data, None
    model = _cv_model(train_params["model"], data[0].shape[1])
    from memgen import curvature as cv

    r = h5io.read(inputs["train"], {"w": (cv.flat_params(model).numel(),)}, step="curvature_train",
                  expect_params=train_params)
    cv.set_flat_params(model, torch.from_numpy(r["w"]))
    return data, model


def curvature_train(inputs: dict, output: Path, params: dict, device: str = "cpu", **_) -> None:
    """Train a classifier to the optimum of mean logistic loss + (l2/2)||w||^2 (full batch,
    Newton-CG or L-BFGS, float64); store w and every point's loss."""
    from memgen import curvature as cv

    (xtr, ytr, xte, yte), _ = _cv_load(inputs, params, with_model=False)
    model = _cv_model(params["model"], xtr.shape[1])
    info = cv.fit(model, _cv_bce, xtr, ytr, l2=params["l2"], **params["fit"])
    with torch.no_grad():
        out_tr, out_te = model(xtr).squeeze(-1), model(xte).squeeze(-1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits
        arrays = {"w": cv.flat_params(model), "train_logits": out_tr, "test_logits": out_te,
                  "train_losses": loss(out_tr, ytr, reduction="none"), "test_losses": loss(out_te, yte, reduction="none")}
    acc = lambda o, y: float(((o > 0).double() == y).double().mean())  # noqa: E731
    h5io.write(output, arrays, step="curvature_train", params=params, seed=params["model"]["seed"],
               code_sha256=code_hash("curvature_train"),
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


def curvature_influence(inputs: dict, output: Path, params: dict, device: str = "cpu", **_) -> None:
    """Predicted change of one test point's loss on removing each training point,
    (1/n) g_test^T (H + damping I)^{-1} g_i (memgen.curvature.influence_on_test_loss, CG),
    and the training points to check by retraining: the ``n_top`` largest |prediction|
    and ``n_random`` others drawn with ``seed``."""
    from memgen import curvature as cv

    tp = params["train"]
    (xtr, ytr, xte, yte), model = _cv_load(inputs, tp)
    r = h5io.read(inputs["train"], {"test_losses": (None,)}, step="curvature_train", expect_params=tp)
    ti = _cv_test_index(params, r["test_losses"])
    inf = cv.influence_on_test_loss(model, _cv_bce, xtr, ytr, xte[ti:ti + 1], yte[ti:ti + 1], damping=params["damping"],
                                    method="cg", l2=tp["l2"], cache_graph=True, vectorized=False, tol=params["cg_tol"])
    pred = inf.removal_change.numpy()
    n = len(pred)
    sel = params["select"]
    top = np.argsort(-np.abs(pred), kind="stable")[:min(sel["n_top"], n)]
    rest = np.setdiff1d(np.arange(n), top)
    rnd = np.sort(np.random.default_rng(sel["seed"]).choice(rest, min(sel["n_random"], len(rest)), replace=False))
    selected = np.concatenate([top, rnd]).astype(np.int64)
    h5io.write(output, {"predicted": pred, "up_loss": inf.up_loss, "s_test": inf.s_test, "test_grad": inf.test_grad,
                        "selected": selected, "selected_top": np.r_[np.ones(len(top)), np.zeros(len(rnd))].astype(bool),
                        "cg_residual_history": np.asarray(inf.info["residual_history"])},
               step="curvature_influence", params=params, seed=sel["seed"], code_sha256=code_hash("curvature_influence"),
               attrs={"test_index": ti, "test_loss": float(r["test_losses"][ti]), "test_label": float(yte[ti]),
                      "cg_iterations": inf.info["iterations"], "cg_residual": inf.info["residual"],
                      "cg_true_residual": inf.info["true_residual"]})


CV_INFLUENCE_SHAPES = {"predicted": ("n_train",), "selected": ("k",), "selected_top": ("k",)}


def curvature_loo(inputs: dict, output: Path, params: dict, device: str = "cpu", **_) -> None:
    """Actual change of the test loss on removing each selected training point: retrain
    on the other n - 1 points (warm start at the trained w, memgen.curvature.leave_one_out)."""
    from memgen import curvature as cv

    ip = params["influence"]
    tp = ip["train"]
    (xtr, ytr, xte, yte), model = _cv_load(inputs, tp)
    inf = h5io.read(inputs["influence"], CV_INFLUENCE_SHAPES, step="curvature_influence", expect_params=ip)
    ti = int(inf.attrs["test_index"])
    sel = inf["selected"]
    actual, grad_norms, iters = [], [], []
    for k, i in enumerate(sel):
        a, infos = cv.leave_one_out(model, _cv_bce, xtr, ytr, xte[ti:ti + 1], yte[ti:ti + 1], [int(i)], l2=tp["l2"],
                                    **params["fit"])
        actual.append(float(a[0]))
        grad_norms.append(infos[0]["grad_norm"])
        iters.append(infos[0]["iterations"])
        print(f"loo {Path(output).stem}: {k + 1}/{len(sel)} point {int(i)} actual {actual[-1]:.4g} "
              f"predicted {float(inf['predicted'][i]):.4g} grad {grad_norms[-1]:.2g}", flush=True)
    h5io.write(output, {"selected": sel, "actual": np.asarray(actual), "predicted": inf["predicted"][sel],
                        "selected_top": inf["selected_top"], "grad_norm": np.asarray(grad_norms),
                        "iterations": np.asarray(iters)},
               step="curvature_loo", params=params, code_sha256=code_hash("curvature_loo"),
               attrs={"test_index": ti, "max_grad_norm": float(max(grad_norms, default=0.0))})


def curvature_solvers(inputs: dict, output: Path, params: dict, device: str = "cpu", **_) -> None:
    """Accuracy vs number of HVPs of CG and LiSSA on (H + damping I) x = g_test, the
    influence system: relative error against a dense solve after every CG iteration and
    every ``record_every`` LiSSA steps (full batch at scale ``scale_factor`` (lambda_max +
    damping); mini-batch Hessians of ``batch_size`` points, counted as batch_size / n of
    a full HVP). The power iteration that sets the LiSSA scale is counted too."""
    import json

    from memgen import curvature as cv

    ip = params["influence"]
    tp = ip["train"]
    (xtr, ytr, xte, yte), model = _cv_load(inputs, tp)
    inf = h5io.read(inputs["influence"], {"test_grad": (None,)}, step="curvature_influence", expect_params=ip)
    v = torch.from_numpy(inf["test_grad"])
    l2, damping, n = tp["l2"], ip["damping"], len(ytr)
    data_hvp = cv.make_module_hvp(model, _cv_bce, [(xtr, ytr)], cache_graph=True)
    hvp_fn = lambda u: data_hvp(u) + l2 * u  # noqa: E731  (Hessian of the regularized objective)
    ref, _ = cv.inverse_hvp(hvp_fn, v, method="exact", damping=damping)
    err = lambda x: float((x - ref).norm() / ref.norm())  # noqa: E731
    rows = {"method": [], "hvps": [], "rel_error": []}

    def add(method, hvps, e):
        rows["method"].append(method)
        rows["hvps"].append(float(hvps))
        rows["rel_error"].append(e)

    add("cg", 0, 1.0)
    _, cg_info = cv.inverse_hvp(hvp_fn, v, method="cg", damping=damping, tol=params["cg_tol"],
                                callback=lambda k, x: add("cg", k, err(x)))
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
                                 record_every=int(lp["record_every"]), seed=int(lp["seed"]))
        for j, xj in zip(info["path_steps"], info["path"][0]):
            add(name, pinfo["hvps"] + cost * j, err(xj))
    methods = sorted(set(rows["method"]))
    code = np.array([methods.index(m) for m in rows["method"]])
    h5io.write(output, {"method_code": code, "hvps": np.asarray(rows["hvps"]), "rel_error": np.asarray(rows["rel_error"]),
                        "reference": ref},
               step="curvature_solvers", params=params, code_sha256=code_hash("curvature_solvers"),
               attrs={"methods": json.dumps(methods), "lambda_max": float(lam), "cg_iterations": cg_info["iterations"],
                      "cg_true_residual": cg_info["true_residual"], "P": int(v.numel())})


STEPS.update({
    "curvature_toy": (curvature_toy, (), "curvature: the seed's toy, exact/CG/LiSSA and LiSSA paths"),
    "curvature_digits": (curvature_digits, (), "curvature: two classes of sklearn digits in [0, 1]"),
    "curvature_train": (curvature_train, ("dataset",), "curvature: train logistic regression / MLP to the optimum"),
    "curvature_influence": (curvature_influence, ("dataset", "train"), "curvature: influence of every training point"),
    "curvature_loo": (curvature_loo, ("dataset", "train", "influence"), "curvature: leave-one-out retraining"),
    "curvature_solvers": (curvature_solvers, ("dataset", "train", "influence"), "curvature: CG vs LiSSA accuracy"),
})
