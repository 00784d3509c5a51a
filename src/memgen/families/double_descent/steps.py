"""Run functions of the double-descent family: linear GD and the two-layer linear
network (memgen.linear), the model-wise study (memgen.modelwise) and their theory
(memgen.theory)."""

from __future__ import annotations

import numpy as np
import torch



def _one_blas_thread():
    """Small batched LAPACK/BLAS calls run fastest (and do not fight over shared cores)
    with one BLAS thread."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


def _dd_problem(d: dict):
    from memgen import linear

    return linear.two_group_teacher(d["d_fast"], d["d_slow"], d["kappa"], d["theta_fast"], d["theta_slow"])


def linear(job) -> None:
    """Linear GD on ``draws`` independent data sets of the two-group teacher; population
    risk and per-group relative weight errors at the logged steps."""
    params, progress = job.params, job.progress
    from memgen import linear

    d = params["data"]
    s, theta = _dd_problem(d)
    steps = linear.logged_steps(params["steps"], params["n_logged"])
    lr = params["lr"] if params["schedule"] == "uniform" else linear.per_group_step_sizes(s, params["rate"])
    with _one_blas_thread():
        X, y = linear.linear_teacher(d["n"], len(s), s, theta, d["noise_std"], seed=params["seed"],
                                     decoupled=d["decoupled"], batch=params["draws"])
        W = linear.linear_gd(X, y, params["steps"], lr, record=steps,
                             progress=progress)  # (K, draws, d)
    arrays = {"step": steps, "risk": linear.population_risk(W, s, theta, d["noise_std"]),
              "werr": linear.group_weight_error(W, theta, (d["d_fast"], d["d_slow"])),
              "s": s, "theta": theta, "lr": torch.as_tensor(lr, dtype=torch.float64).expand(len(s))}
    job.write(arrays, seed=params["seed"])


def theory_linear(job) -> None:
    """Closed-form risk, per-group risk contributions and per-group relative weight errors
    of linear GD with one step size and with per-group step sizes
    (memgen.theory.linear_gd_group_curves)."""
    params = job.params
    from memgen import linear, theory

    d = params["data"]
    s, theta = _dd_problem(d)
    steps = linear.logged_steps(params["steps"], params["n_logged"])
    arrays = {"step": steps, "noise_var": np.float64(d["noise_std"] ** 2)}
    for sched, lr in (("uniform", params["lr"]), ("per_group", linear.per_group_step_sizes(s, params["rate"]))):
        risk, groups, werr = theory.linear_gd_group_curves(steps, s, theta, d["noise_std"], d["n"], lr,
                                                           (d["d_fast"], d["d_slow"]))
        arrays.update({f"risk_{sched}": risk, f"risk_fast_{sched}": groups[:, 0], f"risk_slow_{sched}": groups[:, 1],
                       f"werr_{sched}": werr})
    job.write(arrays)


def two_layer(job) -> None:
    """GD on the two-layer linear network f(x) = v^T W x (one data draw): risk, loss,
    end-to-end weights and per-group weight errors at the logged steps; the data, both
    layers at init and at the end, and the Jacobian spectrum at init and at the end."""
    params, progress = job.params, job.progress
    from memgen import linear

    d = params["data"]
    s, theta = _dd_problem(d)
    with _one_blas_thread():
        X, y = linear.linear_teacher(d["n"], len(s), s, theta, d["noise_std"], seed=params["data_seed"],
                                     decoupled=d["decoupled"])
        with job.resume_point() as resume:  # GD state (W, v) every resources.resume_every_s
            run = linear.train_two_layer(X, y, s, theta, d["noise_std"], params["steps"], params["lr"],
                                         p=params["hidden"], init=params["init"], scale=params["scale"],
                                         seed=params["init_seed"], progress=progress, resume=resume)
        sv0, share0, sv1, share1, diverged = linear.jacobian_spectra(X, run)  # NaN after a divergence
    k = torch.from_numpy(linear.logged_steps(params["steps"], params["n_logged"]))
    w = run.w[k]
    arrays = {"step": k, "risk": run.risk[k], "loss": run.loss[k], "w": w,
              "werr": linear.group_weight_error(w, theta, (d["d_fast"], d["d_slow"])),
              "X": X, "y": y, "W0": run.W0, "v0": run.v0, "W": run.W, "v": run.v, "s": s, "theta": theta,
              "jac_sv_init": sv0, "jac_share_init": share0, "jac_sv_final": sv1, "jac_share_final": share1}
    job.write(arrays, seed=params["init_seed"], attrs={"diverged": bool(diverged)})
    resume.done()


def theory_two_layer(job) -> None:
    """The reduced (u, z) ODE (started on the network's growing mode for a Gaussian init,
    on its exact rank-one state otherwise) and the linearised (lazy) network, for the
    training set and initial layers of a ``dd_two_layer`` run."""
    from memgen import linear, theory

    rp = job.params["run"]
    r = job.read("run", ("step", "X", "y", "W0", "v0"))
    d = rp["data"]
    s, theta = _dd_problem(d)
    with _one_blas_thread():
        w_ode, w_lazy = theory.two_layer_theory(r["step"].astype(np.float64), r["X"], r["y"], r["W0"], r["v0"],
                                                rp["lr"], rp["init"])
    sizes = (d["d_fast"], d["d_slow"])
    arrays = {"step": r["step"]}
    for name, w in (("ode", w_ode), ("lazy", w_lazy)):
        arrays[f"risk_{name}"] = linear.population_risk(w, s, theta, d["noise_std"])
        arrays[f"werr_{name}"] = linear.group_weight_error(w, theta, sizes)
        arrays[f"w_{name}"] = w
    job.write(arrays)


def modelwise(job) -> None:
    """Model-wise double descent, empirically (memgen.modelwise.simulate): isotropic
    Gaussian features x in R^p, y = x.theta + eps, ||theta||^2 = snr sigma^2,
    n = round(ratio p) samples, ``draws`` data sets per ratio (shared across SNRs). Test
    risk ||theta_hat - theta||^2 + sigma^2 of min-norm least squares and of gradient flow
    from 0 on 1/(2n)||Xw - y||^2 stopped at the time (on a log grid) minimising the risk
    averaged over draws (oracle early stopping)."""
    params, progress = job.params, job.progress
    from memgen import modelwise

    times = modelwise.time_grid(params["t_min"], params["t_max"], params["n_times"])
    with _one_blas_thread():
        sim = modelwise.simulate(params["p"], params["ratios"], params["snrs"], params["noise_std"], params["draws"],
                                 params["seed"], times, progress=progress)
    job.write({"ratio": sim.ratio, "snr": np.asarray(params["snrs"], dtype=np.float64),
               "risk_min_norm": sim.risk_min_norm, "risk_early_stopped": sim.risk_early_stopped,
               "t_stop": sim.t_stop, "times": sim.times}, seed=params["seed"])


def theory_modelwise(job) -> None:
    """Model-wise theory (memgen.modelwise.theory_curves): exact finite-p min-norm risk at
    every integer n with n/p in [ratio_min, ratio_max] (inf at |n - p| <= 1), and on a
    grid of n_grid ratios the proportional-limit min-norm and optimally early-stopped
    gradient-flow risks."""
    params = job.params
    from memgen import modelwise

    c = modelwise.theory_curves(params["p"], params["snrs"], params["noise_std"], params["ratio_min"],
                                params["ratio_max"], params["n_grid"], params["quad"])
    job.write({"snr": np.asarray(params["snrs"], dtype=np.float64), "ratio": c.ratio,
               "risk_min_norm": c.risk_min_norm, "ratio_asym": c.ratio_asym,
               "risk_min_norm_asym": c.risk_min_norm_asym, "risk_early_stopped": c.risk_early_stopped,
               "t_stop": c.t_stop})


def vector_field(job) -> None:
    """Seed 004's vector fields (memgen.phase_plane.vector_field): for each example
    (kappa, init scale), one draw of the d = 2 problem, GD on the two-layer network and
    the reduced (u, z) ODE at the logged steps, and the ODE's field in the (u, z1),
    (u, z2) and (z1, z2) planes on a grid covering both paths."""
    params = job.params
    from memgen import linear, phase_plane

    d = params["data"]
    steps = linear.logged_steps(params["steps"], params["n_logged"])
    fields = []
    with _one_blas_thread():
        for ex in params["examples"]:
            s, theta = _dd_problem({**d, "kappa": ex["kappa"]})
            X, y = linear.linear_teacher(d["n"], len(s), s, theta, d["noise_std"], seed=params["data_seed"],
                                         decoupled=d["decoupled"])
            W0, v0 = linear.two_layer_init(len(s), params["hidden"], params["init"], ex["scale"], params["init_seed"])
            fields.append(phase_plane.vector_field(X, y, s, theta, d["noise_std"], steps, params["lr"], W0, v0,
                                                   params["init"], params["grid"]))
    arrays = {"kappa": np.array([e["kappa"] for e in params["examples"]]),
              "scale": np.array([e["scale"] for e in params["examples"]]), "step": steps,
              **{k: np.stack([getattr(f, k) for f in fields]) for k in ("u_ode", "z_ode", "u_net", "z_net")},
              "invariant": np.array([f.c for f in fields])}
    for plane in phase_plane.PLANES:
        arrays.update({f"{plane}/{k}": np.stack([f.planes[plane][k] for f in fields])
                       for k in ("x", "y", "third", "dx", "dy")})
    job.write(arrays, seed=params["init_seed"])
