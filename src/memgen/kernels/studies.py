"""The kernels family's experiments (seeds 001 and 002), as library calls.

- :func:`accuracy_comparison`: test accuracy of empirical-NTK regression, the NNGP
  predictor, infinite-width NTK / NNGP regression and the network trained by GD;
- :func:`convergence_errors`: how far the empirical NTK and NNGP of seeded FCs are from
  the infinite-width kernels;
- :func:`linearized_vs_gd`: GD on (1/2n) sum (f - y)^2 against the network linearized
  at its initialisation (outputs and weights).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from memgen.contracts import array, fail, integer, number, rows, tensor
from memgen.dynamics import gd_mse, linearized_predictions, linearized_weights
from memgen.kernels.empirical import empirical_ntk, empirical_ntk_blocks, model_vjp, relative_change
from memgen.kernels.infinite import analytic_kernels
from memgen.kernels.predictors import kernel_regression, last_hidden_features, nngp_predictor, ntk_regression
from memgen.models import FC
from memgen.progress import Progress, sublabel


def sign_accuracy(pred: torch.Tensor, y: torch.Tensor) -> float:
    """Share of sign(pred) == y for labels +-1; NaN when a prediction is not finite (a
    diverged predictor, on purpose). Contract: pred (n,) and y (n,) tensors, n >= 1."""
    pred = tensor("sign_accuracy", "pred", pred, ndim=1)
    y = tensor("sign_accuracy", "y", y, shape=tuple(pred.shape), finite=True, dtype=pred.dtype)
    return float((torch.sign(pred) == y).to(torch.float64).mean()) if torch.isfinite(pred).all() else float("nan")


def accuracy_comparison(net: FC, x: torch.Tensor, y: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor, *,
                        ridge_ntk: float, ridge_nngp: float, ridge_inf: float, lr: float, steps: int,
                        progress: str | None = None) -> tuple[dict[str, float], bool]:
    """Test accuracy (:func:`sign_accuracy`, labels +-1) of five predictors fitted on
    (x, y): ``ntk`` (:func:`ntk_regression` with the FC's empirical NTK at init, ridge
    ``ridge_ntk``), ``nngp`` (:func:`nngp_predictor`, ``ridge_nngp``), ``ntk_inf`` and
    ``nngp_inf`` (kernel regression with :func:`analytic_kernels` of depth L,
    ``ridge_inf``), and ``trained`` (the FC after ``steps`` GD steps of size ``lr`` on
    (1/2n) sum (f - y)^2, :func:`memgen.dynamics.gd_mse`; NaN if GD diverged). Returns
    (accuracies, diverged). Contract: the inputs of :func:`ntk_regression`; ridges >= 0,
    lr > 0, steps >= 0."""
    for key, value in (("ridge_ntk", ridge_ntk), ("ridge_nngp", ridge_nngp), ("ridge_inf", ridge_inf)):
        number("accuracy_comparison", key, value, lo=0)
    number("accuracy_comparison", "lr", lr, lo=0, lo_open=True)
    integer("accuracy_comparison", "steps", steps, lo=0)
    _labels("accuracy_comparison", x, y, x_test, y_test)
    acc = {"ntk": sign_accuracy(ntk_regression(net, x, y, x_test, ridge_ntk), y_test),
           "nngp": sign_accuracy(nngp_predictor(net, x, y, x_test, ridge_nngp)[1], y_test)}
    L = net.spec.L
    ktt_nngp, ktt_ntk = analytic_kernels(x, None, L)
    kst_nngp, kst_ntk = analytic_kernels(x_test, x, L)
    acc["ntk_inf"] = sign_accuracy(kernel_regression(ktt_ntk, kst_ntk, y, ridge_inf), y_test)
    acc["nngp_inf"] = sign_accuracy(kernel_regression(ktt_nngp, kst_nngp, y, ridge_inf), y_test)
    flat = net.flat()
    w, _, diverged = gd_mse(flat, net.flat_parameters(), x, y, lr, steps, progress=progress)
    with torch.no_grad():
        acc["trained"] = float("nan") if diverged else sign_accuracy(flat.forward(w, x_test, keep=False)[0], y_test)
    return acc, diverged


def convergence_errors(model: dict, seeds, x: torch.Tensor, dtype: torch.dtype = torch.float64,
                       progress: str | None = None, resume=None) -> tuple[np.ndarray, np.ndarray]:
    """Relative Frobenius errors ||K_h - K_inf|| / ||K_inf|| on the points x (n, d) of the
    empirical NTK (:func:`empirical_ntk`) and the empirical NNGP a.a' (last hidden
    features, :func:`last_hidden_features`) of ``FC(seed=s, **model)`` for each seed,
    against the infinite-width kernels (:func:`analytic_kernels`, depth ``model["L"]``).
    ``resume``: a :class:`memgen.resume.ResumePoint`; the seeds already done are taken
    from it and a resume point is saved after each seed. Returns (ntk_err, nngp_err),
    each (len(seeds),). Contract: ``model`` a dict of FC arguments with "L" and "h";
    ``seeds`` a non-empty list of integers; x as for :func:`analytic_kernels`."""
    if not isinstance(model, dict) or not {"L", "h"} <= set(model):
        raise fail("convergence_errors", "model", repr(model), "a dict of FC arguments with 'L' and 'h'")
    seeds = [integer("convergence_errors", "seeds", s) for s in array("convergence_errors", "seeds", seeds, ndim=1)]
    x = rows("convergence_errors", "x", x, finite=True)
    nngp_inf, ntk_inf = analytic_kernels(x, None, model["L"])
    saved = resume.load() if resume is not None else None
    ntk_err = [float(e) for e in saved["ntk_err"]] if saved else []
    nngp_err = [float(e) for e in saved["nngp_err"]] if saved else []
    bar = Progress(progress, len(seeds), unit="seed", initial=len(ntk_err), message=f"h={model['h']}, {len(x)} points")
    for k in range(len(ntk_err), len(seeds)):
        net = FC(seed=seeds[k], dtype=dtype, **model).to(x.device)
        ntk_err.append(relative_change(ntk_inf, empirical_ntk(net, x)))
        a = last_hidden_features(net, x)
        nngp_err.append(relative_change(nngp_inf, a @ a.t()))
        bar.update(k + 1, f"seed {seeds[k]}: NTK error {ntk_err[-1]:.3g}")
        if resume is not None:
            resume.checkpoint(k + 1, lambda: {"ntk_err": np.array(ntk_err), "nngp_err": np.array(nngp_err)})
    bar.finish()
    return np.array(ntk_err), np.array(nngp_err)


@dataclass
class LinearizedComparison:
    """GD of a network against its linearization at init, at the recorded steps (K of
    them): ``step`` (K,), ``t`` = step * lr, train/test losses of both (``loss_*``,
    ``lin_loss_*``), ``w_dist`` = ||w_lin - w||, ``w_move`` = ||w - w0||, ``f_dist_train`` =
    ||f_lin - f|| / ||f - y|| and ``f_dist_test`` = ||f_lin - f|| / ||f|| on the test set;
    ``diverged``: GD stopped at a non-finite output (the arrays end there)."""

    step: np.ndarray
    t: np.ndarray
    loss_train: np.ndarray
    loss_test: np.ndarray
    lin_loss_train: np.ndarray
    lin_loss_test: np.ndarray
    w_dist: np.ndarray
    w_move: np.ndarray
    f_dist_train: np.ndarray
    f_dist_test: np.ndarray
    diverged: bool


def linearized_vs_gd(net: FC, x: torch.Tensor, y: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
                     lr: float, steps: int, record, progress: str | None = None) -> LinearizedComparison:
    """GD on (1/2n) sum (f - y)^2 from the FC's parameters w0 and the same GD on its
    linearization f_lin(w) = f(w0) + J (w - w0) (seed 001): the linearized outputs
    (:func:`memgen.dynamics.linearized_predictions`, discrete) and weights
    (:func:`memgen.dynamics.linearized_weights`, from vector-Jacobian products) from the
    NTK at init, compared with GD (:func:`memgen.dynamics.gd_mse`) at the steps in
    ``record`` (sorted, unique). Contract: x, y, x_test, y_test as for :func:`ntk_regression`
    (y (n,), y_test (m,)); lr > 0; steps >= 0; ``record`` sorted unique integers in [0, steps]."""
    lr, steps = number("linearized_vs_gd", "lr", lr, lo=0, lo_open=True), integer("linearized_vs_gd", "steps", steps, lo=0)
    rec = array("linearized_vs_gd", "record", record, ndim=1)
    if not (np.all(rec == np.round(rec)) and np.all(np.diff(rec) > 0) and rec[0] >= 0 and rec[-1] <= steps):
        raise fail("linearized_vs_gd", "record", repr(rec.tolist()), f"sorted unique integers in [0, {steps}]")
    _labels("linearized_vs_gd", x, y, x_test, y_test)
    flat, w0 = net.flat(), net.flat_parameters()
    Ktt, Kst, _ = empirical_ntk_blocks(net, x, x_test, progress=sublabel(progress, "ntk"))
    with torch.no_grad():
        f0, f0t = flat.forward(w0, x, keep=False)[0], flat.forward(w0, x_test, keep=False)[0]
    t = torch.as_tensor(record, dtype=w0.dtype)
    Ftr, Fte = linearized_predictions(Ktt, Kst, f0, f0t, y, t, lr=lr, continuous=False)
    vjp = model_vjp(net, x)
    rows = {k: [] for k in ("loss_train", "loss_test", "w_dist", "w_move", "f_dist_train", "f_dist_test")}
    index = {int(s): i for i, s in enumerate(record)}

    def on_record(k, w, f):
        i = index[k]
        ft = flat.forward(w, x_test, keep=False)[0]
        w_lin = linearized_weights(w0, vjp, Ktt, f0, y, t[i:i + 1], lr=lr, continuous=False)[0]
        rows["loss_train"].append(float(((f - y) ** 2).mean() / 2))
        rows["loss_test"].append(float(((ft - y_test) ** 2).mean() / 2))
        rows["w_dist"].append(float((w_lin - w).norm()))
        rows["w_move"].append(float((w - w0).norm()))
        rows["f_dist_train"].append(float((Ftr[i] - f).norm() / (f - y).norm().clamp_min(1e-300)))
        rows["f_dist_test"].append(float((Fte[i] - ft).norm() / ft.norm().clamp_min(1e-300)))

    with torch.no_grad():
        _, _, diverged = gd_mse(flat, w0, x, y, lr, steps, record, on_record, progress=progress)
    m = len(rows["loss_train"])
    record = np.asarray(record)
    return LinearizedComparison(
        step=record[:m], t=record[:m] * lr, lin_loss_train=(((Ftr[:m] - y) ** 2).mean(1) / 2).cpu().numpy(),
        lin_loss_test=(((Fte[:m] - y_test) ** 2).mean(1) / 2).cpu().numpy(), diverged=diverged,
        **{k: np.array(v) for k, v in rows.items()})


def _labels(caller: str, x, y, x_test, y_test) -> None:
    """y (n,) and y_test (m,) finite, one per row of x and x_test (tensors)."""
    for name, xs, ys in (("y", x, y), ("y_test", x_test, y_test)):
        tensor(caller, name, ys, shape=(len(xs) if torch.is_tensor(xs) else None,), finite=True)
