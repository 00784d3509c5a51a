"""Run functions of the double-descent family: linear GD and the two-layer linear
network (memgen.linear) and their theory (memgen.theory)."""

from __future__ import annotations

import numpy as np
import torch

from memgen.progress import Progress


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
    of linear GD with one step size and with per-group step sizes."""
    params = job.params
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
        run = linear.train_two_layer(X, y, s, theta, d["noise_std"], params["steps"], params["lr"],
                                     p=params["hidden"], init=params["init"], scale=params["scale"],
                                     seed=params["init_seed"], progress=progress)
        k = torch.from_numpy(linear.logged_steps(params["steps"], params["n_logged"]))
        sv0, share0 = linear.jacobian_spectrum(X, run.W0, run.v0)
        diverged = not (torch.isfinite(run.risk).all() and torch.isfinite(run.W).all() and torch.isfinite(run.v).all())
        # a diverged network has no spectrum (the SVD refuses non-finite input): NaN, recorded as diverged
        sv1, share1 = ((torch.full_like(sv0, torch.nan), torch.full_like(share0, torch.nan)) if diverged
                       else linear.jacobian_spectrum(X, run.W, run.v))
    w = run.w[k]
    arrays = {"step": k, "risk": run.risk[k], "loss": run.loss[k], "w": w,
              "werr": linear.group_weight_error(w, theta, (d["d_fast"], d["d_slow"])),
              "X": X, "y": y, "W0": run.W0, "v0": run.v0, "W": run.W, "v": run.v, "s": s, "theta": theta,
              "jac_sv_init": sv0, "jac_share_init": share0, "jac_sv_final": sv1, "jac_share_final": share1}
    job.write(arrays, seed=params["init_seed"], attrs={"diverged": bool(diverged)})


def theory_two_layer(job) -> None:
    """The reduced (u, z) ODE (started on the network's growing mode for a Gaussian init,
    on its exact rank-one state otherwise) and the linearised (lazy) network, for the
    training set and initial layers of a ``dd_two_layer`` run."""
    from memgen import linear, theory

    rp = job.params["run"]
    r = job.read("run", ("step", "X", "y", "W0", "v0"))
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
    job.write(arrays)


def modelwise(job) -> None:
    """Model-wise double descent, empirically: isotropic Gaussian features x in R^p,
    y = x.theta + eps, ||theta||^2 = snr sigma^2, n = round(ratio p) samples, ``draws``
    data sets per ratio (shared across SNRs). Test risk ||theta_hat - theta||^2 + sigma^2 of
    min-norm least squares and of gradient flow from 0 on 1/(2n)||Xw - y||^2 stopped at
    the time (on a log grid) minimising the risk averaged over draws (oracle early stopping)."""
    params, progress = job.params, job.progress
    p, sigma, draws = int(params["p"]), float(params["noise_std"]), int(params["draws"])
    ratios, snrs = params["ratios"], params["snrs"]
    rng = np.random.default_rng(int(params["seed"]))
    u = rng.standard_normal(p)
    u /= np.linalg.norm(u)
    times = np.r_[0.0, np.geomspace(params["t_min"], params["t_max"], int(params["n_times"]))]
    S, R = len(snrs), len(ratios)
    mn, es = np.empty((S, R, draws)), np.empty((S, R, draws))
    t_stop, ratio_used = np.empty((S, R)), np.empty(R)
    bar = Progress(progress, R, unit="ratio",
                   message=f"{draws} draws of p={p} per ratio, {S} SNRs")
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
            bar.update(j + 1, f"n/p={ratio_used[j]:.3g}")
    bar.finish()
    job.write({"ratio": ratio_used, "snr": np.asarray(snrs, dtype=np.float64), "risk_min_norm": mn,
               "risk_early_stopped": es, "t_stop": t_stop, "times": times}, seed=params["seed"])


def theory_modelwise(job) -> None:
    """Model-wise theory: exact finite-p min-norm risk at every integer n with
    n/p in [ratio_min, ratio_max] (inf at |n - p| <= 1), and on a grid of n_grid ratios the
    proportional-limit min-norm and optimally early-stopped gradient-flow risks."""
    params = job.params
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
    job.write({"snr": snrs, "ratio": ratio, "risk_min_norm": mn, "ratio_asym": ratio_asym,
               "risk_min_norm_asym": mn_asym, "risk_early_stopped": np.stack(es), "t_stop": np.stack(ts)})
